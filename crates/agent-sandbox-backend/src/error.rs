//! Why an execution (or a release) through the backend failed.

use axp_transport::ClientError;
use tonic::Code;

use crate::{options::ConfigError, portforward::PortForwardError};

/// Why an execution (or a release) through the backend failed: one variant
/// per step (configure, detect, claim, wait, connect, stream, release), with
/// the claim name and, for waits, the last condition in [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxAgentError {
    /// The configuration cannot be turned into a backend.
    #[error("invalid agent-sandbox backend configuration")]
    Config(#[source] ConfigError),
    /// Discovering the cluster's agent-sandbox API version failed.
    #[error("could not detect the agent-sandbox API version")]
    Detect(#[source] sandbox_claim::api_version::Error),
    /// Creating or adopting the claim failed.
    #[error("could not claim a sandbox (claim {claim})")]
    Claim {
        /// The claim's name (`-` when the conversation id gives none).
        claim: String,
        /// What the claim lifecycle reported.
        #[source]
        source: Box<sandbox_claim::Error>,
    },
    /// The claimed sandbox did not become Ready.
    #[error("sandbox for claim {claim} did not become ready")]
    Wait {
        /// The claim's name.
        claim: String,
        /// What the wait reported, with the last condition seen.
        #[source]
        source: Box<sandbox_claim::Error>,
    },
    /// The agent could not be reached, or refused the call before any output,
    /// even after re-resolving the claim.
    #[error("could not reach the agent of claim {claim} at {endpoint}")]
    Connect {
        /// The claim's name.
        claim: String,
        /// Where the agent was called.
        endpoint: String,
        /// What the AXP client reported.
        #[source]
        source: Box<ClientError>,
    },
    /// The port-forward to the sandbox's pod could not be set up or failed to carry the
    /// call (connection mode `port-forward`), even after re-resolving the claim.
    #[error("could not port-forward to pod {pod} for the agent of claim {claim}")]
    PortForward {
        /// The claim's name.
        claim: String,
        /// The pod forwarded to, `namespace/name`.
        pod: String,
        /// Which step of the port-forward failed.
        #[source]
        source: Box<PortForwardError>,
    },
    /// The call failed after output had started; it was not retried.
    #[error("agent of claim {claim} at {endpoint} failed after {outputs} output frame(s)")]
    Stream {
        /// The claim's name.
        claim: String,
        /// Where the agent was called.
        endpoint: String,
        /// Output frames delivered before the failure.
        outputs: usize,
        /// What the AXP client reported.
        #[source]
        source: Box<ClientError>,
    },
    /// Giving the sandbox back failed.
    #[error("could not release the sandbox of conversation {conversation}")]
    Release {
        /// The conversation whose claim was being deleted.
        conversation: String,
        /// What the claim lifecycle reported.
        #[source]
        source: Box<sandbox_claim::Error>,
    },
}

impl SandboxAgentError {
    /// The gRPC code the agent answered with, if the failure was the agent's.
    pub fn agent_code(&self) -> Option<Code> {
        match self {
            Self::Connect { source, .. } | Self::Stream { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The step that failed, as a short name (`config`, `detect`, `claim`, `wait`,
    /// `connect`, `port_forward`, `stream`, `release`): the `outcome` of the execution's span
    /// and metrics.
    pub fn step(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Detect(_) => "detect",
            Self::Claim { .. } => "claim",
            Self::Wait { .. } => "wait",
            Self::Connect { .. } => "connect",
            Self::PortForward { .. } => "port_forward",
            Self::Stream { .. } => "stream",
            Self::Release { .. } => "release",
        }
    }

    /// Output frames delivered to the caller before the failure.
    pub fn outputs_delivered(&self) -> usize {
        match self {
            Self::Stream { outputs, .. } => *outputs,
            _ => 0,
        }
    }
}

/// A failure of the claim lifecycle, as the step it happened in.
pub(crate) fn claim_error(claim: String, source: sandbox_claim::Error) -> SandboxAgentError {
    if source.wait_error().is_some() {
        SandboxAgentError::Wait {
            claim,
            source: Box::new(source),
        }
    } else {
        SandboxAgentError::Claim {
            claim,
            source: Box::new(source),
        }
    }
}
