//! Upstream conformance, opt-in: when `AGENT_SANDBOX_CRDS` names a folder of agent-sandbox's
//! CRD files (its `release-v0.4.6/` subfolder holding a v0.4.6 install, its `../examples`
//! the upstream examples), these tests check that
//!
//! 1. every object the crates write (claims as `Claims::acquire` writes them, Sandboxes,
//!    templates, pools and statuses as the simulated controller writes them) and every
//!    manifest in `deploy/` validates against the upstream schemas;
//! 2. our generated schemas and the upstream ones give the same verdict, valid or invalid,
//!    on a corpus: the upstream examples, and objects built to break each rule our schemas
//!    declare (required fields, types, enums, patterns, formats, min/max);
//! 3. which upstream fields our types do not model (printed, with the rules we lack).
//!
//! Each check writes its section of a report (`<target dir>/conformance/report.txt`, or
//! `$AGENT_SANDBOX_CONFORMANCE_REPORT`). Without the variable every test prints one line
//! saying how to run it and passes:
//!
//! ```text
//! AGENT_SANDBOX_CRDS=path/to/upstream/crds cargo xtask test
//! ```

mod schema;
#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use sandbox_claim::crds::{self, CrdVersions, Kind};
use sandbox_claim::testing::{CrdSource, FakeApiServer, FakeCluster, FakeClusterOptions};
use sandbox_claim::{ApiVersion, ClaimOptions, Claims};
use serde_json::{Value, json};

use schema::{Located, Path as FieldPath};

/// Names the folder of upstream CRD files; the suite runs only when it is set.
const CRDS_ENV: &str = "AGENT_SANDBOX_CRDS";
/// Overrides where the report goes.
const REPORT_ENV: &str = "AGENT_SANDBOX_CONFORMANCE_REPORT";
/// The subfolder of `AGENT_SANDBOX_CRDS` holding the v0.4.6 release (v1alpha1 only).
const V0_4_6: &str = "release-v0.4.6";

/// The upstream CRD folder, or `None` (after one line saying how to run `test`) when unset.
fn upstream_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(CRDS_ENV) else {
        println!(
            "skipped {test}: set {CRDS_ENV} to a folder of upstream agent-sandbox CRDs to run it (`{CRDS_ENV}=path/to/upstream/crds cargo xtask test`)"
        );
        return None;
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.is_dir(),
        "{CRDS_ENV}={} is not a directory",
        dir.display()
    );
    Some(dir)
}

/// Where the report goes: `$AGENT_SANDBOX_CONFORMANCE_REPORT`, else `conformance/report.txt` in
/// the target directory this test binary was built into.
fn report_path() -> PathBuf {
    if let Some(path) = std::env::var_os(REPORT_ENV) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // <target>/<profile>/deps/<binary>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binaries live in <target>/<profile>/deps");
    target.join("conformance/report.txt")
}

/// The report's sections, by order; the file is rewritten whole after each section.
static REPORT: Mutex<BTreeMap<u8, (String, String)>> = Mutex::new(BTreeMap::new());

fn report(upstream: &Path, order: u8, title: &str, body: String) {
    let mut sections = REPORT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    sections.insert(order, (title.to_owned(), body));
    let mut text = format!(
        "agent-sandbox upstream conformance report\nupstream CRDs: {}\n",
        upstream.display()
    );
    for (title, body) in sections.values() {
        let _ = write!(text, "\n== {title}\n{body}");
    }
    let path = report_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!(
        "conformance report section `{title}` written to {}",
        path.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Schemas.

/// `openAPIV3Schema` by kind and served version.
type Schemas = BTreeMap<(Kind, String), Value>;

fn schemas_of(crds: &[Value]) -> Schemas {
    let mut out = Schemas::new();
    for crd in crds {
        let kind = Kind::ALL.into_iter().find(|k| {
            crd["spec"]["group"] == k.group() && crd["spec"]["names"]["kind"] == k.as_str()
        });
        let Some(kind) = kind else { continue };
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            if version["served"] == false {
                continue;
            }
            let name = version["name"].as_str().unwrap_or_default().to_owned();
            out.insert((kind, name), version["schema"]["openAPIV3Schema"].clone());
        }
    }
    out
}

fn upstream_crds(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| support::documents(f))
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect()
}

fn our_crds(versions: CrdVersions) -> Vec<Value> {
    crds::all(versions)
        .unwrap()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect()
}

/// One pairing of our generated CRDs with an upstream release.
struct Pairing {
    /// How the report names it.
    label: String,
    ours: CrdVersions,
    upstream: PathBuf,
}

impl Pairing {
    fn ours_source(&self) -> CrdSource {
        match self.ours {
            CrdVersions::V1alpha1Only => CrdSource::V1alpha1Only,
            _ => CrdSource::Generated,
        }
    }
}

/// Ours (both versions) with the folder's CRDs, and ours (v1alpha1 only) with v0.4.6 when
/// the folder has it.
fn pairings(dir: &Path) -> Vec<Pairing> {
    let mut out = vec![Pairing {
        label: format!("current ({})", dir.display()),
        ours: CrdVersions::Current,
        upstream: dir.to_owned(),
    }];
    let old = dir.join(V0_4_6);
    if old.is_dir() {
        out.push(Pairing {
            label: format!("v0.4.6 ({})", old.display()),
            ours: CrdVersions::V1alpha1Only,
            upstream: old,
        });
    }
    out
}

/// Field paths below which our schemas embed Kubernetes API types (k8s-openapi's, so their
/// fields follow the Kubernetes version of the build rather than our types).
fn embedded_prefixes() -> Vec<FieldPath> {
    [
        &["spec", "podTemplate", "spec"][..],
        &["spec", "volumeClaimTemplates", "[]", "spec"],
        &["spec", "networkPolicy", "ingress"],
        &["spec", "networkPolicy", "egress"],
    ]
    .into_iter()
    .map(FieldPath::of)
    .collect()
}

fn is_embedded(path: &FieldPath) -> bool {
    embedded_prefixes()
        .iter()
        .any(|p| path.starts_with(p) && path != p)
}

// ---------------------------------------------------------------------------------------------
// Creating objects and reading verdicts.

static NAMES: AtomicUsize = AtomicUsize::new(0);

fn fresh_name(prefix: &str) -> String {
    format!("{prefix}-{}", NAMES.fetch_add(1, Ordering::Relaxed))
}

/// `body` (spec/status) as a whole `kind` object at `version`, with a fresh name.
fn object(kind: Kind, version: &str, mut body: Value, prefix: &str) -> Value {
    body["apiVersion"] = json!(format!("{}/{version}", kind.group()));
    body["kind"] = json!(kind.as_str());
    body["metadata"] = json!({ "name": fresh_name(prefix) });
    body
}

/// Keeps what a client would write of a stored or example object, under a fresh name in
/// `default`.
fn rewritable(doc: &Value, prefix: &str) -> Value {
    let mut out = doc.clone();
    let meta = &doc["metadata"];
    let mut metadata = json!({ "name": fresh_name(prefix) });
    for key in ["labels", "annotations"] {
        if meta[key].is_object() {
            metadata[key] = meta[key].clone();
        }
    }
    out["metadata"] = metadata;
    out
}

/// Valid, or invalid with the server's message.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Valid,
    Invalid(String),
}

impl Verdict {
    fn is_valid(&self) -> bool {
        *self == Self::Valid
    }
}

async fn verdict(client: &kube::Client, doc: &Value) -> Verdict {
    match support::create(client, doc).await {
        Ok(()) => Verdict::Valid,
        Err(kube::Error::Api(status)) if status.code == 422 => Verdict::Invalid(status.message),
        // Unknown fields under strict field validation: a decoding error, as upstream.
        Err(kube::Error::Api(status))
            if status.code == 400 && status.message.contains("strict decoding error") =>
        {
            Verdict::Invalid(status.message)
        }
        Err(e) => panic!(
            "{} {} was neither accepted nor rejected as invalid: {e}",
            doc["kind"], doc["apiVersion"]
        ),
    }
}

/// One corpus object and what both servers said.
struct Judged {
    what: String,
    ours: Verdict,
    upstream: Verdict,
}

/// Asks both servers about every document (a few at a time).
async fn judge_all(
    ours: &FakeApiServer,
    upstream: &FakeApiServer,
    docs: Vec<(String, Value)>,
) -> Vec<Judged> {
    let (ours, upstream) = (&ours.client("default"), &upstream.client("default"));
    futures::stream::iter(docs)
        .map(|(what, doc)| async move {
            let (o, u) = tokio::join!(verdict(ours, &doc), verdict(upstream, &doc));
            Judged {
                what,
                ours: o,
                upstream: u,
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// 1. What the crates write, and deploy/.

const TEMPLATE: &str = "python";
const POOL: &str = "python-pool";
const COLD_POOL: &str = "cold-pool";

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Every agent-sandbox object stored on `cluster` now.
fn snapshot(cluster: &FakeCluster) -> Vec<Value> {
    Kind::ALL
        .into_iter()
        .flat_map(|k| cluster.server().objects(k.group(), k.plural(), None))
        .collect()
}

fn ready_member(cluster: &FakeCluster) -> bool {
    cluster
        .server()
        .objects(Kind::Sandbox.group(), Kind::Sandbox.plural(), None)
        .iter()
        .any(|s| {
            s["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
}

/// Runs claims through a fake cluster whose CRDs are the upstream ones in `dir` (strict
/// unknown fields, schema validation), speaking `version`: a warm adoption, a cold start, a
/// renewal, a pod replacement, a sandbox-side and a claim-side failure, the releases.
/// Returns every object stored along the way.
async fn run_claims(dir: &Path, version: ApiVersion) -> Vec<Value> {
    let options = FakeClusterOptions::default()
        .crds(CrdSource::Dir(dir.to_owned()))
        .version(version);
    let cluster = FakeCluster::start(options).await.unwrap();
    cluster.create_template(TEMPLATE, None).await.unwrap();
    cluster.create_warm_pool(POOL, TEMPLATE, 1).await.unwrap();
    eventually("a ready warm-pool member", || ready_member(&cluster)).await;
    // A pool with no members: its claims start cold.
    cluster
        .create_warm_pool(COLD_POOL, TEMPLATE, 0)
        .await
        .unwrap();
    let claims_from = |pool: &str, v1alpha1_warmpool: &str| {
        let source = match version {
            ApiVersion::V1alpha1 => TEMPLATE,
            _ => pool,
        };
        ClaimOptions::default()
            .source(source)
            .v1alpha1_warmpool(v1alpha1_warmpool)
            .ready_timeout(Duration::from_secs(20))
    };
    let claims = Claims::detect(cluster.client(), claims_from(POOL, POOL))
        .await
        .unwrap();
    let cold_claims = Claims::detect(cluster.client(), claims_from(COLD_POOL, "none"))
        .await
        .unwrap();
    assert_eq!(claims.api_version(), version);
    let mut stored = Vec::new();

    let warm = claims.acquire("conformance-warm").await.unwrap();
    assert!(
        warm.sandbox_name.starts_with(POOL),
        "a ready member is adopted: its status writes passed ({})",
        warm.sandbox_name
    );
    let cold = cold_claims.acquire("conformance-cold").await.unwrap();
    assert_eq!(cold.sandbox_name, cold.claim_name, "a cold start");
    stored.extend(snapshot(&cluster));

    claims.renew(&warm).await.unwrap();
    cluster.replace_pod(&warm.sandbox_name).await.unwrap();
    stored.extend(snapshot(&cluster));

    cluster
        .controller()
        .fail_next("PodFailed", "the image could not be pulled");
    assert!(claims.acquire("conformance-pod-failed").await.is_err());
    cluster
        .controller()
        .fail_next("InvalidMetadata", "labels are not allowed");
    assert!(claims.acquire("conformance-invalid").await.is_err());
    stored.extend(snapshot(&cluster));

    claims.release(&warm).await.unwrap();
    cold_claims.release(&cold).await.unwrap();
    claims.release_all().await.unwrap();
    stored.extend(snapshot(&cluster));
    stored
}

/// The manifests of `deploy/` by the version they are written for: the base files, the
/// v1alpha1 overlay's files, and (with kubectl) the three renderings.
fn deploy_manifests() -> Vec<(String, Value)> {
    let deploy = support::deploy_dir();
    let mut out = Vec::new();
    for file in [
        "base/sandbox-template.yaml",
        "base/sandbox-warmpool.yaml",
        "overlays/v1alpha1/sandbox-template.yaml",
        "overlays/v1alpha1/sandbox-warmpool.yaml",
    ] {
        for doc in support::documents(&deploy.join(file)) {
            out.push((format!("deploy/{file}"), doc));
        }
    }
    for dir in [".", "overlays/kind", "overlays/v1alpha1"] {
        let Some(docs) = support::kustomize(&deploy.join(dir)) else {
            continue;
        };
        for doc in support::agent_sandbox_documents(&docs) {
            out.push((format!("kubectl kustomize deploy/{dir}"), doc));
        }
    }
    out
}

fn version_of(doc: &Value) -> &str {
    doc["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map_or("", |(_, v)| v)
}

#[tokio::test]
async fn every_object_the_crates_write_and_every_deploy_manifest_passes_the_upstream_schemas() {
    let Some(dir) = upstream_dir("the upstream-schema check of what the crates write") else {
        return;
    };
    let pairings = pairings(&dir);
    let mut written: Vec<(String, Value)> = Vec::new();
    let mut body = String::new();
    for pairing in &pairings {
        let version = match pairing.ours {
            CrdVersions::V1alpha1Only => ApiVersion::V1alpha1,
            _ => ApiVersion::V1beta1,
        };
        let stored = run_claims(&pairing.upstream, version).await;
        let _ = writeln!(
            body,
            "claims lifecycle on {version} against {}: accepted ({} stored objects)",
            pairing.label,
            stored.len()
        );
        written.extend(
            stored
                .into_iter()
                .map(|d| (format!("{version} cluster"), d)),
        );
    }
    written.extend(deploy_manifests());

    // Every object, against every upstream release that serves its version.
    let mut failures = Vec::new();
    for pairing in &pairings {
        let served = schemas_of(&upstream_crds(&pairing.upstream));
        let server = support::server_with(&CrdSource::Dir(pairing.upstream.clone())).await;
        let client = server.client("default");
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (origin, doc) in &written {
            let kind = support::agent_sandbox_kind(doc).expect("agent-sandbox objects only");
            if !served.contains_key(&(kind, version_of(doc).to_owned())) {
                continue;
            }
            match verdict(&client, &rewritable(doc, "written")).await {
                Verdict::Valid => {
                    *counts
                        .entry(format!("{kind} {}", version_of(doc)))
                        .or_default() += 1;
                }
                Verdict::Invalid(why) => failures.push(format!(
                    "{origin}: {kind} {} rejected by {}: {why}",
                    doc["metadata"]["name"], pairing.label
                )),
            }
        }
        let _ = writeln!(body, "valid against {}: {counts:?}", pairing.label);
    }
    let manifests = written.iter().filter(|(o, _)| o.contains("deploy")).count();
    let _ = writeln!(body, "deploy/ manifests checked: {manifests}");
    if !failures.is_empty() {
        let _ = writeln!(body, "FAILURES:\n{}", failures.join("\n"));
    }
    report(
        &dir,
        1,
        "1. objects the crates write and deploy/ manifests",
        body,
    );
    assert!(
        failures.is_empty(),
        "objects the upstream schemas reject:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Same verdicts.

/// The agent-sandbox objects of the upstream examples (`$AGENT_SANDBOX_CRDS/../examples`),
/// skipping Go-templated files; `(file, document)`.
fn examples(dir: &Path) -> (Vec<(String, Value)>, usize) {
    let root = dir.join("../examples");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    let mut skipped = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            skipped += 1;
            continue;
        };
        if text.contains("{{") {
            skipped += 1;
            continue;
        }
        let Ok(docs) = serde_saphyr::from_multiple::<Value>(&text) else {
            skipped += 1;
            continue;
        };
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for doc in docs {
            if support::agent_sandbox_kind(&doc).is_some() {
                out.push((name.clone(), doc));
            }
        }
    }
    (out, skipped)
}

#[tokio::test]
async fn our_schemas_and_the_upstream_ones_give_the_same_verdicts() {
    let Some(dir) = upstream_dir("the verdict comparison of our schemas and upstream's") else {
        return;
    };
    let started = std::time::Instant::now();
    let (examples, skipped) = examples(&dir);
    let mut body = format!(
        "upstream examples: {} agent-sandbox objects ({skipped} files skipped: templated or unparsable)\n",
        examples.len()
    );
    let mut disagreements = Vec::new();
    for pairing in pairings(&dir) {
        let ours = schemas_of(&our_crds(pairing.ours));
        let upstream = schemas_of(&upstream_crds(&pairing.upstream));
        let ours_server = support::server_with(&pairing.ours_source()).await;
        let upstream_server = support::server_with(&CrdSource::Dir(pairing.upstream.clone())).await;
        for ((kind, version), schema) in &ours {
            if !upstream.contains_key(&(*kind, version.clone())) {
                continue;
            }
            let mut corpus = Vec::new();
            for (file, doc) in &examples {
                if support::agent_sandbox_kind(doc) == Some(*kind) && version_of(doc) == version {
                    corpus.push((format!("example {file}"), rewritable(doc, "example")));
                }
            }
            let n_examples = corpus.len();
            let rules = schema::rules(schema);
            let mut unbreakable = 0;
            let mut controls = BTreeSet::new();
            for rule in &rules {
                // An object that is not an object is not a request the client can send.
                if rule.path.0.is_empty() && matches!(rule.rule, schema::Rule::Type(_)) {
                    continue;
                }
                match schema::breaking(schema, rule) {
                    Some(body) => {
                        corpus.push((
                            format!("breaks {rule}"),
                            object(*kind, version, body, "breaks"),
                        ));
                        controls.insert(rule.path.clone());
                    }
                    None => unbreakable += 1,
                }
            }
            let n_broken = corpus.len() - n_examples;
            for path in &controls {
                if let Some(body) = schema::valid_with(schema, path) {
                    corpus.push((
                        format!("control {path}"),
                        object(*kind, version, body, "control"),
                    ));
                }
            }
            let judged = judge_all(&ours_server, &upstream_server, corpus).await;
            let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for j in &judged {
                let class = j.what.split_once(' ').map_or("", |(c, _)| c);
                let entry = tally.entry(class).or_default();
                if j.ours.is_valid() {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
                match class {
                    // Controls show that a rule-breaking object fails for the rule it breaks:
                    // the same object without the break is valid for our schema. Upstream may
                    // refuse a control when it lacks the field (see the coverage list).
                    "control" => assert!(
                        j.ours.is_valid(),
                        "{kind} {version}: {} is invalid for our own schema: {:?}",
                        j.what,
                        j.ours
                    ),
                    "breaks" => assert!(
                        !j.ours.is_valid(),
                        "{kind} {version}: an object that {} is valid for our own schema",
                        j.what
                    ),
                    _ => {}
                }
                if class != "control" && j.ours.is_valid() != j.upstream.is_valid() {
                    disagreements.push(format!(
                        "{kind} {version} vs {}: {}: ours {:?}, upstream {:?}",
                        pairing.label, j.what, j.ours, j.upstream
                    ));
                }
            }
            let upstream_refused_controls = judged
                .iter()
                .filter(|j| j.what.starts_with("control") && !j.upstream.is_valid())
                .count();
            let (examples_valid, examples_invalid) =
                tally.get("example").copied().unwrap_or_default();
            let _ = writeln!(
                body,
                "{kind} {version} vs {}: {n_examples} examples ({examples_valid} valid, {examples_invalid} invalid for ours), {n_broken} objects each breaking one of our {} rules (all rejected; {unbreakable} cannot be broken alone), {} valid controls ({upstream_refused_controls} refused upstream)",
                pairing.label,
                rules.len(),
                controls.len(),
            );
        }
    }
    let _ = writeln!(
        body,
        "verdicts that differ: {} (in {:.0?})",
        disagreements.len(),
        started.elapsed()
    );
    for d in &disagreements {
        let _ = writeln!(body, "  {d}");
    }
    report(&dir, 2, "2. same verdicts on the corpus", body);
    assert!(
        disagreements.is_empty(),
        "our schemas and upstream's disagree:\n{}",
        disagreements.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Coverage.

/// Differences of our own fields from upstream's that are known and intended, with why.
const KNOWN_OWN_FIELD_DIFFERENCES: &[(&str, &str, &str, &str)] = &[(
    "v0.4.6",
    "SandboxTemplate",
    ".status",
    "v0.4.6 declared an empty status on templates that nothing wrote; v0.5 removed it",
)];

fn known(pairing: &str, kind: Kind, path: &str) -> bool {
    KNOWN_OWN_FIELD_DIFFERENCES
        .iter()
        .any(|(p, k, f, _)| pairing.starts_with(p) && *k == kind.as_str() && *f == path)
}

/// `missing` folded to the top-most missing fields, each with how many fields below it.
fn fold(missing: &BTreeSet<FieldPath>) -> Vec<String> {
    let mut out: Vec<(FieldPath, usize)> = Vec::new();
    for path in missing {
        let mut parent = path.parent_field();
        let mut below_missing = false;
        while let Some(p) = parent {
            if missing.contains(&p) {
                below_missing = true;
                break;
            }
            parent = p.parent_field();
        }
        if below_missing {
            if let Some(last) = out.iter_mut().rev().find(|(top, _)| path.starts_with(top)) {
                last.1 += 1;
            }
        } else {
            out.push((path.clone(), 0));
        }
    }
    out.into_iter()
        .map(|(p, n)| {
            if n == 0 {
                p.to_string()
            } else {
                format!("{p} (and {n} fields below)")
            }
        })
        .collect()
}

/// Whether the field a rule at `path` belongs to (the root, or a property through any items
/// and map values) is in `fields`.
fn declares(fields: &BTreeSet<FieldPath>, path: &FieldPath) -> bool {
    let mut holder = path.0.clone();
    while matches!(
        holder.last(),
        Some(schema::Step::Items | schema::Step::Values)
    ) {
        holder.pop();
    }
    holder.is_empty() || fields.contains(&FieldPath(holder))
}

#[test]
fn the_upstream_fields_and_rules_our_types_do_not_model_are_listed() {
    let Some(dir) = upstream_dir("the coverage list of upstream fields") else {
        return;
    };
    let mut body = String::new();
    let mut unexplained = Vec::new();
    for pairing in pairings(&dir) {
        let ours = schemas_of(&our_crds(pairing.ours));
        let upstream = schemas_of(&upstream_crds(&pairing.upstream));
        for ((kind, version), up) in &upstream {
            let Some(our) = ours.get(&(*kind, version.clone())) else {
                let _ = writeln!(
                    body,
                    "{kind} {version} ({}): not modelled at all",
                    pairing.label
                );
                unexplained.push(format!("{kind} {version}: no type"));
                continue;
            };
            let up_fields = schema::fields(up);
            let our_fields = schema::fields(our);
            let missing: BTreeSet<FieldPath> = up_fields.difference(&our_fields).cloned().collect();
            let extra: BTreeSet<FieldPath> = our_fields.difference(&up_fields).cloned().collect();
            let up_rules = schema::rules(up);
            let our_rules = schema::rules(our);
            let our_keys = schema::rule_keys(&our_rules);
            let up_keys = schema::rule_keys(&up_rules);
            // A rule of a field we do not model is already counted as a missing field.
            let rules_missing: Vec<&&Located> = up_keys
                .iter()
                .filter(|(k, r)| !our_keys.contains_key(*k) && declares(&our_fields, &r.path))
                .map(|(_, r)| r)
                .collect();
            let rules_extra: Vec<&&Located> = our_keys
                .iter()
                .filter(|(k, r)| !up_keys.contains_key(*k) && declares(&up_fields, &r.path))
                .map(|(_, r)| r)
                .collect();
            let _ = writeln!(
                body,
                "{kind} {version} vs {}: upstream declares {} fields, we model {} of them; {} upstream rules on fields we model are not ours",
                pairing.label,
                up_fields.len(),
                up_fields.len() - missing.len(),
                rules_missing.len()
            );
            for line in fold(&missing) {
                let _ = writeln!(body, "  upstream field not modelled: {line}");
            }
            for line in fold(&extra) {
                let _ = writeln!(body, "  field we declare that upstream does not: {line}");
            }
            for rule in &rules_missing {
                let _ = writeln!(body, "  upstream rule not modelled: {rule}");
            }
            for rule in &rules_extra {
                let _ = writeln!(body, "  rule we declare that upstream does not: {rule}");
            }
            // Our own fields (outside the embedded Kubernetes types) must match upstream's.
            for path in missing.iter().chain(&extra) {
                let p = path.to_string();
                if !is_embedded(path) && !known(&pairing.label, *kind, &p) {
                    unexplained.push(format!("{kind} {version} ({}): field {p}", pairing.label));
                }
            }
            for rule in rules_missing.iter().chain(&rules_extra) {
                if !is_embedded(&rule.path) {
                    unexplained.push(format!("{kind} {version} ({}): rule {rule}", pairing.label));
                }
            }
        }
    }
    let _ = writeln!(body, "known differences:");
    for (pairing, kind, field, why) in KNOWN_OWN_FIELD_DIFFERENCES {
        let _ = writeln!(body, "  {pairing} {kind} {field}: {why}");
    }
    println!("{body}");
    report(
        &dir,
        3,
        "3. coverage: upstream fields and rules our types do not model",
        body,
    );
    assert!(
        unexplained.is_empty(),
        "our own fields and rules differ from upstream's (outside the embedded Kubernetes types):\n{}",
        unexplained.join("\n")
    );
}
