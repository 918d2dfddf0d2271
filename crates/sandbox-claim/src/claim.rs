//! [`Claims`]: check a sandbox out for a conversation, renew it, give it back.

use crate::api_version::{self, ApiVersion, VersionSelection};
use crate::handle::{AcquirePath, Acquired, ConversationRef, SandboxHandle};
use crate::labels;
use crate::naming;
use crate::options::{AcquireOptions, ClaimOptions, Propagation, WatchMode};
use crate::retry::retry;
use crate::shared_watch::SharedWatch;
use crate::types::{ClaimResource, Lifecycle, ShutdownPolicy, v1alpha1, v1beta1};
use crate::wait::{self, Source, wait_deleted, wait_ready};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::{Client, ResourceExt};
use std::any::Any;
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;
use tracing::Instrument as _;

/// Errors of [`Claims`]; each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No valid claim name could be derived (bad [`ClaimOptions::name_prefix`]).
    #[error("cannot derive a claim name")]
    Name(#[source] naming::Error),
    /// API-version discovery failed.
    #[error("failed to detect the agent-sandbox API version")]
    Detect(#[source] api_version::Error),
    /// Creating the claim failed.
    #[error("failed to create claim {name}")]
    Create {
        /// Claim name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading the claim failed.
    #[error("failed to read claim {name}")]
    Get {
        /// Claim name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A claim of that name exists but is not ours, or belongs to another conversation.
    #[error("claim {name} exists but {why}")]
    Conflict {
        /// Claim name.
        name: String,
        /// What did not match.
        why: String,
    },
    /// There is no claim for this conversation.
    #[error("no claim {name} exists for this conversation")]
    NotFound {
        /// Claim name.
        name: String,
    },
    /// The claim did not become ready (the source says why: terminal reason, timeout…).
    /// The message also says what became of the claim ([`Cleanup`]).
    #[error("claim {name} did not become ready; {cleanup}")]
    Wait {
        /// Claim name.
        name: String,
        /// Why (boxed: it is large).
        #[source]
        source: Box<wait::Error>,
        /// What became of the claim: deleted, kept, or left alone.
        cleanup: Cleanup,
    },
    /// A previous claim of the same name was being deleted and did not go away in time.
    #[error("old claim {name} did not finish deleting")]
    AwaitDeletion {
        /// Claim name.
        name: String,
        /// Why (boxed: it is large).
        #[source]
        source: Box<wait::Error>,
    },
    /// Patching the lifecycle failed.
    #[error("failed to renew claim {name}")]
    Renew {
        /// Claim name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting the claim failed.
    #[error("failed to delete claim {name}")]
    Delete {
        /// Claim name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing our claims failed.
    #[error("failed to list claims")]
    List(#[source] kube::Error),
}

impl Error {
    /// The wait error inside [`Error::Wait`], if this is one.
    pub fn wait_error(&self) -> Option<&wait::Error> {
        match self {
            Self::Wait { source, .. } => Some(source),
            _ => None,
        }
    }

    /// What became of the claim after a failed wait ([`Error::Wait`]), if this is one.
    pub fn cleanup(&self) -> Option<&Cleanup> {
        match self {
            Self::Wait { cleanup, .. } => Some(cleanup),
            _ => None,
        }
    }
}

/// What [`Claims::acquire`] did with the claim after the wait failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Cleanup {
    /// This call did not create the claim (it adopted an existing one, or it was
    /// [`Claims::resolve`]), so it was left in place.
    LeftAlone,
    /// The claim this call created was deleted (uid precondition; a claim found already
    /// gone or replaced counts as deleted).
    Deleted,
    /// The claim this call created was kept, as [`ClaimOptions::keep_failed_claims`] asks.
    Kept,
    /// The claim was being deleted already (by someone else); nothing to do.
    AlreadyDeleting,
    /// Deleting the claim this call created failed; it stays until its `shutdownTime`.
    DeleteFailed(Box<kube::Error>),
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LeftAlone => {
                f.write_str("the claim was not created by this call and was left in place")
            }
            Self::Deleted => f.write_str("the claim this call created was deleted"),
            Self::Kept => f.write_str("the claim this call created was kept (keep_failed_claims)"),
            Self::AlreadyDeleting => f.write_str("the claim was already being deleted"),
            Self::DeleteFailed(e) => write!(
                f,
                "deleting the claim this call created failed too ({e}); it stays until its shutdownTime"
            ),
        }
    }
}

/// The claim lifecycle for one namespace and one warm pool (or template).
///
/// Cheap to clone; all clones share the client.
#[derive(Clone)]
pub struct Claims {
    client: Client,
    options: Arc<ClaimOptions>,
    version: ApiVersion,
    /// The shared watch ([`WatchMode::Shared`]): a `SharedWatch` of the version's claim
    /// type, made on the first wait and shared by all clones.
    watch: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("options", &self.options)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Claims {
    /// Claims speaking the version fixed in `options.api_version` (`Auto` means v1beta1
    /// here; use [`Claims::detect`] to ask the cluster).
    pub fn new(client: Client, options: ClaimOptions) -> Self {
        let version = match options.api_version {
            VersionSelection::V1alpha1 => ApiVersion::V1alpha1,
            VersionSelection::V1beta1 | VersionSelection::Auto => ApiVersion::V1beta1,
        };
        Self::with_version(client, options, version)
    }

    /// Like [`Claims::new`], but with `Auto` asks the cluster's discovery once.
    ///
    /// # Errors
    /// [`Error::Detect`] when discovery fails or agent-sandbox extensions are not installed.
    pub async fn detect(client: Client, options: ClaimOptions) -> Result<Self, Error> {
        let version = match options.api_version {
            VersionSelection::Auto => api_version::detect(&client).await.map_err(Error::Detect)?,
            VersionSelection::V1beta1 => ApiVersion::V1beta1,
            VersionSelection::V1alpha1 => ApiVersion::V1alpha1,
        };
        Ok(Self::with_version(client, options, version))
    }

    fn with_version(client: Client, options: ClaimOptions, version: ApiVersion) -> Self {
        Self {
            client,
            options: Arc::new(options),
            version,
            watch: Arc::new(OnceLock::new()),
        }
    }

    /// The shared watch for claims of type `K`, made on first use.
    fn shared_watch<K: ClaimResource>(&self) -> Arc<SharedWatch<K>> {
        let watch = self.watch.get_or_init(|| {
            Arc::new(SharedWatch::<K>::new(
                self.api(),
                self.options.retry.clone(),
            ))
        });
        match watch.clone().downcast::<SharedWatch<K>>() {
            Ok(watch) => watch,
            // A Claims speaks one version, so the type is always the one made first.
            Err(_) => Arc::new(SharedWatch::new(self.api(), self.options.retry.clone())),
        }
    }

    /// Runs `wait` with the [`Source`] that [`ClaimOptions::watch`] asks for.
    async fn with_source<K: ClaimResource, T>(
        &self,
        api: &Api<K>,
        wait: impl AsyncFnOnce(&Source<'_, K>) -> T,
    ) -> T {
        match self.options.watch {
            WatchMode::PerClaim => wait(&Source::PerClaim(api)).await,
            WatchMode::Shared => {
                let shared = self.shared_watch::<K>();
                wait(&Source::Shared(&shared)).await
            }
        }
    }

    /// The API version in use.
    pub fn api_version(&self) -> ApiVersion {
        self.version
    }

    /// The options in use.
    pub fn options(&self) -> &ClaimOptions {
        &self.options
    }

    /// The client in use.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The claim name of a conversation.
    ///
    /// # Errors
    /// [`Error::Name`] when [`ClaimOptions::name_prefix`] is invalid.
    pub fn claim_name(&self, conversation_id: &str) -> Result<String, Error> {
        naming::claim_name(&self.options.name_prefix, conversation_id).map_err(Error::Name)
    }

    pub(crate) fn api<K: ClaimResource>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.options.namespace)
    }

    /// Creates the conversation's claim (or adopts our existing one) and waits until its
    /// sandbox is ready.
    ///
    /// # Guarantees
    /// - The claim always carries a lifecycle (`shutdownTime` = now + [`ClaimOptions::ttl`],
    ///   `shutdownPolicy: Delete`), so a crashed caller never leaks a sandbox for longer.
    /// - Only a claim that is ours (managed-by label) and of the same conversation
    ///   (annotation) is adopted; one that is being deleted is waited out, then recreated.
    /// - Readiness is observed by watching from the create response's resourceVersion, never
    ///   by polling; requests do not grow with the time to readiness. With
    ///   [`WatchMode::Shared`] (the default) one watch serves every claim this `Claims` and
    ///   its clones wait for, so open watches and requests per claim do not grow with the
    ///   number of conversations waiting at once either.
    /// - No leak on failure: when this call created the claim and the wait then fails
    ///   (deadline, terminal reason, missing pool/template, a watch that cannot resume), the
    ///   claim is deleted with its uid as a precondition, so a claim that another party
    ///   replaced meanwhile is never touched — unless [`ClaimOptions::keep_failed_claims`].
    ///   An adopted claim (one this call did not create) is left alone.
    /// - Cancel-safe: dropping the future leaves at most a claim of ours, which the next
    ///   call adopts (and its `shutdownTime` bounds).
    ///
    /// # Errors
    /// [`Error::Conflict`] for a foreign claim of the same name; [`Error::Wait`] with a
    /// [`wait::Error`] for terminal reasons, missing pool/template (unless
    /// [`ClaimOptions::keep_waiting_on_not_found`]), deletion, a lost watch or the deadline
    /// ([`ClaimOptions::ready_timeout`]; the message names the last `Ready` condition in
    /// words, e.g. `Ready=False: SandboxNotReady: …`, or `the controller reported no
    /// status`). [`Error::Wait`] carries a [`Cleanup`] ([`Error::cleanup`]) saying whether
    /// the claim was deleted, kept or left alone, or that deleting it failed; the wait
    /// failure stays the error and its [`source`](std::error::Error::source).
    /// [`Error::AwaitDeletion`] when an old claim of that name is still being deleted at the
    /// deadline; [`Error::Create`]/[`Error::Get`] for API errors that persist after the
    /// retries.
    ///
    /// # Caveats
    /// A claim whose create response was lost (the retried create finds it existing) counts
    /// as adopted and is not deleted on failure; its `shutdownTime` bounds it. `pod_name` is
    /// the sandbox name (what current upstream controllers use), not read from the Sandbox.
    pub async fn acquire(&self, conversation_id: &str) -> Result<SandboxHandle, Error> {
        self.acquire_with(conversation_id, &AcquireOptions::default())
            .await
            .map(|acquired| acquired.handle)
    }

    /// [`Claims::acquire`] with per-call options (annotations on a claim it creates), also
    /// saying how the sandbox was got ([`AcquirePath`]: warm, cold or adopted) and how long
    /// the claim took to become Ready.
    ///
    /// # Errors
    /// As [`Claims::acquire`].
    #[tracing::instrument(name = "acquire", skip(self, options), fields(namespace = %self.options.namespace, version = %self.version))]
    pub async fn acquire_with(
        &self,
        conversation_id: &str,
        options: &AcquireOptions,
    ) -> Result<Acquired, Error> {
        match self.version {
            ApiVersion::V1beta1 => {
                self.acquire_as::<v1beta1::SandboxClaim>(conversation_id, options)
                    .await
            }
            ApiVersion::V1alpha1 => {
                self.acquire_as::<v1alpha1::SandboxClaim>(conversation_id, options)
                    .await
            }
        }
    }

    /// Re-reads the conversation's existing claim and waits until it is ready again (the
    /// sandbox and pod IP may have changed since the last handle).
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no claim; [`Error::Conflict`] when it is not ours;
    /// [`Error::Wait`] as for [`Claims::acquire`].
    #[tracing::instrument(skip_all, fields(namespace = %self.options.namespace))]
    pub async fn resolve<C: ConversationRef + ?Sized>(
        &self,
        conversation: &C,
    ) -> Result<SandboxHandle, Error> {
        let id = conversation.conversation_id();
        match self.version {
            ApiVersion::V1beta1 => self.resolve_as::<v1beta1::SandboxClaim>(id).await,
            ApiVersion::V1alpha1 => self.resolve_as::<v1alpha1::SandboxClaim>(id).await,
        }
    }

    /// Pushes the claim's `shutdownTime` to now + [`ClaimOptions::ttl`] (one merge patch).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the claim is gone; [`Error::Renew`] on API errors.
    #[tracing::instrument(skip_all, fields(namespace = %self.options.namespace))]
    pub async fn renew<C: ConversationRef + ?Sized>(&self, conversation: &C) -> Result<(), Error> {
        let name = self.claim_name(conversation.conversation_id())?;
        match self.version {
            ApiVersion::V1beta1 => self.renew_as::<v1beta1::SandboxClaim>(&name).await,
            ApiVersion::V1alpha1 => self.renew_as::<v1alpha1::SandboxClaim>(&name).await,
        }
    }

    /// Deletes the conversation's claim; the sandbox goes with it.
    ///
    /// # Guarantees
    /// Idempotent: a missing claim is success. Only a claim of ours for this conversation
    /// is deleted (the delete carries the uid we checked as a precondition).
    ///
    /// # Errors
    /// [`Error::Conflict`] when the claim of that name is not ours; [`Error::Get`] /
    /// [`Error::Delete`] on API errors after retries.
    ///
    /// # Caveats
    /// Returns when the API server accepted the delete; with
    /// [`Propagation::Background`] the Sandbox and pod go shortly after.
    #[tracing::instrument(skip_all, fields(namespace = %self.options.namespace))]
    pub async fn release<C: ConversationRef + ?Sized>(
        &self,
        conversation: &C,
    ) -> Result<(), Error> {
        let id = conversation.conversation_id();
        match self.version {
            ApiVersion::V1beta1 => self.release_as::<v1beta1::SandboxClaim>(id).await,
            ApiVersion::V1alpha1 => self.release_as::<v1alpha1::SandboxClaim>(id).await,
        }
    }

    fn lifecycle(&self) -> Lifecycle {
        let ttl = i64::try_from(self.options.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let now = jiff::Timestamp::now().as_second();
        let shutdown =
            jiff::Timestamp::from_second(now.saturating_add(ttl)).unwrap_or(jiff::Timestamp::MAX);
        Lifecycle {
            shutdown_time: Some(Time(shutdown)),
            ttl_seconds_after_finished: None,
            shutdown_policy: Some(ShutdownPolicy::Delete),
        }
    }

    pub(crate) fn build<K: ClaimResource>(&self, name: &str, conversation_id: &str) -> K {
        let mut claim = K::build(
            name,
            &self.options.source,
            self.options.v1alpha1_warmpool.as_deref(),
            self.lifecycle(),
        );
        let meta = claim.meta_mut();
        meta.namespace = Some(self.options.namespace.clone());
        let labels = meta.labels.get_or_insert_with(Default::default);
        labels.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
        labels.insert(labels::SOURCE.into(), self.options.source.clone());
        labels.insert(
            labels::CONVERSATION_HASH.into(),
            naming::conversation_hash(conversation_id),
        );
        let annotations = meta.annotations.get_or_insert_with(Default::default);
        annotations.insert(labels::CONVERSATION_ID.into(), conversation_id.into());
        annotations.insert(
            labels::CLIENT_FIRST_REQUESTED_AT.into(),
            jiff::Timestamp::now().to_string(),
        );
        claim
    }

    /// Why an existing claim may not be adopted, or `None` when it may.
    pub(crate) fn foreign_reason<K: ClaimResource>(
        claim: &K,
        conversation_id: &str,
    ) -> Option<String> {
        if claim.labels().get(labels::MANAGED_BY).map(String::as_str)
            != Some(labels::MANAGED_BY_VALUE)
        {
            return Some(format!("is not managed by {}", labels::MANAGED_BY_VALUE));
        }
        if claim
            .annotations()
            .get(labels::CONVERSATION_ID)
            .map(String::as_str)
            != Some(conversation_id)
            || claim.labels().get(labels::CONVERSATION_HASH)
                != Some(&naming::conversation_hash(conversation_id))
        {
            return Some("belongs to another conversation".into());
        }
        None
    }

    fn handle(&self, name: &str, conversation_id: &str, ready: wait::Ready) -> SandboxHandle {
        SandboxHandle {
            namespace: self.options.namespace.clone(),
            claim_name: name.to_owned(),
            pod_name: ready.sandbox_name.clone(),
            sandbox_name: ready.sandbox_name,
            pod_ip: ready.pod_ip,
            api_version: self.version,
            conversation_id: conversation_id.to_owned(),
        }
    }

    async fn acquire_as<K: ClaimResource>(
        &self,
        conversation_id: &str,
        options: &AcquireOptions,
    ) -> Result<Acquired, Error> {
        let name = self.claim_name(conversation_id)?;
        let deadline = Instant::now() + self.options.ready_timeout;
        let api = self.api::<K>();
        let policy = &self.options.retry;
        let pp = PostParams {
            field_manager: Some(self.options.field_manager.clone()),
            ..Default::default()
        };
        loop {
            // Each pass is a create; passes repeat only when the old claim vanished or was
            // being deleted, so the deadline bounds them.
            if Instant::now() >= deadline {
                return Err(Error::Wait {
                    name: name.clone(),
                    source: Box::new(wait::Error::Vanishing {
                        claim: name,
                        after: self.options.ready_timeout,
                    }),
                    cleanup: Cleanup::LeftAlone,
                });
            }
            let mut desired: K = self.build(&name, conversation_id);
            let annotations = desired
                .meta_mut()
                .annotations
                .get_or_insert_with(Default::default);
            for (key, value) in &options.annotations {
                annotations
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
            let create_span =
                tracing::info_span!("create_claim", claim = %name, adopted = tracing::field::Empty);
            let created = retry(policy, "create claim", || api.create(&pp, &desired))
                .instrument(create_span.clone())
                .await;
            let (observed, created) = match created {
                Ok(claim) => {
                    tracing::info!(claim = %name, "created claim");
                    (claim, true)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    let Some(existing) = self.get_opt(&api, &name).await? else {
                        // Deleted between our create and get: try again.
                        continue;
                    };
                    if let Some(why) = Self::foreign_reason(&existing, conversation_id) {
                        return Err(Error::Conflict { name, why });
                    }
                    if existing.meta().deletion_timestamp.is_some() {
                        tracing::info!(claim = %name, "our claim is being deleted; waiting for it to go");
                        let rv = existing.resource_version().unwrap_or_default();
                        self.with_source(&api, async |source| {
                            wait_deleted(source, &name, existing.uid(), rv, deadline, policy).await
                        })
                        .await
                        .map_err(|source| Error::AwaitDeletion {
                            name: name.clone(),
                            source: Box::new(source),
                        })?;
                        continue;
                    }
                    tracing::info!(claim = %name, "adopting our existing claim");
                    let renewed = self
                        .renew_if_stale(&api, &name, &existing)
                        .instrument(create_span.clone())
                        .await?;
                    (renewed, false)
                }
                Err(source) => return Err(Error::Create { name, source }),
            };
            create_span.record("adopted", !created);
            drop(create_span);
            let wait_started = Instant::now();
            let keep_waiting = self.options.keep_waiting_on_not_found;
            let waited = self
                .with_source(&api, async |source| {
                    wait_ready(source, &observed, deadline, keep_waiting, policy).await
                })
                .await;
            let ready = match waited {
                Ok(ready) => ready,
                Err(source) => {
                    let cleanup = self
                        .clean_up_failed(&api, &name, &observed, created, &source)
                        .await;
                    return Err(Error::Wait {
                        name,
                        source: Box::new(source),
                        cleanup,
                    });
                }
            };
            tracing::info!(claim = %name, sandbox = %ready.sandbox_name, ip = %ready.pod_ip, "sandbox ready");
            let path = if created {
                AcquirePath::of_new_claim(&name, &ready.sandbox_name)
            } else {
                AcquirePath::Adopted
            };
            return Ok(Acquired {
                handle: self.handle(&name, conversation_id, ready),
                path,
                ready_wait: wait_started.elapsed(),
            });
        }
    }

    /// After a failed wait: deletes the claim this call created (uid precondition) unless
    /// [`ClaimOptions::keep_failed_claims`]; leaves an adopted one alone.
    async fn clean_up_failed<K: ClaimResource>(
        &self,
        api: &Api<K>,
        name: &str,
        observed: &K,
        created: bool,
        failure: &wait::Error,
    ) -> Cleanup {
        if !created {
            return Cleanup::LeftAlone;
        }
        if matches!(failure, wait::Error::Deleted { .. }) {
            return Cleanup::AlreadyDeleting;
        }
        if self.options.keep_failed_claims {
            tracing::info!(claim = %name, error = %failure, "keeping the failed claim");
            return Cleanup::Kept;
        }
        match self.delete_precondition(api, name, observed.uid()).await {
            Ok(()) => {
                tracing::info!(claim = %name, error = %failure, "deleted the claim that did not become ready");
                Cleanup::Deleted
            }
            Err(source) => {
                tracing::warn!(claim = %name, error = %source, "deleting the claim that did not become ready failed");
                Cleanup::DeleteFailed(Box::new(source))
            }
        }
    }

    /// On adoption, renews the lifecycle when less than half the TTL is left, so an adopted
    /// claim does not expire mid-use. Returns the latest observed claim.
    async fn renew_if_stale<K: ClaimResource>(
        &self,
        api: &Api<K>,
        name: &str,
        existing: &K,
    ) -> Result<K, Error> {
        let half = jiff::SignedDuration::try_from(self.options.ttl / 2)
            .unwrap_or(jiff::SignedDuration::MAX);
        let fresh = existing
            .lifecycle()
            .and_then(|l| l.shutdown_time.as_ref())
            .is_some_and(|t| {
                t.0 > jiff::Timestamp::now()
                    .saturating_add(half)
                    .unwrap_or(jiff::Timestamp::MAX)
            });
        if fresh {
            return Ok(existing.clone());
        }
        self.patch_lifecycle(api, name).await
    }

    async fn patch_lifecycle<K: ClaimResource>(
        &self,
        api: &Api<K>,
        name: &str,
    ) -> Result<K, Error> {
        let patch = Patch::Merge(serde_json::json!({ "spec": { "lifecycle": self.lifecycle() } }));
        let pp = PatchParams {
            field_manager: Some(self.options.field_manager.clone()),
            ..Default::default()
        };
        retry(&self.options.retry, "renew claim", || {
            api.patch(name, &pp, &patch)
        })
        .await
        .map_err(|source| match source {
            kube::Error::Api(s) if s.is_not_found() => Error::NotFound {
                name: name.to_owned(),
            },
            source => Error::Renew {
                name: name.to_owned(),
                source,
            },
        })
    }

    async fn get_opt<K: ClaimResource>(
        &self,
        api: &Api<K>,
        name: &str,
    ) -> Result<Option<K>, Error> {
        retry(&self.options.retry, "get claim", || api.get_opt(name))
            .await
            .map_err(|source| Error::Get {
                name: name.to_owned(),
                source,
            })
    }

    async fn resolve_as<K: ClaimResource>(
        &self,
        conversation_id: &str,
    ) -> Result<SandboxHandle, Error> {
        let name = self.claim_name(conversation_id)?;
        let deadline = Instant::now() + self.options.ready_timeout;
        let api = self.api::<K>();
        let existing = self
            .get_opt(&api, &name)
            .await?
            .ok_or_else(|| Error::NotFound { name: name.clone() })?;
        if let Some(why) = Self::foreign_reason(&existing, conversation_id) {
            return Err(Error::Conflict { name, why });
        }
        let keep_waiting = self.options.keep_waiting_on_not_found;
        let policy = &self.options.retry;
        let ready = self
            .with_source(&api, async |source| {
                wait_ready(source, &existing, deadline, keep_waiting, policy).await
            })
            .await
            .map_err(|source| Error::Wait {
                name: name.clone(),
                source: Box::new(source),
                cleanup: Cleanup::LeftAlone,
            })?;
        Ok(self.handle(&name, conversation_id, ready))
    }

    async fn renew_as<K: ClaimResource>(&self, name: &str) -> Result<(), Error> {
        self.patch_lifecycle::<K>(&self.api(), name).await.map(drop)
    }

    async fn release_as<K: ClaimResource>(&self, conversation_id: &str) -> Result<(), Error> {
        let name = self.claim_name(conversation_id)?;
        let api = self.api::<K>();
        let Some(existing) = self.get_opt(&api, &name).await? else {
            return Ok(());
        };
        if let Some(why) = Self::foreign_reason(&existing, conversation_id) {
            return Err(Error::Conflict { name, why });
        }
        self.delete_claim(&api, &name, existing.uid()).await
    }

    /// Deletes one claim by name with a uid precondition; 404 and a uid mismatch (the
    /// object is already gone and replaced) are success.
    pub(crate) async fn delete_claim<K: ClaimResource>(
        &self,
        api: &Api<K>,
        name: &str,
        uid: Option<String>,
    ) -> Result<(), Error> {
        self.delete_precondition(api, name, uid)
            .await
            .map_err(|source| Error::Delete {
                name: name.to_owned(),
                source,
            })
    }

    /// [`Claims::delete_claim`] with the bare API error.
    async fn delete_precondition<K: ClaimResource>(
        &self,
        api: &Api<K>,
        name: &str,
        uid: Option<String>,
    ) -> Result<(), kube::Error> {
        let dp = DeleteParams {
            propagation_policy: Some(match self.options.propagation {
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Foreground => PropagationPolicy::Foreground,
                Propagation::Orphan => PropagationPolicy::Orphan,
            }),
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match retry(&self.options.retry, "delete claim", || {
            api.delete(name, &dp)
        })
        .await
        {
            Ok(_) => {
                tracing::info!(claim = %name, "deleted claim");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            // A failed uid precondition means our object is gone already.
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(source) => Err(source),
        }
    }
}
