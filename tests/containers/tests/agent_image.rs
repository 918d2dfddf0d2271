//! The agent's image, run as the SandboxTemplate runs it (uid/gid 65532, read-only root, all
//! capabilities dropped, no-new-privileges, the template's memory and CPU limits, tmpfs /tmp,
//! the template's args), driven over AXP from the host. Every test runs against each image in
//! `PYTHON_SANDBOX_AGENT_IMAGES`; see the crate docs of `container_tests`.

use std::time::{Duration, Instant};

use container_tests::{
    agent::{Agent, Options, Turn},
    container_test,
};
use futures::StreamExt as _;
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;

/// Code that ignores the timeout's SIGINT, so that the agent must kill and replace its worker.
const UNINTERRUPTIBLE: &str = "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\ntime.sleep(10**6)";

/// A one-second timeout for `agent_config`.
const ONE_SECOND: &str = r#"{"timeout_secs": 1}"#;

container_test!(
    fn the_agent_reports_serving_on_both_health_checks_and_lists_its_services_by_reflection(
        image
    ) {
        let agent = Agent::start(&image, "health", Options::default()).await;
        let status = agent
            .client
            .serving_status()
            .await
            .expect("grpc.health.v1 Check for service \"\"");
        assert_eq!(status, ServingStatus::Serving);
        let health = agent.client.health_check().await.expect("AXP HealthCheck");
        assert!(health.healthy, "AXP HealthCheck: {health:?}");

        let channel = tonic::transport::Endpoint::from_shared(agent.url().to_owned())
            .expect("the agent's URL")
            .connect()
            .await
            .expect("a gRPC channel to the agent");
        let v1 = reflected_services_v1(channel.clone()).await;
        let v1alpha = reflected_services_v1alpha(channel).await;
        for services in [&v1, &v1alpha] {
            for wanted in ["ax.AgentService", "ax.HarnessService"] {
                assert!(
                    services.iter().any(|s| s == wanted),
                    "reflection lists {wanted}: v1 {v1:?}, v1alpha {v1alpha:?}"
                );
            }
        }
    }
);

async fn reflected_services_v1(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("grpc.reflection.v1 ServerReflectionInfo")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("a v1 reflection answer")
        .expect("a v1 reflection answer, not an error");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("v1 ListServices answered {other:?}"),
    }
}

async fn reflected_services_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("grpc.reflection.v1alpha ServerReflectionInfo")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("a v1alpha reflection answer")
        .expect("a v1alpha reflection answer, not an error");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("v1alpha ListServices answered {other:?}"),
    }
}

container_test!(
    fn a_planner_call_returns_the_codes_output_and_the_conversation_keeps_its_state(image) {
        let agent = Agent::start(&image, "planner-call", Options::default()).await;
        let first = agent
            .turn("answer = 6 * 7\nprint('set')", "")
            .await;
        assert_eq!(first.text(), "set", "{first}");
        assert!(first.ended, "the call ends with `end`");
        let fenced = "Compute it:\n```python\nprint(answer, len('state'))\n```";
        let second = agent.turn(fenced, "").await;
        assert_eq!(second.text(), "42 5", "{second}");
    }
);

container_test!(
    fn a_runaway_cell_ends_at_its_timeout_and_a_killed_worker_is_replaced(image) {
        let agent = Agent::start(&image, "timeout", Options::default()).await;
        agent.turn("kept = 'yes'", "").await;

        let started = Instant::now();
        let busy = agent.turn("while True:\n    pass", ONE_SECOND).await;
        assert!(busy.flag("timed_out"), "{busy}");
        assert!(busy.text().contains("timeout"), "{}", busy.text());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a 1 s timeout took {:?}",
            started.elapsed()
        );
        let after_interrupt = agent.turn("print(kept)", "").await;
        assert_eq!(after_interrupt.text(), "yes", "an interrupted cell keeps state");

        let killed = agent.turn(UNINTERRUPTIBLE, ONE_SECOND).await;
        assert!(
            killed.flag("timed_out") && killed.flag("state_lost"),
            "{killed}"
        );
        assert!(
            killed.text().contains("earlier executions are lost"),
            "the user is told state was lost: {}",
            killed.text()
        );
        let fresh = agent.turn("print('kept' in globals())", "").await;
        assert_eq!(fresh.text(), "False", "the new worker starts empty");
        agent.assert_running("a worker restart").await;
    }
);

container_test!(
    fn a_memory_bomb_is_a_memory_error_and_not_an_oom_kill_of_the_container(image) {
        let agent = Agent::start(&image, "memory", Options::default()).await;
        let config = r#"{"timeout_secs": 30}"#;
        let huge = agent.turn("x = bytearray(2 * 1024**3)", config).await;
        assert_eq!(
            huge.field("error_type"),
            "MemoryError",
            "one 2 GiB allocation: {huge}"
        );
        // Touched memory: the pages count against the container's cgroup, not just its address space.
        let growing = "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 * 1024 * 1024))";
        let bomb = agent.turn(growing, config).await;
        assert_eq!(
            bomb.field("error_type"),
            "MemoryError",
            "a growing list of written 16 MiB chunks: {bomb}"
        );
        assert!(bomb.text().contains("MemoryError"), "{}", bomb.text());
        agent.assert_running("a memory bomb").await;
        agent.assert_serves("a memory bomb").await;
    }
);

container_test!(
    fn docker_stop_lets_the_call_in_flight_finish_and_the_agent_exits_zero_within_the_grace_period(
        image
    ) {
        let agent = Agent::start(&image, "sigterm-drain", Options::default()).await;
        let code = "import time\nprint('started', flush=True)\ntime.sleep(2)\nprint('finished')";
        let mut outputs = agent.send(code, "").await;
        let mut seen = Vec::new();
        let wait_started = async {
            while let Some(batch) = outputs.next().await {
                seen.extend(batch.expect("outputs before the stop"));
                if axp_transport::content::planner_view(&seen).contains("started") {
                    return;
                }
            }
            panic!("the call ended before it printed `started`: {seen:?}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait_started)
            .await
            .expect("the call printed `started` within 30 s");
        let rest = tokio::spawn(Turn::collect(outputs));

        let grace = agent.spec.grace_seconds;
        let stopping = Instant::now();
        agent
            .container
            .stop_with_timeout(Some(i32::try_from(grace).expect("a small grace period")))
            .await
            .expect("docker stop");
        let took = stopping.elapsed();

        let rest = rest
            .await
            .expect("the reading task")
            .expect("the call in flight completes");
        seen.extend(rest.messages);
        let text = axp_transport::content::planner_view(&seen);
        assert!(rest.ended, "the call in flight ends with `end`: {text}");
        assert_eq!(text, "started\nfinished", "the call in flight completes");
        assert!(
            took < Duration::from_secs(grace.into()),
            "the container took {took:?} to stop, not within the {grace} s grace period (SIGKILLed)"
        );
        let state = agent.state().await;
        assert_eq!(state.exit_code, Some(0), "exit status after SIGTERM: {state:?}");
    }
);

container_test!(
    fn the_agent_is_pid_1_and_the_parent_of_user_code(image) {
        let agent = Agent::start(&image, "pid-1", Options::default()).await;
        let code = "import os\nexe = open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode()\nprint(os.getppid(), exe.rsplit('/', 1)[-1])";
        let turn = agent.turn(code, "").await;
        assert_eq!(turn.text(), "1 python-sandbox-agent", "{turn}");
    }
);

container_test!(
    fn sigkill_from_user_code_to_its_parent_or_to_every_process_leaves_the_agent_serving(
        image
    ) {
        let agent = Agent::start(&image, "sigkill-from-user-code", Options::default()).await;
        for code in [
            "import os\nos.kill(os.getppid(), 9)",
            "import os\nos.kill(1, 9)",
            "import os\nos.kill(-1, 9)",
        ] {
            let _ = agent.turn(code, ONE_SECOND).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            agent.assert_running(code).await;
            agent.assert_serves(code).await;
        }
    }
);

container_test!(
    fn sigterm_from_user_code_to_the_agent_or_its_process_group_leaves_the_agent_serving(
        image
    ) {
        let agent = Agent::start(&image, "sigterm-from-user-code", Options::default()).await;
        for code in [
            "import os, signal\nos.kill(1, signal.SIGTERM)",
            "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",
            "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGTERM)",
            "import os, signal\nos.killpg(os.getpgid(0), signal.SIGTERM)",
        ] {
            // The call itself may end either way (the last two signal the worker too).
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                let outputs = agent.send(code, ONE_SECOND).await;
                Turn::collect(outputs).await
            })
            .await;
            // Long enough for a shutdown that SIGTERM would start to show.
            tokio::time::sleep(Duration::from_secs(2)).await;
            agent.assert_running(code).await;
            agent.assert_serves(code).await;
        }
    }
);

/// Forks through ctypes (os.fork is refused); the child starts a new session and forks again so
/// that the grandchild is reparented away from the worker, then the grandchild reports its pid
/// and sleeps. Prints the grandchild's pid.
const DETACHED_GRANDCHILD: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
child = libc.fork()
if child == 0:
    libc.setsid()
    if libc.fork() == 0:
        os.write(w, b"%d\n" % libc.getpid())
        libc.sleep(300)
    libc._exit(0)
os.close(w)
libc.waitpid(child, None, 0)
print(os.read(r, 64).decode().strip())
"#;

/// Prints a JSON list of `[pid, ppid, state, argv]` for every process in the container.
const PROCESSES: &str = r#"
import json, os
found = []
for entry in os.listdir('/proc'):
    if not entry.isdigit():
        continue
    try:
        stat = open('/proc/%s/stat' % entry).read()
        argv = open('/proc/%s/cmdline' % entry, 'rb').read().decode(errors='replace').split('\0')
    except OSError:
        continue
    fields = stat.rsplit(')', 1)[1].split()
    found.append([int(entry), int(fields[1]), fields[0], [a for a in argv if a]])
print(json.dumps(sorted(found)))
"#;

container_test!(
    fn a_detached_grandchild_of_user_code_does_not_survive_a_worker_restart(image) {
        let agent = Agent::start(&image, "detached-child", Options::default()).await;
        let spawned = agent.turn(DETACHED_GRANDCHILD, r#"{"timeout_secs": 10}"#).await;
        let pid: i64 = spawned
            .text()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the grandchild's pid: {spawned}"));
        let before = processes(&agent).await;
        assert!(
            before.iter().any(|p| p[0] == pid),
            "the detached grandchild {pid} runs before the restart: {}",
            listing(&before)
        );

        let killed = agent.turn(UNINTERRUPTIBLE, ONE_SECOND).await;
        assert!(killed.flag("state_lost"), "the worker was replaced: {killed}");

        // Whatever cleans up may take a moment: poll for up to 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = processes(&agent).await;
        while after.iter().any(|p| p[0] == pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            after = processes(&agent).await;
        }
        assert!(
            !after.iter().any(|p| p[0] == pid),
            "the detached grandchild {pid} survived the worker restart (state Z: not reaped): {}",
            listing(&after)
        );
        for process in &after {
            let is_agent = process[0] == 1;
            let is_worker = process[1] == 1
                && process[3]
                    .as_array()
                    .is_some_and(|argv| argv.iter().any(|a| a == "worker"));
            assert!(
                is_agent || is_worker,
                "only the agent (pid 1) and its workers remain, not {process}: {}",
                listing(&after)
            );
        }
    }
);

/// `[pid, ppid, state, argv]` rows, one line each.
fn listing(processes: &[Value]) -> String {
    processes
        .iter()
        .map(|p| format!("\n  {p}"))
        .collect::<String>()
}

async fn processes(agent: &Agent) -> Vec<Value> {
    let turn = agent.turn(PROCESSES, "").await;
    serde_json::from_str::<Vec<Value>>(&turn.text())
        .unwrap_or_else(|e| panic!("the process list: {e}: {turn}"))
}

container_test!(
    fn user_code_cannot_read_the_agents_environment_nor_the_bearer_token(image) {
        let token = "container-test-secret-token";
        let options = Options {
            env: vec![("AXP_TOKEN".into(), token.into())],
            token: Some(token.into()),
        };
        let agent = Agent::start(&image, "secrets", options).await;
        let code = format!(
            "import os\ntry:\n    open('/proc/1/environ', 'rb').read()\n    print('readable')\nexcept PermissionError:\n    print('PermissionError')\nprint('AXP_TOKEN' in os.environ, any({token:?} in v for v in os.environ.values()))"
        );
        let turn = agent.turn(&code, "").await;
        assert_eq!(turn.text(), "PermissionError\nFalse False", "{turn}");

        let anonymous = axp_transport::client::AxpClient::new(agent.url(), Default::default())
            .expect("a client without a token");
        let start = axp_transport::content::planner_start("print(1)", "");
        let refused = anonymous.run(container_tests::agent::CONVERSATION, "anonymous", start).await;
        assert_eq!(
            refused.err().and_then(|e| e.code()),
            Some(tonic::Code::Unauthenticated),
            "the token is required"
        );
    }
);
