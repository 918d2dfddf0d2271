//! The official Python clients against the fake cluster: the agent-sandbox SDK
//! (`k8s-agent-sandbox`) and the Kubernetes client's watch, as scripts in `tests/python/`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Cluster, NAMESPACE, POOL, succeeded};

/// The variable naming the interpreter that has `tests/python/requirements.txt` installed
/// (`.ci/run` sets it); without it, `target/python-clients/bin/python` of this checkout.
const PYTHON_ENV: &str = "PYTHON_CLIENTS";

fn interpreter() -> PathBuf {
    std::env::var_os(PYTHON_ENV).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python-clients/bin/python"),
        PathBuf::from,
    )
}

/// The interpreter, or `None` (skipped in one line) when the packages are missing outside CI.
fn python() -> Option<PathBuf> {
    let python = interpreter();
    let has_packages = std::process::Command::new(&python)
        .args(["-I", "-c", "import k8s_agent_sandbox, kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_packages {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs this test, but {} is missing or lacks the packages of tests/python/requirements.txt",
            python.display()
        );
        println!(
            "skipped: {} is missing or lacks tests/python/requirements.txt (python3 -m venv target/python-clients && target/python-clients/bin/pip install -r tests/python/requirements.txt); CI fails here",
            python.display()
        );
        return None;
    }
    Some(python)
}

/// Runs `tests/python/<script>` against `cluster`; the JSON line it prints.
fn run(cluster: &Cluster, python: &Path, script: &str, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let output = cluster
        .command(python)
        // An isolated interpreter: no user site-packages, no PYTHONPATH from outside.
        .arg("-I")
        .arg(&path)
        .args(args)
        .output()
        .expect("running python");
    let stdout = succeeded(script, &output);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} printed {stdout:?}: {e}"))
}

#[test]
fn the_official_python_sdk_claims_from_the_warm_pool_waits_and_deletes() {
    let Some(python) = python() else { return };
    let cluster = Cluster::start();
    let seen = run(&cluster, &python, "sdk_warm_pool.py", &[POOL, NAMESPACE]);
    let claim = seen["claim"].as_str().unwrap();
    assert!(claim.starts_with("sandbox-claim-"), "{seen}");
    assert!(
        seen["sandbox"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{POOL}-")),
        "adopted from the warm pool: {seen}"
    );
    assert!(
        seen["pod_ip"].as_str().unwrap().starts_with("127."),
        "{seen}"
    );
    assert_eq!(seen["claims_while_held"], serde_json::json!([claim]));
    assert_eq!(seen["claims_after_delete"], serde_json::json!([]));
}

#[test]
fn the_official_kubernetes_client_watches_a_claim_until_ready_and_deleted() {
    let Some(python) = python() else { return };
    let cluster = Cluster::start();
    let seen = run(
        &cluster,
        &python,
        "kubernetes_watch.py",
        &[POOL, NAMESPACE, "watched"],
    );
    let events = seen["events"].as_array().unwrap();
    let ready = events
        .iter()
        .find(|e| e[1] == true)
        .unwrap_or_else(|| panic!("no Ready event: {seen}"));
    assert!(
        ready[2].as_str().unwrap().starts_with(&format!("{POOL}-")),
        "{seen}"
    );
    assert_eq!(events.last().unwrap()[0], "DELETED", "{seen}");
}
