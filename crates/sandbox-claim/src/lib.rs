//! Check a [kubernetes-sigs/agent-sandbox](https://github.com/kubernetes-sigs/agent-sandbox)
//! sandbox out for a conversation, and give it back — the `SandboxClaim` lifecycle on the
//! Kubernetes API, with no gRPC dependency.
//!
//! The entry point is [`Claims`]:
//!
//! ```no_run
//! # async fn wrapper(client: kube::Client) -> Result<(), sandbox_claim::Error> {
//! use sandbox_claim::{ClaimOptions, Claims};
//! let claims = Claims::detect(client, ClaimOptions::default().namespace("agents").source("python-pool")).await?;
//! let handle = claims.acquire("conversation-42").await?; // create or adopt, then watch until Ready
//! println!("connect to {}:8494", handle.pod_ip);
//! claims.renew(&handle).await?;                          // push shutdownTime forward
//! claims.release(&handle).await?;                        // idempotent delete
//! # Ok(()) }
//! ```
//!
//! Modules: [`types`] (both API versions; `v1beta1` is the default), [`crds`] (the
//! CustomResourceDefinitions generated from them), [`naming`], [`labels`], [`reason`],
//! [`wait`] (with one shared watch per [`Claims`] by default, [`WatchMode`]), [`retry`], [`options`], [`handle`], [`api_version`].
//!
//! # Features
//! - `testing`: a fake cluster ([`testing::FakeCluster`]: the in-process fake API server
//!   serving the CRDs of [`crds`], plus a simulated agent-sandbox controller) for tests and
//!   demos; it needs no files on disk.

pub mod api_version;
mod claim;
pub mod crds;
pub mod handle;
pub mod labels;
pub mod naming;
pub mod options;
pub mod reason;
pub mod retry;
mod shared_watch;
mod sweep;
pub mod types;
pub mod wait;

#[cfg(feature = "testing")]
pub mod testing;

pub use api_version::{ApiVersion, VersionSelection};
pub use claim::{Claims, Cleanup, Error};
pub use handle::{AcquirePath, Acquired, ConversationRef, SandboxHandle};
pub use options::{AcquireOptions, ClaimOptions, Propagation, WatchMode};
pub use retry::{ApiErrorKind, RetryObserver, RetryPolicy};
pub use sweep::SweepReport;
