//! `v1alpha1` (agent-sandbox v0.4.x; deprecated from v0.5): a claim names `spec.sandboxTemplateRef` and `spec.warmpool`.

use super::common::{
    EnvVar, Lifecycle, NameRef, PersistentVolumeClaimTemplate, PodMetadata, PodTemplate,
    SandboxClaimStatus, SandboxStatus, SandboxWarmPoolStatus, ShutdownPolicy, UpdateStrategy,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a `SandboxClaim`: check a sandbox out of a warm pool.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1alpha1",
    kind = "SandboxClaim",
    namespaced,
    status = "SandboxClaimStatus",
    derive = "Default",
    derive = "PartialEq",
    shortname = "sandboxclaim"
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxClaimSpec {
    /// The template to provision from.
    pub sandbox_template_ref: NameRef,
    /// `none`, `default` (any pool of the template) or a pool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmpool: Option<String>,
    /// Expiry of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Labels and annotations merged into the sandbox pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_pod_metadata: Option<PodMetadata>,
    /// Environment variables to inject (forces a cold start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// Spec of a `SandboxTemplate`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1alpha1",
    kind = "SandboxTemplate",
    namespaced,
    derive = "Default",
    shortname = "sandboxtemplate"
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTemplateSpec {
    /// The pod to run.
    pub pod_template: PodTemplate,
    /// PVCs to create per sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaimTemplate>,
    /// Whether to create a headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
    /// `Managed` (default) or `Unmanaged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_management: Option<String>,
    /// `Allowed`, `Overrides` or `Disallowed` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars_injection_policy: Option<String>,
}

/// Spec of a `SandboxWarmPool`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1alpha1",
    kind = "SandboxWarmPool",
    namespaced,
    status = "SandboxWarmPoolStatus",
    derive = "Default",
    shortname = "swp"
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxWarmPoolSpec {
    /// Desired idle sandboxes (required in v1alpha1).
    pub replicas: i32,
    /// Template to stamp sandboxes from.
    pub sandbox_template_ref: NameRef,
    /// `Recreate` or `OnReplenish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
}

/// Spec of a `Sandbox` (`agents.x-k8s.io`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "agents.x-k8s.io",
    version = "v1alpha1",
    kind = "Sandbox",
    namespaced,
    status = "SandboxStatus",
    derive = "Default",
    shortname = "sandbox"
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// The pod to run.
    pub pod_template: PodTemplate,
    /// PVCs to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaimTemplate>,
    /// Whether to create a headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
    /// Absolute expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// `Delete` or `Retain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_policy: Option<ShutdownPolicy>,
    /// 0 (suspended) or 1 (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}
