//! The Docker pod runtime itself: sandboxes as containers of the agent's image, run as the
//! deployed template says, isolated from each other, and nothing left behind.
//!
//! Needs a Docker Engine and the image (`cargo xtask test` builds it). Without an engine
//! these tests say so in one line and pass, except under CI, where they fail.

use std::{collections::HashMap, time::Duration};

use bollard::{
    Docker,
    models::{ContainerCreateBody, NetworkCreateRequest},
    query_parameters::CreateContainerOptionsBuilder,
};
use pipeline::{
    Pipeline, RuntimeKind,
    calls::{planner_call, run},
    docker::{OWNER_PID_LABEL, POD_LABEL, RUNTIME_LABEL, connect_engine, list_labelled},
};
use sandbox_claim::testing::FakeClusterOptions;

/// A pipeline on Docker, or `None` (after one line) where no engine is reachable outside CI.
async fn docker_pipeline() -> Option<Pipeline> {
    match Pipeline::start_on(RuntimeKind::Docker, FakeClusterOptions::default(), 0).await {
        Ok(pipeline) => Some(pipeline),
        Err(error)
            if std::env::var_os("CI").is_none()
                && error
                    .chain()
                    .any(|e| e.to_string().starts_with("no Docker Engine reachable")) =>
        {
            eprintln!("skipped: no Docker Engine reachable here ({error:#})");
            None
        }
        Err(error) => panic!("the Docker pipeline did not start: {error:#}"),
    }
}

async fn engine() -> Docker {
    connect_engine().await.expect("the engine answers")
}

#[tokio::test]
async fn a_sandbox_cannot_reach_another_sandboxes_agent_but_the_controller_reaches_both() {
    let Some(pipeline) = docker_pipeline().await else {
        return;
    };
    let agent = pipeline.backend("").await.unwrap();
    let (_, first) = run(&agent, "a", "e1", planner_call("print('a')"))
        .await
        .unwrap();
    let (_, second) = run(&agent, "b", "e1", planner_call("print('b')"))
        .await
        .unwrap();
    let (a_ip, b_ip) = (first.sandbox.pod_ip, second.sandbox.pod_ip);
    assert_ne!(a_ip, b_ip);

    let probe = format!(
        "import socket\n\
         try:\n    socket.create_connection(('{b_ip}', 8494), timeout=3).close()\n    print('REACHED')\n\
         except OSError as e:\n    print('BLOCKED', type(e).__name__)"
    );
    let (text, _) = run(&agent, "a", "e2", planner_call(&probe)).await.unwrap();
    assert!(
        text.contains("BLOCKED"),
        "sandbox {a_ip} reached {b_ip}: {text}"
    );
    agent.close().await.unwrap();
    pipeline.runtime.shutdown().await;
}

#[tokio::test]
async fn a_sandbox_container_runs_as_the_deployed_template_says() {
    let Some(pipeline) = docker_pipeline().await else {
        return;
    };
    let agent = pipeline.backend("").await.unwrap();
    let code = "import os\n\
                print('uid', os.getuid(), os.getgid())\n\
                try:\n    open('/rootfs-probe', 'w')\n    print('ROOT WRITABLE')\n\
                except OSError as e:\n    print('root read-only', e.errno)\n\
                open('/tmp/probe', 'w').write('x')\n\
                print('tmp writable')";
    let (text, report) = run(&agent, "conv", "e1", planner_call(code)).await.unwrap();
    assert!(text.contains("uid 65532 65532"), "{text}");
    assert!(text.contains("root read-only 30"), "EROFS expected: {text}");
    assert!(text.contains("tmp writable"), "{text}");

    let docker = engine().await;
    let selector = format!(
        "{POD_LABEL}={}/{}",
        pipeline::NAMESPACE,
        report.sandbox.pod_name
    );
    let containers = list_labelled(&docker, &selector).await.containers;
    let [container] = containers.as_slice() else {
        panic!("one container for the pod, found {containers:?}");
    };
    let inspected = docker
        .inspect_container(container.id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let host = inspected.host_config.unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(host.memory, Some(1 << 30), "the template's memory limit");
    assert_eq!(
        host.nano_cpus,
        Some(1_000_000_000),
        "the template's CPU limit"
    );
    assert!(
        host.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o == "no-new-privileges"),
    );
    agent.close().await.unwrap();
    pipeline.runtime.shutdown().await;
}

#[tokio::test]
async fn what_a_killed_test_run_left_behind_is_removed_by_the_next_runtime() {
    let docker = engine_or_skip().await;
    let Some(docker) = docker else { return };
    // A process that has exited: its pid is what a SIGKILLed test binary leaves on its objects.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id().to_string();
    child.wait().unwrap();
    let leftover = format!("leftover-{dead_pid}");
    let labels = HashMap::from([
        (RUNTIME_LABEL.to_owned(), leftover.clone()),
        (OWNER_PID_LABEL.to_owned(), dead_pid.clone()),
    ]);
    docker
        .create_network(NetworkCreateRequest {
            name: format!("agent-sandbox-pipeline-{leftover}"),
            labels: Some(labels.clone()),
            ..NetworkCreateRequest::default()
        })
        .await
        .unwrap();
    let image = pipeline::docker::translate::ContainerSpec::from_pod_template(
        &serde_json::json!({ "spec": pipeline::deployed_pod_spec().unwrap() }),
    )
    .unwrap()
    .image;
    let image = std::env::var(pipeline::IMAGE_ENV).unwrap_or(image);
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&leftover).build()),
            ContainerCreateBody {
                image: Some(image),
                labels: Some(labels),
                ..ContainerCreateBody::default()
            },
        )
        .await
        .unwrap();

    let pipeline = Pipeline::start_on(RuntimeKind::Docker, FakeClusterOptions::default(), 0)
        .await
        .unwrap();
    let containers = list_labelled(&docker, &format!("{RUNTIME_LABEL}={leftover}"))
        .await
        .containers;
    assert!(containers.is_empty(), "left behind: {containers:?}");
    assert!(
        docker
            .inspect_network(&format!("agent-sandbox-pipeline-{leftover}"), None)
            .await
            .is_err(),
        "the leftover network is gone"
    );
    pipeline.runtime.shutdown().await;
}

#[tokio::test]
async fn a_stopped_pipeline_leaves_no_container_and_no_network() {
    let Some(pipeline) = docker_pipeline().await else {
        return;
    };
    let Pipeline { cluster, runtime } = pipeline;
    let pipeline::Pods::Docker(docker_runtime) = &runtime else {
        unreachable!("started on Docker")
    };
    let selector = format!("{RUNTIME_LABEL}={}", docker_runtime.id());
    let network = docker_runtime.network().to_owned();
    cluster
        .create_warm_pool("second-pool", pipeline::TEMPLATE, 2)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        while runtime.running() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the pool filled");
    // Dropped, not shut down: the way a panicking test ends.
    drop(cluster);
    drop(runtime);

    let docker = engine().await;
    // The cancelled-create guard may need a moment for a create that was in flight.
    let mut left = Vec::new();
    for _ in 0..40 {
        left = list_labelled(&docker, &selector).await.containers;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(docker.inspect_network(&network, None).await.is_err());
}

/// The engine, or `None` (after one line) where none is reachable outside CI.
async fn engine_or_skip() -> Option<Docker> {
    match connect_engine().await {
        Ok(docker) => Some(docker),
        Err(error) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no Docker Engine reachable here ({error})");
            None
        }
        Err(error) => panic!("CI has a Docker Engine, but it is not reachable: {error}"),
    }
}

/// Containers and networks whose owner is process `pid`.
async fn owned_by(docker: &Docker, pid: u32) -> (usize, usize) {
    let found = list_labelled(docker, &format!("{OWNER_PID_LABEL}={pid}")).await;
    (found.containers.len(), found.networks.len())
}

#[tokio::test]
async fn the_demo_on_docker_leaves_no_container_behind_when_it_ends_or_is_interrupted() {
    let Some(docker) = engine_or_skip().await else {
        return;
    };
    let demo = || {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_demo"));
        command
            .args(["--runtime", "docker"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    };

    let whole = demo().spawn().unwrap();
    let whole_pid = whole.id().unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(180), whole.wait_with_output())
        .await
        .expect("the demo ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&finished.stdout);
    assert!(finished.status.success(), "{stdout}");
    assert!(stdout.contains("total from turn one: 440"), "{stdout}");
    assert_eq!(
        owned_by(&docker, whole_pid).await,
        (0, 0),
        "containers, networks left"
    );

    // Interrupted while its warm pool starts, as Ctrl-C would.
    let mut interrupted = demo().spawn().unwrap();
    let pid = interrupted.id().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        interrupted.stdout.take().unwrap(),
    ));
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("starting a fake cluster") {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), interrupted.wait())
        .await
        .expect("the interrupted demo exits")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(
        owned_by(&docker, pid).await,
        (0, 0),
        "containers, networks left"
    );
}
