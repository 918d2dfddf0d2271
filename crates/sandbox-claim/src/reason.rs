//! What a claim's `Ready` condition reason means for a client that waits on it.
//!
//! The classes follow the upstream controller and the official Python SDK (1.0.8's
//! `TERMINAL_CLAIM_READY_REASONS`); `docs/agent-sandbox.md` in the repository lists them.

/// How a waiting client should treat a `Ready=False` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReasonClass {
    /// The sandbox will not become ready without a change to the claim: fail now.
    Terminal,
    /// A dependency is missing. The controller keeps retrying, but a client usually wants
    /// to know at once.
    NotFound(Missing),
    /// Anything else: keep waiting until the deadline.
    Transient,
}

/// Which dependency is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// `WarmPoolNotFound`.
    WarmPool,
    /// `TemplateNotFound`.
    Template,
}

/// Reasons after which the claim will not become ready.
pub const TERMINAL_REASONS: &[&str] = &[
    "InvalidMetadata",
    "EnvVarsInjectionRejected",
    "VolumeClaimTemplatesError",
    "ClaimExpired",
    "SandboxExpired",
    // agent-sandbox v1.0: a child object (e.g. the derived Service) fails API validation.
    "InvalidConfiguration",
    "PodFailed",
    "PodSucceeded",
];

/// Classifies a `Ready` condition reason. Unknown reasons are [`ReasonClass::Transient`].
pub fn classify(reason: &str) -> ReasonClass {
    match reason {
        "WarmPoolNotFound" => ReasonClass::NotFound(Missing::WarmPool),
        "TemplateNotFound" => ReasonClass::NotFound(Missing::Template),
        r if TERMINAL_REASONS.contains(&r) => ReasonClass::Terminal,
        _ => ReasonClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_reason_is_classified() {
        for r in TERMINAL_REASONS {
            assert_eq!(classify(r), ReasonClass::Terminal, "{r}");
        }
        assert_eq!(
            classify("WarmPoolNotFound"),
            ReasonClass::NotFound(Missing::WarmPool)
        );
        assert_eq!(
            classify("TemplateNotFound"),
            ReasonClass::NotFound(Missing::Template)
        );
        for r in [
            "SandboxNotReady",
            "DependenciesNotReady",
            "AdoptionConflict",
            "SandboxCreatePending",
            "SandboxMissing",
            "AdoptionPending",
            "ReconcilerError",
            "SandboxSuspended",
            "MultiplePods",
            "SomethingNew",
        ] {
            assert_eq!(classify(r), ReasonClass::Transient, "{r}");
        }
    }

    #[test]
    fn agent_sandbox_v1_0_failure_reasons_are_terminal() {
        for r in ["InvalidConfiguration", "PodFailed", "PodSucceeded"] {
            assert_eq!(classify(r), ReasonClass::Terminal, "{r}");
        }
    }

    #[test]
    fn agent_sandbox_v1_0_adoption_pending_is_transient() {
        assert_eq!(classify("AdoptionPending"), ReasonClass::Transient);
    }
}
