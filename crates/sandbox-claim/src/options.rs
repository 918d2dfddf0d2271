//! Configuration of [`crate::Claims`].

use crate::api_version::VersionSelection;
use crate::retry::RetryPolicy;
use std::collections::BTreeMap;
use std::time::Duration;

/// Per-call options of [`crate::Claims::acquire_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcquireOptions {
    /// Extra annotations on a claim this call creates (an adopted claim is not changed), e.g.
    /// `opentelemetry.io/trace-context`. Our own annotations win over these.
    pub annotations: BTreeMap<String, String>,
}

impl AcquireOptions {
    /// Adds one annotation for a claim this call creates.
    #[must_use]
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }
}

/// How a released claim's dependents are deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the claim now; the garbage collector removes the Sandbox afterwards.
    #[default]
    Background,
    /// The claim stays (with a deletion timestamp) until the Sandbox and pod are gone.
    Foreground,
    /// Leave the Sandbox behind (rarely what you want).
    Orphan,
}

/// How [`crate::Claims`] learns that a claim became ready (or went away).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchMode {
    /// One watch on the namespace's claims of this crate, shared by every claim the
    /// [`crate::Claims`] (and its clones) waits for: open watches and requests per claim stay
    /// constant however many conversations wait at once.
    #[default]
    Shared,
    /// One watch per waiting claim (`fieldSelector=metadata.name=…`): simpler, but a
    /// thousand waiting conversations hold a thousand watch connections.
    PerClaim,
}

/// Options of [`crate::Claims`]. Build with [`ClaimOptions::default`] plus the setters.
#[derive(Clone, Debug)]
pub struct ClaimOptions {
    /// Namespace of the claims.
    pub namespace: String,
    /// The warm pool (v1beta1 `spec.warmPoolRef.name`) or, on v1alpha1 clusters, the
    /// template (`spec.sandboxTemplateRef.name`) claims are made from.
    pub source: String,
    /// v1alpha1 only: `spec.warmpool` (`none`, `default` or a pool name). `None` omits it.
    pub v1alpha1_warmpool: Option<String>,
    /// First part of every claim name (see [`crate::naming::claim_name`]).
    pub name_prefix: String,
    /// Lifetime of a claim from its creation or last renewal.
    pub ttl: Duration,
    /// How long [`crate::Claims::acquire`] and [`crate::Claims::resolve`] wait for `Ready`.
    pub ready_timeout: Duration,
    /// Propagation policy of [`crate::Claims::release`].
    pub propagation: Propagation,
    /// Keep waiting on `WarmPoolNotFound` / `TemplateNotFound` (the controller retries
    /// them) instead of failing at once.
    pub keep_waiting_on_not_found: bool,
    /// Keep a claim that [`crate::Claims::acquire`] created when it then fails (deadline,
    /// terminal reason, lost watch), e.g. to inspect it; by default it is deleted. Claims
    /// that acquire adopted are never deleted by it.
    pub keep_failed_claims: bool,
    /// Which API version to speak.
    pub api_version: VersionSelection,
    /// `fieldManager` of every write.
    pub field_manager: String,
    /// Retries of transient API errors.
    pub retry: RetryPolicy,
    /// How readiness is watched.
    pub watch: WatchMode,
}

impl Default for ClaimOptions {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            // The pool name of the quickstart examples; almost always overridden.
            source: "default".into(),
            v1alpha1_warmpool: None,
            name_prefix: "conv".into(),
            // Long enough for a conversation with pauses; short enough that a crashed
            // controller does not hold a sandbox for days. Renew on each use.
            ttl: Duration::from_secs(60 * 60),
            // Cold starts pull images; two minutes covers a typical gVisor cold start.
            ready_timeout: Duration::from_secs(120),
            propagation: Propagation::Background,
            // The Python SDK fails fast on these; so do we by default.
            keep_waiting_on_not_found: false,
            // A failed acquire gives back what it made: the caller gets an error, not a
            // sandbox, and should not have to release what it never received.
            keep_failed_claims: false,
            api_version: VersionSelection::Auto,
            field_manager: "sandbox-claim".into(),
            retry: RetryPolicy::default(),
            // One watch for every waiting claim: what scales to many conversations.
            watch: WatchMode::Shared,
        }
    }
}

impl ClaimOptions {
    /// Sets [`ClaimOptions::namespace`].
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets [`ClaimOptions::source`] (warm pool on v1beta1, template on v1alpha1).
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets [`ClaimOptions::v1alpha1_warmpool`].
    #[must_use]
    pub fn v1alpha1_warmpool(mut self, warmpool: impl Into<String>) -> Self {
        self.v1alpha1_warmpool = Some(warmpool.into());
        self
    }

    /// Sets [`ClaimOptions::name_prefix`].
    #[must_use]
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// Sets [`ClaimOptions::ttl`].
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets [`ClaimOptions::ready_timeout`].
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Sets [`ClaimOptions::propagation`].
    #[must_use]
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Sets [`ClaimOptions::keep_waiting_on_not_found`].
    #[must_use]
    pub fn keep_waiting_on_not_found(mut self, keep: bool) -> Self {
        self.keep_waiting_on_not_found = keep;
        self
    }

    /// Sets [`ClaimOptions::keep_failed_claims`].
    #[must_use]
    pub fn keep_failed_claims(mut self, keep: bool) -> Self {
        self.keep_failed_claims = keep;
        self
    }

    /// Sets [`ClaimOptions::api_version`].
    #[must_use]
    pub fn api_version(mut self, selection: VersionSelection) -> Self {
        self.api_version = selection;
        self
    }

    /// Sets [`ClaimOptions::field_manager`].
    #[must_use]
    pub fn field_manager(mut self, manager: impl Into<String>) -> Self {
        self.field_manager = manager.into();
        self
    }

    /// Sets [`ClaimOptions::retry`].
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets [`ClaimOptions::watch`].
    #[must_use]
    pub fn watch(mut self, mode: WatchMode) -> Self {
        self.watch = mode;
        self
    }
}
