//! Prerequisites: kind, kubectl and a container engine that answers, and whether this host can reach the pods.

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

/// What can stop this host from reaching a kind cluster's nodes and pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct EngineFacts {
    /// Docker Desktop: the engine, and so the nodes, run inside a VM.
    desktop: bool,
    /// A rootless engine: the nodes live in the engine's own network namespace.
    rootless: bool,
}

/// Asks the engine (Linux only: elsewhere the OS alone decides). An engine that does not say is taken as ordinary.
pub(super) fn probe_engine(engine: Engine) -> EngineFacts {
    if std::env::consts::OS != "linux" {
        return EngineFacts::default();
    }
    let timeout = Duration::from_secs(20);
    match engine {
        Engine::Docker => answer(
            cmd!(
                "docker",
                "info",
                "--format",
                "{{.OperatingSystem}}|{{.SecurityOptions}}"
            ),
            timeout,
        )
        .and_then(Result::ok)
        .map(|info| docker_facts(&info))
        .unwrap_or_default(),
        Engine::Podman => EngineFacts {
            desktop: false,
            rootless: answer(
                cmd!("podman", "info", "--format", "{{.Host.Security.Rootless}}"),
                timeout,
            )
            .and_then(Result::ok)
            .is_some_and(|rootless| rootless.trim() == "true"),
        },
    }
}

/// Reads `docker info --format '{{.OperatingSystem}}|{{.SecurityOptions}}'`.
fn docker_facts(info: &str) -> EngineFacts {
    EngineFacts {
        desktop: info.contains("Docker Desktop"),
        rootless: info.contains("name=rootless"),
    }
}

/// Why this host cannot reach the pods of a kind cluster, if it cannot.
pub(super) fn unreachable_pods(os: &str, engine: Engine, facts: &EngineFacts) -> Option<String> {
    let engine = engine.name();
    if os != "linux" {
        Some(format!(
            "on {os}, {engine} (Docker Desktop, Podman machine, colima…) runs kind's nodes inside a Linux VM, and \
             neither the nodes nor their pods' IPs are reachable from the host"
        ))
    } else if facts.desktop {
        Some(
            "Docker Desktop runs kind's nodes inside a VM, and neither the nodes nor their pods' IPs are reachable \
             from the host"
                .to_owned(),
        )
    } else if facts.rootless {
        Some(format!(
            "rootless {engine} keeps kind's nodes in its own network namespace, and neither the nodes nor their \
             pods' IPs are reachable from the host"
        ))
    } else {
        None
    }
}

pub(super) fn unreachable_message(reason: &str) -> String {
    format!(
        "e2e cannot run here: {reason}.\n\
         The demo runs on this host and connects to each sandbox at podIP:{port} (like an AX controller in direct \
         mode), so it needs the pod subnet routed from here. Run e2e on a Linux host with rootful Docker or \
         Podman, or, if you have made the pod IPs reachable yourself, pass --no-route.",
        port = axp_transport::DEFAULT_PORT
    )
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

    #[test]
    fn pods_are_unreachable_off_linux_on_docker_desktop_and_rootless() {
        let ordinary = EngineFacts::default();
        assert_eq!(unreachable_pods("linux", Engine::Docker, &ordinary), None);
        assert_eq!(unreachable_pods("linux", Engine::Podman, &ordinary), None);
        let mac = unreachable_pods("macos", Engine::Docker, &ordinary).unwrap();
        assert!(mac.starts_with("on macos, docker (Docker Desktop"), "{mac}");
        assert!(unreachable_pods("windows", Engine::Podman, &ordinary).is_some());

        let desktop =
            docker_facts("Docker Desktop|[name=seccomp,profile=unconfined name=cgroupns]\n");
        assert_eq!(
            desktop,
            EngineFacts {
                desktop: true,
                rootless: false
            }
        );
        assert!(
            unreachable_pods("linux", Engine::Docker, &desktop)
                .unwrap()
                .contains("VM")
        );
        let rootless = docker_facts(
            "Ubuntu 24.04.1 LTS|[name=seccomp,profile=builtin name=rootless name=cgroupns]\n",
        );
        assert!(rootless.rootless && !rootless.desktop);
        assert_eq!(
            docker_facts(
                "Ubuntu 24.04.1 LTS|[name=apparmor name=seccomp,profile=builtin name=cgroupns]"
            ),
            ordinary
        );
        let podman = EngineFacts {
            desktop: false,
            rootless: true,
        };
        assert!(
            unreachable_pods("linux", Engine::Podman, &podman)
                .unwrap()
                .starts_with("rootless podman keeps")
        );
        assert!(unreachable_message("x").contains("pass --no-route"));
    }
}
