//! kubectl 1.3x against the fake cluster, with no special flags: client-side `apply` (default
//! validation), `explain`, server-side `Table`s, `get -w`, `wait`, `patch`, `label`, `delete`
//! and server-side apply.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{Cluster, NAMESPACE, POOL, present, succeeded};

/// How long a watching kubectl may take to print an expected line.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster, or `None` (skipped in one line) when kubectl is not installed outside CI.
fn cluster() -> Option<Cluster> {
    present(Path::new("kubectl"), &["version", "--client"], "kubectl").then(Cluster::start)
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> Output {
    cluster
        .command("kubectl")
        .args(args)
        .output()
        .expect("running kubectl")
}

fn kubectl_ok(cluster: &Cluster, args: &[&str]) -> String {
    succeeded(
        &format!("kubectl {}", args.join(" ")),
        &kubectl(cluster, args),
    )
}

/// `kubectl apply -f -` (or with `extra` flags) of `yaml`.
fn apply(cluster: &Cluster, yaml: &str, extra: &[&str]) -> Output {
    let path = cluster
        .dir()
        .join(format!("manifest-{}.yaml", rand_suffix()));
    std::fs::write(&path, yaml).unwrap();
    let file = path.to_string_lossy().into_owned();
    let mut args = vec!["apply", "-f", file.as_str()];
    args.extend_from_slice(extra);
    kubectl(cluster, &args)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn claim_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: extensions.agents.x-k8s.io/v1beta1\nkind: SandboxClaim\nmetadata:\n  name: {name}\nspec:\n  warmPoolRef:\n    name: {POOL}\n{extra_spec}"
    )
}

#[test]
fn kubectl_applies_a_claim_waits_for_ready_and_prints_the_printer_columns() {
    let Some(cluster) = cluster() else { return };
    let out = succeeded(
        "kubectl apply",
        &apply(&cluster, &claim_yaml("c1", ""), &[]),
    );
    assert_eq!(
        out.trim(),
        "sandboxclaim.extensions.agents.x-k8s.io/c1 created"
    );
    let out = kubectl_ok(
        &cluster,
        &[
            "wait",
            "--for=condition=Ready",
            "sandboxclaim/c1",
            "--timeout=30s",
        ],
    );
    assert!(out.contains("condition met"), "{out}");

    let table = kubectl_ok(&cluster, &["get", "sandboxclaims"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "SANDBOX", "REASON", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["c1", "True"], "{table}");
    assert!(
        row[2].starts_with(&format!("{POOL}-")),
        "adopted from the pool: {table}"
    );
    assert_eq!(row[3], "DependenciesReady");

    let pools = kubectl_ok(&cluster, &["get", "sandboxwarmpools"]);
    assert!(
        pools.starts_with("NAME") && pools.contains("DESIRED"),
        "{pools}"
    );
    let namespaces = kubectl_ok(&cluster, &["get", "namespaces", "-o", "name"]);
    assert!(
        namespaces.contains(&format!("namespace/{NAMESPACE}")),
        "{namespaces}"
    );

    // A second apply of a changed manifest patches the claim (three-way merge).
    let changed = claim_yaml("c1", "  lifecycle:\n    shutdownPolicy: Delete\n");
    let out = succeeded("kubectl apply", &apply(&cluster, &changed, &[]));
    assert_eq!(
        out.trim(),
        "sandboxclaim.extensions.agents.x-k8s.io/c1 configured"
    );
    let policy = kubectl_ok(
        &cluster,
        &[
            "get",
            "sandboxclaim",
            "c1",
            "-o",
            "jsonpath={.spec.lifecycle.shutdownPolicy}",
        ],
    );
    assert_eq!(policy, "Delete");
}

#[test]
fn unknown_fields_fail_kubectl_apply_and_only_warn_when_asked_to() {
    let Some(cluster) = cluster() else { return };
    let typo = claim_yaml("typo", "  warmpoolRef: {}\n");
    let refused = apply(&cluster, &typo, &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Error from server (BadRequest)")
            && stderr.contains("strict decoding error: unknown field \"spec.warmpoolRef\""),
        "{stderr}"
    );
    let warned = apply(&cluster, &typo, &["--validate=warn"]);
    succeeded("kubectl apply --validate=warn", &warned);
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(
        stderr.contains("Warning: unknown field \"spec.warmpoolRef\""),
        "{stderr}"
    );
    let spec = kubectl_ok(
        &cluster,
        &["get", "sandboxclaim", "typo", "-o", "jsonpath={.spec}"],
    );
    assert!(
        !spec.contains("warmpoolRef"),
        "the unknown field was dropped: {spec}"
    );

    let invalid = apply(
        &cluster,
        &claim_yaml("bad", "  lifecycle:\n    shutdownPolicy: Never\n"),
        &[],
    );
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    // kubectl names the kind from the Status details, as against a real server.
    assert!(
        stderr.contains(
            "The SandboxClaim \"bad\" is invalid: spec.lifecycle.shutdownPolicy: Unsupported value: \"Never\""
        ),
        "{stderr}"
    );
}

#[test]
fn kubectl_explain_reads_the_crd_schemas_from_openapi_v3_and_v2() {
    let Some(cluster) = cluster() else { return };
    let v3 = kubectl_ok(&cluster, &["explain", "sandboxclaim.spec.warmPoolRef"]);
    assert!(v3.contains("KIND:       SandboxClaim"), "{v3}");
    assert!(v3.contains("name\t<string>"), "{v3}");
    let v2 = kubectl_ok(
        &cluster,
        &[
            "explain",
            "sandboxwarmpool.spec",
            "--output=plaintext-openapiv2",
        ],
    );
    assert!(v2.contains("RESOURCE: spec <Object>"), "{v2}");
    assert!(v2.contains("replicas\t<integer>"), "{v2}");
}

#[test]
fn kubectl_patch_label_and_delete_change_and_remove_a_claim() {
    let Some(cluster) = cluster() else { return };
    succeeded(
        "kubectl apply",
        &apply(&cluster, &claim_yaml("c1", ""), &[]),
    );
    kubectl_ok(&cluster, &["label", "sandboxclaim", "c1", "team=blue"]);
    kubectl_ok(
        &cluster,
        &[
            "patch",
            "sandboxclaim",
            "c1",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"annotations":{"note":"merged"}}}"#,
        ],
    );
    kubectl_ok(
        &cluster,
        &[
            "patch",
            "sandboxclaim",
            "c1",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/tier","value":"gold"}]"#,
        ],
    );
    let selected = kubectl_ok(
        &cluster,
        &[
            "get",
            "sandboxclaims",
            "-l",
            "team=blue,tier=gold",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        selected.trim(),
        "sandboxclaim.extensions.agents.x-k8s.io/c1"
    );
    // Without `--type`, kubectl sends a strategic merge patch, which custom resources refuse.
    let strategic = kubectl(
        &cluster,
        &[
            "patch",
            "sandboxclaim",
            "c1",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}}}"#,
        ],
    );
    assert!(!strategic.status.success());
    let stderr = String::from_utf8_lossy(&strategic.stderr);
    assert!(
        stderr.contains("application/strategic-merge-patch+json is not supported by extensions.agents.x-k8s.io/v1beta1, Kind=SandboxClaim"),
        "{stderr}"
    );
    let note = kubectl_ok(
        &cluster,
        &[
            "get",
            "sandboxclaim",
            "c1",
            "-o",
            "jsonpath={.metadata.annotations.note}",
        ],
    );
    assert_eq!(note, "merged");

    let out = kubectl_ok(&cluster, &["delete", "sandboxclaim", "c1"]);
    assert!(out.contains("\"c1\" deleted"), "{out}");
    let gone = kubectl(&cluster, &["get", "sandboxclaim", "c1"]);
    assert!(!gone.status.success());
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.contains("Error from server (NotFound): sandboxclaims.extensions.agents.x-k8s.io \"c1\" not found"),
        "{stderr}"
    );
}

#[test]
fn kubectl_get_watch_prints_each_change_as_a_table_row() {
    let Some(cluster) = cluster() else { return };
    let mut watch = cluster
        .command("kubectl")
        .args(["get", "sandboxclaims", "--watch", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let (tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let next_line = |seen: &mut Vec<String>| {
        let line = lines.recv_timeout(LINE_TIMEOUT).unwrap_or_else(|_| {
            panic!("kubectl get -w printed nothing more within {LINE_TIMEOUT:?}: {seen:?}")
        });
        seen.push(line.clone());
        line
    };
    // The list comes first: no claims, so the watch's first line is the first event.
    succeeded(
        "kubectl apply",
        &apply(&cluster, &claim_yaml("w1", ""), &[]),
    );
    let header = next_line(&mut seen);
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["EVENT", "NAME", "READY", "SANDBOX", "REASON", "AGE"]
    );
    let added = next_line(&mut seen);
    assert!(
        added.starts_with("ADDED") && added.contains("w1"),
        "{seen:?}"
    );
    while !next_line(&mut seen).contains("True") {}
    kubectl_ok(&cluster, &["delete", "sandboxclaim", "w1"]);
    while !next_line(&mut seen).starts_with("DELETED") {}
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn server_side_apply_owns_fields_drops_removed_ones_and_reports_conflicts() {
    let Some(cluster) = cluster() else { return };
    let pool = |labels: &str, replicas: u32| {
        format!(
            "apiVersion: extensions.agents.x-k8s.io/v1beta1\nkind: SandboxWarmPool\nmetadata:\n  name: ssa\n  labels:\n{labels}spec:\n  replicas: {replicas}\n  sandboxTemplateRef:\n    name: {}\n",
            pipeline::TEMPLATE
        )
    };
    let first = pool("    owner: alice\n    tier: gold\n", 1);
    let out = succeeded(
        "apply --server-side",
        &apply(&cluster, &first, &["--server-side"]),
    );
    assert!(out.contains("serverside-applied"), "{out}");
    let managers = kubectl_ok(
        &cluster,
        &[
            "get",
            "sandboxwarmpool",
            "ssa",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert_eq!(managers, "kubectl");

    // The label kubectl no longer applies is removed; the other fields change.
    let second = pool("    owner: alice\n", 0);
    succeeded(
        "apply --server-side",
        &apply(&cluster, &second, &["--server-side"]),
    );
    let labels = kubectl_ok(
        &cluster,
        &[
            "get",
            "sandboxwarmpool",
            "ssa",
            "-o",
            "jsonpath={.metadata.labels}",
        ],
    );
    assert_eq!(labels, r#"{"owner":"alice"}"#);

    // Another manager changing kubectl's field conflicts, unless it forces.
    let theirs = pool("", 3).replace("  labels:\n", "");
    let conflict = apply(&cluster, &theirs, &["--server-side", "--field-manager=bob"]);
    assert!(!conflict.status.success());
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        stderr.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"),
        "{stderr}"
    );
    succeeded(
        "apply --force-conflicts",
        &apply(
            &cluster,
            &theirs,
            &["--server-side", "--field-manager=bob", "--force-conflicts"],
        ),
    );
    let replicas = kubectl_ok(
        &cluster,
        &[
            "get",
            "sandboxwarmpool",
            "ssa",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert_eq!(replicas, "3");
}
