//! One agent container, started as the SandboxTemplate runs it, and calls to it over AXP.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axp_transport::{
    client::{AxpClient, ClientError, ClientOptions, Outputs, WaitOptions},
    content,
    pb::{AgentStart, Message},
};
use futures::StreamExt as _;
use serde_json::Value;
use testcontainers::{
    ContainerAsync, GenericImage, ImageExt as _,
    bollard::models::ContainerState,
    core::{IntoContainerPort as _, WaitFor, logs::LogFrame},
    runners::AsyncRunner as _,
};

use crate::{LABEL, template::RunSpec};

/// How long the container may take to print `listening on` and report SERVING.
pub const START_LIMIT: Duration = Duration::from_secs(60);

/// The conversation of every call (the agent pins itself to the first one it sees).
pub const CONVERSATION: &str = "container-test";

/// The longest one AXP call may take, end to end, unless a test says otherwise.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

/// What a test changes from the template's way of running the agent.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra environment variables of the container.
    pub env: Vec<(String, String)>,
    /// The bearer token the client sends.
    pub token: Option<String>,
}

/// A running agent container and a client of it. Dropping it removes the container.
#[derive(Debug)]
pub struct Agent {
    /// The container (testcontainers removes it on drop, also when a test fails).
    pub container: ContainerAsync<GenericImage>,
    /// A client of its AXP port, mapped on 127.0.0.1.
    pub client: AxpClient,
    /// How the container was run.
    pub spec: RunSpec,
    /// The image reference.
    pub image: String,
    logs: Logs,
}

/// The container's stdout and stderr as they come, the last [`LOG_KEPT`] bytes.
type Logs = Arc<Mutex<Vec<u8>>>;

/// How much of the container's output a failure message shows, at most.
const LOG_KEPT: usize = 4096;

fn tail(logs: &Logs) -> String {
    let logs = logs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    String::from_utf8_lossy(&logs).into_owned()
}

static EXEC_IDS: AtomicU64 = AtomicU64::new(0);

/// `name:tag` → (`name`, `tag`); a registry port is not a tag.
fn split_reference(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    }
}

impl Agent {
    /// Starts `image` as the template runs it, labelled with `test`, and waits until it serves.
    ///
    /// # Panics
    ///
    /// When the template cannot be read, or the container does not start and serve within
    /// [`START_LIMIT`] (the message says which).
    pub async fn start(image: &str, test: &str, options: Options) -> Self {
        let spec = crate::template::read().expect("reading the SandboxTemplate");
        let (name, tag) = split_reference(image);
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(spec.port.tcp())
            .with_wait_for(WaitFor::message_on_stdout("listening on"))
            .with_cmd(spec.args.clone())
            .with_user(spec.user.clone())
            .with_readonly_rootfs(spec.read_only_root)
            .with_label(LABEL, test)
            .with_startup_timeout(START_LIMIT);
        for capability in &spec.drop_capabilities {
            request = request.with_cap_drop(capability.clone());
        }
        if spec.no_new_privileges {
            request = request.with_security_opt("no-new-privileges");
        }
        for (key, value) in &options.env {
            request = request.with_env_var(key.clone(), value.clone());
        }
        let logs = Logs::default();
        let sink = logs.clone();
        request = request.with_log_consumer(move |frame: &LogFrame| {
            let mut kept = sink
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            kept.extend_from_slice(frame.bytes());
            let excess = kept.len().saturating_sub(LOG_KEPT);
            kept.drain(..excess);
        });
        let (memory, nano_cpus) = (spec.memory_bytes, spec.nano_cpus);
        let tmpfs = spec.tmpfs.clone();
        let request = request.with_host_config_modifier(move |host| {
            host.memory = Some(memory);
            // No swap, as on a Kubernetes node: over the limit is an OOM kill, not paging.
            host.memory_swap = Some(memory);
            host.nano_cpus = Some(nano_cpus);
            host.tmpfs = Some(tmpfs.clone());
        });
        let container = request
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting {image}: {e}; its output:\n{}", tail(&logs)));
        let port = container
            .get_host_port_ipv4(spec.port.tcp())
            .await
            .unwrap_or_else(|e| panic!("the host port of {image}'s {}: {e}", spec.port));
        let client = AxpClient::new(
            &format!("http://127.0.0.1:{port}"),
            ClientOptions {
                bearer_token: options.token.clone(),
                ..ClientOptions::default()
            },
        )
        .expect("an AXP client of the mapped port");
        client
            .wait_until_serving(WaitOptions {
                timeout: START_LIMIT,
                ..WaitOptions::default()
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{image} did not report SERVING: {e}; its output:\n{}",
                    tail(&logs)
                )
            });
        Self {
            container,
            client,
            spec,
            image: image.to_owned(),
            logs,
        }
    }

    /// The container's latest output (stdout and stderr, the last few KiB).
    pub fn logs(&self) -> String {
        tail(&self.logs)
    }

    /// The agent's URL on the host.
    pub fn url(&self) -> &str {
        self.client.endpoint_uri()
    }

    /// Sends `code` as the conversation's next turn (`config`: `agent_config` JSON, may be empty)
    /// and returns the outputs as they come. Every call is in [`CONVERSATION`]: the agent serves
    /// one conversation per sandbox.
    pub async fn send(&self, code: &str, config: &str) -> Outputs {
        let exec = format!("exec-{}", EXEC_IDS.fetch_add(1, Ordering::Relaxed));
        let start = AgentStart {
            agent_config: config.as_bytes().to_vec(),
            ..content::planner_start(code, "")
        };
        tokio::time::timeout(CALL_LIMIT, self.client.connect(CONVERSATION, &exec, start))
            .await
            .unwrap_or_else(|_| panic!("the call did not start within {CALL_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("the call was refused: {e}"))
    }

    /// Runs `code` as the conversation's next turn to its end.
    ///
    /// # Panics
    ///
    /// When the call fails or takes longer than [`CALL_LIMIT`].
    pub async fn turn(&self, code: &str, config: &str) -> Turn {
        let outputs = self.send(code, config).await;
        Turn::collect(outputs)
            .await
            .unwrap_or_else(|e| panic!("running {code:?}: {e}"))
    }

    /// The container's state as the engine reports it (`docker inspect`'s `State`).
    ///
    /// # Panics
    ///
    /// When the engine cannot be asked.
    pub async fn state(&self) -> ContainerState {
        let docker = testcontainers::core::client::docker_client_instance()
            .await
            .expect("the testcontainers Docker client");
        docker
            .inspect_container(self.container.id(), None)
            .await
            .unwrap_or_else(|e| panic!("inspecting {}: {e}", self.container.id()))
            .state
            .expect("the container's state")
    }

    /// Asserts that the container runs and was never OOM-killed.
    pub async fn assert_running(&self, after: &str) {
        let state = self.state().await;
        assert_eq!(
            state.running,
            Some(true),
            "after {after}, the container is not running: {state:?}; its output:\n{}",
            self.logs()
        );
        assert_ne!(
            state.oom_killed,
            Some(true),
            "after {after}, the kernel OOM-killed a process of the container: {state:?}"
        );
    }

    /// Asserts that a new turn runs.
    pub async fn assert_serves(&self, after: &str) {
        let turn = self.turn("print(6 * 7)", "").await;
        assert_eq!(turn.text(), "42", "after {after}, a new call: {turn}");
    }
}

/// The outputs of one call.
#[derive(Debug)]
pub struct Turn {
    /// Every output message, in order.
    pub messages: Vec<Message>,
    /// Whether the agent sent `end`.
    pub ended: bool,
}

impl Turn {
    /// Reads `outputs` to the end, bounded by [`CALL_LIMIT`].
    ///
    /// # Errors
    ///
    /// The stream failed or took too long.
    pub async fn collect(mut outputs: Outputs) -> Result<Self, String> {
        let mut messages = Vec::new();
        let read = async {
            while let Some(batch) = outputs.next().await {
                messages.extend(batch.map_err(|e: ClientError| e.to_string())?);
            }
            Ok::<_, String>(())
        };
        tokio::time::timeout(CALL_LIMIT, read)
            .await
            .map_err(|_| format!("the call did not end within {CALL_LIMIT:?}"))??;
        Ok(Self {
            messages,
            ended: outputs.ended(),
        })
    }

    /// What the planner sees: the text outputs joined with newlines.
    pub fn text(&self) -> String {
        content::planner_view(&self.messages)
    }

    /// The structured result (the last tool result), as JSON.
    pub fn result(&self) -> Value {
        self.messages
            .iter()
            .rev()
            .find_map(content::tool_result_json)
            .unwrap_or(Value::Null)
    }

    /// One field of the structured result (`Null` when absent).
    pub fn field(&self, name: &str) -> Value {
        self.result().get(name).cloned().unwrap_or(Value::Null)
    }

    /// Whether a boolean field of the structured result is true.
    pub fn flag(&self, name: &str) -> bool {
        self.field(name) == Value::Bool(true)
    }
}

/// What a failure message shows of a turn: its text and its structured result.
impl std::fmt::Display for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "text {:?}, ended {}, result {}",
            self.text(),
            self.ended,
            self.result()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn an_image_reference_splits_into_name_and_tag() {
        assert_eq!(
            split_reference("python-sandbox-agent:dev"),
            ("python-sandbox-agent", "dev")
        );
        assert_eq!(
            split_reference("localhost:5000/agent"),
            ("localhost:5000/agent", "latest")
        );
        assert_eq!(split_reference("agent"), ("agent", "latest"));
    }
}
