//! The `agent-sandbox-claims` binary against the fake cluster: claims acquired through the
//! backend, then the real binary run with a kubeconfig that points at the fake API server.

mod support;

use std::{path::PathBuf, process::Output};

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use sandbox_claim::{labels, types::v1beta1::SandboxClaim};
use serde_json::{Value, json};
use support::{Behaviour, Setup, backend, run, setup};

const BIN: &str = env!("CARGO_BIN_EXE_agent-sandbox-claims");

/// A fake cluster with the claims of conversations `conv-a` and `conv-b`, and a kubeconfig.
struct Fixture {
    setup: Setup,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let setup = setup(Behaviour::Count, 0).await;
    let agent = backend(&setup).await;
    run(&agent, "conv-a", "e1").await.unwrap();
    run(&agent, "conv-b", "e1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    setup
        .cluster
        .server()
        .write_kubeconfig(&kubeconfig, setup.cluster.namespace())
        .unwrap();
    Fixture {
        setup,
        kubeconfig,
        _dir: dir,
    }
}

impl Fixture {
    async fn cli(&self, args: &[&str]) -> Output {
        let mut command = std::process::Command::new(BIN);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap()
    }

    /// Runs the binary, expects `code`, returns its stdout.
    async fn expect(&self, code: i32, args: &[&str]) -> String {
        let output = self.cli(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let stdout = self.expect(0, &args).await;
        serde_json::from_str(&stdout).unwrap()
    }

    /// The claims listed that are not being deleted.
    async fn listed(&self) -> Vec<Value> {
        let Value::Array(rows) = self.json(&["list"]).await else {
            panic!("list --output json prints an array")
        };
        rows.into_iter()
            .filter(|row| row["deleting"] == json!(false))
            .collect()
    }

    async fn conversations(&self) -> Vec<String> {
        self.listed()
            .await
            .iter()
            .filter_map(|row| row["conversation_id"].as_str().map(str::to_owned))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_the_claims_acquired_through_the_backend() {
    let fx = fixture().await;
    let rows = fx.listed().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(fx.conversations().await, ["conv-a", "conv-b"]);
    for row in &rows {
        assert!(
            row["pod_ip"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("127.")),
            "{row}"
        );
        assert_eq!(row["ready"], "True", "{row}");
        assert!(row["ttl_left_seconds"].as_i64().unwrap() > 3_000, "{row}");
        assert_eq!(row["source"], support::POOL);
    }

    let table = fx
        .expect(
            0,
            &[
                "--context",
                "fake-apiserver",
                "-n",
                fx.setup.cluster.namespace(),
                "list",
            ],
        )
        .await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in ["NAME", "CONVERSATION", "AGE", "TTL-LEFT", "POD-IP", "READY"] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(
        lines[1].contains("conv-a") && lines[2].contains("conv-b"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn release_removes_one_claim_and_a_second_release_still_succeeds() {
    let fx = fixture().await;
    let name = fx.json(&["show", "conv-a"]).await["name"]
        .as_str()
        .unwrap()
        .to_owned();
    fx.expect(0, &["release", "conv-a"]).await;
    assert_eq!(fx.conversations().await, ["conv-b"]);
    // Again, by conversation and by claim name: idempotent.
    fx.expect(0, &["release", "conv-a"]).await;
    fx.expect(0, &["release", &name]).await;
    fx.expect(3, &["release", "--strict", "conv-a"]).await;
    assert_eq!(fx.conversations().await, ["conv-b"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn show_finds_by_conversation_or_name_and_a_missing_claim_exits_3() {
    let fx = fixture().await;
    let shown = fx.json(&["show", "conv-b"]).await;
    assert_eq!(shown["conversation_id"], "conv-b");
    let by_name = fx.json(&["show", shown["name"].as_str().unwrap()]).await;
    assert_eq!(by_name["uid"], shown["uid"]);
    let text = fx.expect(0, &["show", "conv-b"]).await;
    assert!(text.contains("conversation: conv-b"), "{text}");

    let output = fx.cli(&["show", "no-such-conversation"]).await;
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no claim \"no-such-conversation\""),
        "{stderr}"
    );
    fx.expect(3, &["renew", "no-such-conversation"]).await;
    // Usage errors are clap's 2.
    fx.expect(2, &["renew", "conv-b", "--ttl", "soon"]).await;
    fx.expect(2, &["frobnicate"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_is_a_dry_run_without_yes_and_deletes_the_orphans_with_it() {
    let fx = fixture().await;
    // Orphan conv-a's claim: without its conversation id nobody can adopt it.
    let orphan = fx.json(&["show", "conv-a"]).await["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let api: Api<SandboxClaim> =
        Api::namespaced(fx.setup.cluster.client(), fx.setup.cluster.namespace());
    let patch = json!({"metadata": {"annotations": {labels::CONVERSATION_ID: null}}});
    api.patch(&orphan, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    let dry = fx.expect(0, &["sweep"]).await;
    assert!(dry.contains(&orphan) && dry.contains("orphan"), "{dry}");
    assert!(!dry.contains("conv-b"), "{dry}");
    let dry = fx.json(&["sweep"]).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["candidates"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(fx.listed().await.len(), 2, "a dry run deletes nothing");

    let output = fx.cli(&["sweep", "--yes"]).await;
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("deleted claim {orphan}")),
        "{stderr}"
    );
    let rows = fx.listed().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["conversation_id"], "conv-b");

    // Nothing left to sweep; --all makes every claim a candidate.
    let dry = fx.json(&["sweep"]).await;
    assert_eq!(dry["candidates"], json!([]));
    let all = fx.json(&["sweep", "--all"]).await;
    assert_eq!(all["candidates"].as_array().unwrap().len(), 1, "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_moves_the_shutdown_time() {
    let fx = fixture().await;
    let before = fx.json(&["show", "conv-a"]).await;
    let left_before = before["ttl_left_seconds"].as_i64().unwrap();
    assert!(left_before <= 3_600, "{before}");

    let renewed = fx.json(&["renew", "conv-a", "--ttl", "3h"]).await;
    let left = renewed["ttl_left_seconds"].as_i64().unwrap();
    assert!(left > 3 * 3_600 - 60 && left <= 3 * 3_600, "{renewed}");
    assert_ne!(renewed["shutdown_time"], before["shutdown_time"]);
    let shown = fx.json(&["show", "conv-a"]).await;
    assert_eq!(shown["shutdown_time"], renewed["shutdown_time"]);

    let text = fx.expect(0, &["renew", "conv-a", "--ttl", "30m"]).await;
    assert!(
        text.contains("shutdown time:") && (text.contains("(in 29m") || text.contains("(in 30m")),
        "{text}"
    );
}
