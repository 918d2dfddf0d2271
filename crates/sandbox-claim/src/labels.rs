//! Label and annotation keys this crate writes or reads.

/// Standard label marking the claim as created by this crate (value [`MANAGED_BY_VALUE`]).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`] on our claims.
pub const MANAGED_BY_VALUE: &str = "sandbox-claim";
/// Label: the warm pool (v1beta1) or template (v1alpha1) the claim was made from.
pub const SOURCE: &str = "claims.ax.dev/source";
/// Label: hash of the conversation id ([`crate::naming::conversation_hash`]), for selectors.
pub const CONVERSATION_HASH: &str = "claims.ax.dev/conversation-hash";
/// Annotation: the full conversation id, verbatim.
pub const CONVERSATION_ID: &str = "claims.ax.dev/conversation-id";

/// agent-sandbox annotation: when the client first asked for the sandbox (RFC 3339), feeds
/// `agent_sandbox_client_claim_startup_latency_ms`.
pub const CLIENT_FIRST_REQUESTED_AT: &str = "agents.x-k8s.io/client-first-requested-at";
/// agent-sandbox annotation on a Sandbox: name of its pod.
pub const POD_NAME: &str = "agents.x-k8s.io/pod-name";
/// agent-sandbox annotation on a claim: the adopted sandbox.
pub const SANDBOX_NAME: &str = "agents.x-k8s.io/sandbox-name";
/// agent-sandbox label: owning claim UID.
pub const CLAIM_UID: &str = "agents.x-k8s.io/claim-uid";
/// agent-sandbox label: `cold` or `warm`.
pub const LAUNCH_TYPE: &str = "agents.x-k8s.io/launch-type";
/// agent-sandbox label on pool members: FNV hash of the pool name.
pub const WARM_POOL_SANDBOX: &str = "agents.x-k8s.io/warm-pool-sandbox";
/// agent-sandbox label: FNV hash of the template name.
pub const SANDBOX_TEMPLATE_REF_HASH: &str = "agents.x-k8s.io/sandbox-template-ref-hash";
/// agent-sandbox annotation on a Sandbox: the template it came from.
pub const SANDBOX_TEMPLATE_REF: &str = "agents.x-k8s.io/sandbox-template-ref";

/// Label selector matching every claim this crate manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}
