//! An in-process fake Kubernetes API server, served over real HTTP on `127.0.0.1`, so that the
//! real `kube` client (`Api<K>`, `watcher`, `await_condition`, discovery) can be tested without a
//! cluster.
//!
//! Start one with [`FakeApiServer::start`], install CRDs with
//! [`install_crd_yaml`](FakeApiServer::install_crd_yaml), and talk to it through
//! [`client`](FakeApiServer::client) or a kubeconfig file
//! ([`write_kubeconfig`](FakeApiServer::write_kubeconfig)).
//!
//! What it serves:
//!
//! - `/apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/status]]` with get, list,
//!   watch, create, update, patch (merge, JSON; strategic merge only on the core kinds, as
//!   upstream), server-side apply (field managers in `managedFields`, conflicts), delete and
//!   deletecollection;
//! - object lifecycle (uid, one global resourceVersion, generation, status subresource,
//!   optimistic concurrency, finalizers, owner-reference cascade);
//! - label and field selectors; watches with history, bookmarks, timeouts and 410 Expired;
//! - structural-schema validation with pruning and defaulting, and `fieldValidation`
//!   (`Strict`, `Warn` with `Warning` headers, `Ignore`; the default is
//!   [`FakeApiServerOptions::strict_unknown_fields`]);
//! - server-side `Table`s from the CRDs' `additionalPrinterColumns` (what `kubectl get`
//!   prints), and `/openapi/v2` and `/openapi/v3` built from their schemas (`kubectl apply`
//!   validation, `kubectl explain`);
//! - core `v1` namespaces (no schema), and pods at `/api/v1[/namespaces/{ns}]/pods[/{name}[/status]]` (no schema: what a
//!   client writes is kept), and `pods/{name}/portforward`: kubelet's WebSocket port-forward
//!   (`v4.channel.k8s.io`, as `kube::Api::<Pod>::portforward` asks) tunnelled over TCP to the
//!   pod's `status.podIP`, counted as `get` on `pods/portforward`;
//! - discovery documents for `kube::discovery`;
//! - request counting ([`RequestLog`]) and fault injection ([`Fault`]);
//! - open watches ([`FakeApiServer::watches`]), request latencies
//!   ([`FakeApiServer::request_latencies`]) and timestamped writes
//!   ([`FakeApiServer::on_write`]), for benches.
//!
//! ```no_run
//! use fake_apiserver::FakeApiServer;
//! use kube::api::{Api, ApiResource, DynamicObject, PostParams};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = FakeApiServer::start().await?;
//! server.install_crd_yaml(&std::fs::read_to_string("sandboxclaims.yaml")?)?;
//! let client = server.client("default");
//! let ar = ApiResource {
//!     group: "extensions.agents.x-k8s.io".into(),
//!     version: "v1beta1".into(),
//!     api_version: "extensions.agents.x-k8s.io/v1beta1".into(),
//!     kind: "SandboxClaim".into(),
//!     plural: "sandboxclaims".into(),
//! };
//! let claims: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
//! let mut claim = DynamicObject::new("my-claim", &ar);
//! claim.data = serde_json::json!({"spec": {"warmPoolRef": {"name": "pool"}}});
//! claims.create(&PostParams::default(), &claim).await?;
//! assert_eq!(server.requests().count_named("create", "sandboxclaims"), 1);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Caveats
//!
//! No authentication, no core resources but pods and namespaces (no services, …), no pod
//! `exec`/`attach`/`log`, no CRD objects under `apiextensions.k8s.io`, no version conversion,
//! server-side apply ownership for appliers only (updates and plain patches own nothing), no CEL
//! `x-kubernetes-validations`, no `anyOf`/`allOf`/`oneOf` value validations and no list-type
//! uniqueness. Schema validation enforces `required`, `type`, `enum`, `pattern` (with the `regex`
//! crate: a CRD whose patterns use look-around or back-references is refused at install),
//! `format: date-time`, `minimum`/`maximum`, `minLength`/`maxLength` and `minItems`/`maxItems`.
//! `limit`/`continue` are ignored: lists come back in one page.

mod apply;
mod crd;
mod discovery;
mod fault;
mod field_validation;
mod handle;
mod kubeconfig;
mod observe;
mod openapi;
mod openapi_pb;
mod options;
mod portforward;
mod requests;
mod resource;
mod routes;
mod schema;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod watch;

pub use crd::Error as CrdError;
pub use fault::{Fault, FaultAction, FaultCounts, FaultId, FaultKind, FaultMatch, RandomFaults};
pub use handle::{Error, FakeApiServer};
pub use observe::{WatchCount, Write, WriteKind};
pub use options::FakeApiServerOptions;
pub use requests::{RequestLog, Verb};
pub use schema::PatternError;
pub use selector::Error as SelectorError;
pub use status::Cause;
