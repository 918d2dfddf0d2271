//! Building blocks shared by both API versions (the JSON shapes are identical).
//!
//! The `#[schemars(...)]` attributes are the validation rules of the generated CRDs
//! ([`crate::crds`]): defaults, enums, bounds and patterns, as agent-sandbox declares them.

use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PodSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyIngressRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A reference to another object in the same namespace, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct NameRef {
    /// Name of the referenced object.
    pub name: String,
}

/// What happens to a claim at `shutdownTime`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ShutdownPolicy {
    /// Delete the claim (background cascade).
    Delete,
    /// Delete the claim with foreground propagation.
    DeleteForeground,
    /// Keep the claim; delete what it owns. The upstream default.
    #[default]
    Retain,
}

/// What happens to a sandbox at `shutdownTime` (a claim's policy has one more choice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum SandboxShutdownPolicy {
    /// Delete the sandbox.
    Delete,
    /// Keep the sandbox; delete its pod and service. The upstream default.
    #[default]
    Retain,
}

/// `spec.lifecycle` of a claim.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Absolute expiry of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// Expire this many seconds after the mirrored `Finished` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// What happens at expiry (`Retain` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Retain"))]
    pub shutdown_policy: Option<ShutdownPolicy>,
}

/// Labels and annotations for a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct PodMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An environment variable a claim injects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Variable value.
    pub value: String,
    /// Container to inject into (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

/// Name, labels and annotations of an embedded object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct EmbeddedObjectMetadata {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl EmbeddedObjectMetadata {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A PVC a sandbox mounts as volume `<metadata.name>`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct PersistentVolumeClaimTemplate {
    /// Metadata (the controllers require a unique `name`).
    #[serde(default, skip_serializing_if = "EmbeddedObjectMetadata::is_empty")]
    pub metadata: EmbeddedObjectMetadata,
    /// PVC spec.
    pub spec: PersistentVolumeClaimSpec,
}

/// The pod a sandbox runs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct PodTemplate {
    /// Pod spec.
    pub spec: PodSpec,
    /// Only labels and annotations are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PodMetadata>,
}

/// `spec.networkPolicy` of a template: the NetworkPolicy the controller writes for each
/// sandbox, verbatim.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct NetworkPolicy {
    /// Allowed incoming traffic (none when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Allowed outgoing traffic (none when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

/// Who owns a template's sandboxes' NetworkPolicy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum NetworkPolicyManagement {
    /// The controller writes `spec.networkPolicy` (or a default-deny one). The default.
    #[default]
    Managed,
    /// The controller writes none; the cluster operator provides it.
    Unmanaged,
}

/// Whether a claim's `spec.env` may change the template's environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum EnvVarsInjectionPolicy {
    /// New variables may be added, existing ones not overridden.
    Allowed,
    /// New variables may be added and existing ones overridden.
    Overrides,
    /// A claim with `spec.env` is rejected. The default.
    #[default]
    Disallowed,
}

/// Whether a claim's `spec.volumeClaimTemplates` may change the template's (v1beta1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum VolumeClaimTemplatesPolicy {
    /// A claim with volume claim templates is rejected. The default.
    #[default]
    Disallowed,
    /// New templates may be added.
    Allowed,
    /// New templates may be added and existing ones replaced.
    Overrides,
}

/// `spec.operatingMode` of a Sandbox (v1beta1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum OperatingMode {
    /// The pod runs. The default.
    #[default]
    Running,
    /// The pod is deleted; the Sandbox (and its volumes) stay.
    Suspended,
}

/// `status.sandbox` of a claim: the bound Sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSandboxStatus {
    /// Name of the bound Sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// IPs of the sandbox pod, mirrored from the Sandbox.
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<String>,
}

/// Status of a SandboxClaim (same in both versions).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct SandboxClaimStatus {
    /// `Ready` (and a mirrored `Finished`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The bound sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<ClaimSandboxStatus>,
}

impl SandboxClaimStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// The `Ready` condition, if present.
    pub fn ready(&self) -> Option<&Condition> {
        self.condition("Ready")
    }
}

/// `spec.updateStrategy` of a warm pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct UpdateStrategy {
    /// How members follow a changed template (`OnReplenish` when unset).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "OnReplenish"))]
    pub type_: Option<UpdateStrategyType>,
}

/// How warm-pool members follow a changed template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum UpdateStrategyType {
    /// Replace idle members at once.
    Recreate,
    /// Stamp new members from the new template as old ones are claimed. The default.
    #[default]
    OnReplenish,
}

/// The schema of a `[]metav1.Condition` with the API server's validation rules for
/// conditions (k8s-openapi's schema of [`Condition`] carries none of them).
pub(crate) fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "description": "A condition of the object's current state (metav1.Condition).",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "When the condition last changed status.",
                    "type": "string",
                    "format": "date-time",
                },
                "message": {
                    "description": "Human-readable details about the transition.",
                    "type": "string",
                    "maxLength": 32768,
                },
                "observedGeneration": {
                    "description": "The .metadata.generation the condition was set for.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                },
                "reason": {
                    "description": "Programmatic identifier of the last transition (CamelCase).",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": CONDITION_REASON_PATTERN,
                },
                "status": {
                    "description": "True, False or Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                },
                "type": {
                    "description": "Condition type (CamelCase or foo.example.com/CamelCase).",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": CONDITION_TYPE_PATTERN,
                },
            },
        },
    })
}

/// What the API server accepts as a condition's `reason`.
const CONDITION_REASON_PATTERN: &str = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

/// What the API server accepts as a condition's `type`: an optional DNS-subdomain prefix
/// and a qualified name.
const CONDITION_TYPE_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";
