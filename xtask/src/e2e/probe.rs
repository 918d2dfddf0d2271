//! Prerequisites: kind, kubectl and a container engine that answers.

use std::time::Duration;

use anyhow::bail;
use duct::{Expression, cmd};

/// The container engine kind runs its nodes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Engine {
    Docker,
    Podman,
}

impl Engine {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

/// What looking for one engine found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum EngineProbe {
    /// No such command.
    #[default]
    Absent,
    /// The CLI is there but `<engine> info` failed; the first line of what it said.
    NoDaemon(String),
    Ready,
}

/// What is installed.
#[derive(Debug, Clone, Default)]
pub(super) struct Probes {
    kind: bool,
    kubectl: bool,
    docker: EngineProbe,
    podman: EngineProbe,
}

/// Runs `expression` quietly: `None` when its program would not start (not installed), else its stdout on success,
/// or the first line it wrote to stderr on failure (also when it did not finish within `timeout`, and was killed).
pub(super) fn answer(expression: Expression, timeout: Duration) -> Option<Result<String, String>> {
    let handle = expression
        .stdout_capture()
        .stderr_capture()
        .stdin_null()
        .unchecked()
        .start();
    let Ok(handle) = handle else {
        return None; // not installed
    };
    match handle.wait_timeout(timeout) {
        Ok(Some(output)) if output.status.success() => {
            Some(Ok(String::from_utf8_lossy(&output.stdout).into_owned()))
        }
        Ok(Some(output)) => {
            let said = String::from_utf8_lossy(&output.stderr);
            let said = said
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            Some(Err(said.trim().to_owned()))
        }
        Ok(None) => {
            let _ = handle.kill();
            Some(Err(format!("no answer in {timeout:?}")))
        }
        Err(error) => Some(Err(error.to_string())),
    }
}

/// [`answer`], for a lookup that must succeed: its stdout, or an error saying what it said.
pub(super) fn ask(what: &str, expression: Expression) -> anyhow::Result<String> {
    match answer(expression, Duration::from_secs(60)) {
        Some(Ok(stdout)) => Ok(stdout),
        Some(Err(said)) => bail!("{what}: {said}"),
        None => bail!("{what}: the program is not installed"),
    }
}

pub(super) fn probe() -> Probes {
    let answers =
        |program: &str, args: &[&str]| answer(cmd(program, args), Duration::from_secs(20));
    let engine = |program: &str| match answers(program, &["info"]) {
        None => EngineProbe::Absent,
        Some(Ok(_)) => EngineProbe::Ready,
        Some(Err(said)) => EngineProbe::NoDaemon(said),
    };
    Probes {
        kind: answers("kind", &["version"]).is_some(),
        kubectl: answers("kubectl", &["version", "--client"]).is_some(),
        docker: engine("docker"),
        podman: engine("podman"),
    }
}

/// The engine to use, or what is missing, one line each.
pub(super) fn choose_engine(probes: &Probes) -> Result<Engine, Vec<String>> {
    let mut missing = Vec::new();
    if !probes.kind {
        missing.push(
            "kind: not on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
                .to_owned(),
        );
    }
    if !probes.kubectl {
        missing.push("kubectl: not on PATH (https://kubernetes.io/docs/tasks/tools/)".to_owned());
    }
    let engine = match (&probes.docker, &probes.podman) {
        (EngineProbe::Ready, _) => Some(Engine::Docker),
        (_, EngineProbe::Ready) => Some(Engine::Podman),
        (docker, podman) => {
            let line = match (docker, podman) {
                (EngineProbe::Absent, EngineProbe::Absent) => {
                    "a container engine: neither docker nor podman is on PATH".to_owned()
                }
                (EngineProbe::NoDaemon(said), _) => {
                    format!(
                        "a container engine: docker is installed but its daemon does not answer (`docker info`: {said})"
                    )
                }
                (_, EngineProbe::NoDaemon(said)) => {
                    format!(
                        "a container engine: podman is installed but does not answer (`podman info`: {said})"
                    )
                }
                _ => unreachable!("Ready is handled above"),
            };
            missing.push(line);
            None
        }
    };
    match engine {
        Some(engine) if missing.is_empty() => Ok(engine),
        _ => Err(missing),
    }
}

pub(super) fn missing_message(missing: &[String]) -> String {
    let mut message = String::from("e2e needs what this machine lacks:");
    for line in missing {
        message.push_str("\n  - ");
        message.push_str(line);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Probes {
        Probes {
            kind: true,
            kubectl: true,
            docker: EngineProbe::Ready,
            podman: EngineProbe::Absent,
        }
    }

    #[test]
    fn docker_is_preferred_and_podman_is_the_fallback() {
        assert_eq!(choose_engine(&everything()), Ok(Engine::Docker));
        let podman = Probes {
            docker: EngineProbe::NoDaemon("Cannot connect".into()),
            podman: EngineProbe::Ready,
            ..everything()
        };
        assert_eq!(choose_engine(&podman), Ok(Engine::Podman));
    }

    #[test]
    fn the_message_names_each_missing_prerequisite_and_why() {
        let this_machine = Probes {
            kind: false,
            kubectl: true,
            docker: EngineProbe::NoDaemon(
                "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.".into(),
            ),
            podman: EngineProbe::Absent,
        };
        let missing = choose_engine(&this_machine).unwrap_err();
        assert_eq!(
            missing_message(&missing),
            "e2e needs what this machine lacks:\n  \
             - kind: not on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)\n  \
             - a container engine: docker is installed but its daemon does not answer \
             (`docker info`: Cannot connect to the Docker daemon at unix:///var/run/docker.sock.)"
        );
    }

    #[test]
    fn nothing_installed_lists_all_three() {
        let missing = choose_engine(&Probes::default()).unwrap_err();
        assert_eq!(missing.len(), 3);
        assert!(missing[2].contains("neither docker nor podman"));
    }

    #[test]
    fn a_ready_engine_does_not_excuse_a_missing_kubectl() {
        let probes = Probes {
            kubectl: false,
            ..everything()
        };
        assert_eq!(choose_engine(&probes).unwrap_err().len(), 1);
    }
}
