//! Typed agent-sandbox resources for both API versions, and the source of this crate's CRDs.
//!
//! [`v1beta1`] is the default everywhere: agent-sandbox v1.0 (2026-08-28) serves `v1beta1`
//! only, v0.5 and later store it. [`v1alpha1`] stays for clusters still on v0.4.x (pre-1.0),
//! which serve nothing else.
//!
//! The CustomResourceDefinitions in [`crate::crds`] (and `deploy/crds/` in the repository)
//! are generated from these types with `kube::CustomResourceExt`: every field, default,
//! enum and bound declared here is what the fake API server of the `testing` feature
//! enforces, and what the simulated controller and [`crate::Claims`] may write.

mod common;
pub mod v1alpha1;
pub mod v1beta1;

pub use common::{
    ClaimSandboxStatus, EmbeddedObjectMetadata, EnvVar, EnvVarsInjectionPolicy, Lifecycle, NameRef,
    NetworkPolicy, NetworkPolicyManagement, OperatingMode, PersistentVolumeClaimTemplate,
    PodMetadata, PodTemplate, SandboxClaimStatus, SandboxShutdownPolicy, ShutdownPolicy,
    UpdateStrategy, UpdateStrategyType, VolumeClaimTemplatesPolicy,
};

use crate::api_version::ApiVersion;
use kube::Resource;
use kube::core::NamespaceResourceScope;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A SandboxClaim of one API version; lets the claim logic be written once.
pub trait ClaimResource:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The version this type speaks.
    const API_VERSION: ApiVersion;

    /// A claim named `name` on `source` (pool on v1beta1, template on v1alpha1).
    fn build(
        name: &str,
        source: &str,
        v1alpha1_warmpool: Option<&str>,
        lifecycle: Lifecycle,
    ) -> Self;

    /// `status`, if any.
    fn claim_status(&self) -> Option<&SandboxClaimStatus>;

    /// `spec.lifecycle`, if any.
    fn lifecycle(&self) -> Option<&Lifecycle>;
}

impl ClaimResource for v1beta1::SandboxClaim {
    const API_VERSION: ApiVersion = ApiVersion::V1beta1;

    fn build(name: &str, source: &str, _: Option<&str>, lifecycle: Lifecycle) -> Self {
        Self::new(
            name,
            v1beta1::SandboxClaimSpec {
                warm_pool_ref: NameRef {
                    name: source.to_owned(),
                },
                lifecycle: Some(lifecycle),
                ..Default::default()
            },
        )
    }

    fn claim_status(&self) -> Option<&SandboxClaimStatus> {
        self.status.as_ref()
    }

    fn lifecycle(&self) -> Option<&Lifecycle> {
        self.spec.lifecycle.as_ref()
    }
}

impl ClaimResource for v1alpha1::SandboxClaim {
    const API_VERSION: ApiVersion = ApiVersion::V1alpha1;

    fn build(name: &str, source: &str, warmpool: Option<&str>, lifecycle: Lifecycle) -> Self {
        Self::new(
            name,
            v1alpha1::SandboxClaimSpec {
                sandbox_template_ref: NameRef {
                    name: source.to_owned(),
                },
                warmpool: warmpool.map(str::to_owned),
                lifecycle: Some(lifecycle),
                ..Default::default()
            },
        )
    }

    fn claim_status(&self) -> Option<&SandboxClaimStatus> {
        self.status.as_ref()
    }

    fn lifecycle(&self) -> Option<&Lifecycle> {
        self.spec.lifecycle.as_ref()
    }
}
