//! Bounded exponential backoff for transient Kubernetes API errors.
//!
//! Transient: HTTP 5xx, 429 (honouring the server's `retryAfterSeconds`, capped), and
//! transport failures (connection refused or reset). Everything else (4xx, decode errors)
//! surfaces at once. Note that the default kube client already retries 429/503/504 on its
//! own (also honouring `Retry-After`); this layer adds 500/502 and transport errors and
//! bounds the total. The delays come from [`backon`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retries).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled after each.
    pub initial_backoff: Duration,
    /// Upper bound of one delay.
    pub max_backoff: Duration,
    /// Upper bound of a server-requested `Retry-After`.
    pub max_retry_after: Duration,
    /// Told of every retry (before its delay), e.g. to count retries by kind in a metric.
    pub observer: Option<RetryObserver>,
}

/// What kind of transient API error caused a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// HTTP 429: the API server asked us to slow down.
    Throttled,
    /// HTTP 5xx.
    ServerError,
    /// The request did not get an answer (connection refused or reset, TLS, timeout).
    Transport,
}

impl ApiErrorKind {
    /// A short lower-case name (`throttled`, `server_error`, `transport`), e.g. for a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::ServerError => "server_error",
            Self::Transport => "transport",
        }
    }
}

/// One retry, as a [`RetryObserver`] is told of it.
#[derive(Clone, Copy, Debug)]
pub struct RetryEvent {
    /// The operation retried (`create claim`, `get claim`, `watch claim`, …).
    pub operation: &'static str,
    /// Attempts made so far (1 = the first one failed).
    pub attempt: u32,
    /// What kind of error it was.
    pub kind: ApiErrorKind,
    /// The delay before the next attempt.
    pub delay: Duration,
}

/// A callback told of every retry. Cheap to clone; two observers are equal when they are
/// the same callback.
#[derive(Clone)]
pub struct RetryObserver(Arc<dyn Fn(&RetryEvent) + Send + Sync>);

impl RetryObserver {
    /// An observer calling `on_retry`.
    pub fn new(on_retry: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(on_retry))
    }

    /// Tells the observer of one retry.
    pub fn notify(&self, event: &RetryEvent) {
        (self.0)(event);
    }
}

impl std::fmt::Debug for RetryObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryObserver")
    }
}

impl PartialEq for RetryObserver {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RetryObserver {}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            // 5 attempts at 100 ms doubling is ~1.5 s of backoff in total: enough to ride
            // out an API server restart blip, short enough to not hide an outage.
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            // Nobody listens unless a caller (the backend's metrics) asks.
            observer: None,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Delay before retry number `retry` (0-based), or the server's hint when it gave one.
    pub fn delay(&self, retry: u32, server_hint: Option<Duration>) -> Duration {
        if let Some(hint) = server_hint {
            return hint.min(self.max_retry_after);
        }
        let factor = 2u32.saturating_pow(retry.min(16));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// The kind of a transient error; `None` for errors that are not retried.
pub fn transient_kind(err: &kube::Error) -> Option<ApiErrorKind> {
    match err {
        kube::Error::Api(status) if status.code == 429 => Some(ApiErrorKind::Throttled),
        kube::Error::Api(status) if (500..600).contains(&status.code) => {
            Some(ApiErrorKind::ServerError)
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => Some(ApiErrorKind::Transport),
        _ => None,
    }
}

/// Whether an error is worth retrying ([`transient_kind`]); `Some(hint)` carries the
/// server's `Retry-After`.
pub fn transient(err: &kube::Error) -> Option<Option<Duration>> {
    transient_kind(err)?;
    let hint = match err {
        kube::Error::Api(status) => status
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(u64::from(s))),
        _ => None,
    };
    Some(hint)
}

/// Runs `op` until it succeeds, fails with a non-transient error, or runs out of attempts
/// (backoff by [`backon`]: the policy's exponential delays, or the server's `Retry-After`
/// when it sent one, capped by [`RetryPolicy::max_retry_after`]).
pub(crate) async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    what: &'static str,
    op: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    use backon::Retryable as _;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(2.0)
        .with_max_times(policy.max_attempts.saturating_sub(1) as usize);
    let max_retry_after = policy.max_retry_after;
    // Failed attempts so far, for the observer (backon counts them but does not say).
    let attempts = AtomicU32::new(0);
    op.retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|err| transient(err).is_some())
        // `None` means the attempts are used up; a server hint replaces our own delay.
        .adjust(move |err, planned| {
            planned.map(|own| match transient(err) {
                Some(Some(hint)) => hint.min(max_retry_after),
                _ => own,
            })
        })
        .notify(|err, delay| {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if let (Some(observer), Some(kind)) = (&policy.observer, transient_kind(err)) {
                observer.notify(&RetryEvent {
                    operation: what,
                    attempt,
                    kind,
                    delay,
                });
            }
            tracing::debug!(what, attempt, ?delay, error = %err, "transient API error, retrying");
        })
        .await
        .inspect_err(|err| {
            if transient(err).is_some() {
                tracing::warn!(what, error = %err, "giving up after transient errors");
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("x", "y").with_code(code)))
    }

    #[test]
    fn classifies_status_codes() {
        assert!(transient(&api(500)).is_some());
        assert!(transient(&api(503)).is_some());
        assert!(transient(&api(429)).is_some());
        assert!(transient(&api(404)).is_none());
        assert!(transient(&api(409)).is_none());
        assert!(transient(&api(422)).is_none());
    }

    #[test]
    fn backoff_doubles_and_is_capped_and_honours_hints() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, None), Duration::from_millis(100));
        assert_eq!(p.delay(1, None), Duration::from_millis(200));
        assert_eq!(p.delay(20, None), Duration::from_secs(5));
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(600))),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_gives_up() {
        let mut calls = 0;
        let p = RetryPolicy::default();
        let r: Result<(), _> = retry(&p, "test", || {
            calls += 1;
            async { Err(api(500)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 5);

        let mut calls = 0;
        let r: Result<(), _> = retry(&p, "test", || {
            calls += 1;
            async { Err(api(404)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    fn throttled(retry_after: u32) -> kube::Error {
        let mut status = Status::failure("slow down", "TooManyRequests").with_code(429);
        status.details =
            serde_json::from_value(serde_json::json!({ "retryAfterSeconds": retry_after })).ok();
        kube::Error::Api(Box::new(status))
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_as_long_as_the_server_says_then_succeeds() {
        let p = RetryPolicy::default();
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let r = retry(&p, "test", || {
            calls += 1;
            let first = calls == 1;
            async move { if first { Err(throttled(3)) } else { Ok(()) } }
        })
        .await;
        assert!(r.is_ok());
        assert_eq!(calls, 2);
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_transport_failure_is_transient() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(transient(&kube::Error::Service(Box::new(reset))).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_is_told_of_each_retry_and_its_kind() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let p = RetryPolicy {
            observer: Some(RetryObserver::new(move |event| {
                record
                    .lock()
                    .unwrap()
                    .push((event.operation, event.attempt, event.kind));
            })),
            ..RetryPolicy::default()
        };
        let mut calls = 0;
        let r: Result<(), _> = retry(&p, "create claim", || {
            calls += 1;
            let code = if calls == 1 { 429 } else { 503 };
            async move {
                if code == 503 && calls > 2 {
                    Ok(())
                } else {
                    Err(api(code))
                }
            }
        })
        .await;
        assert!(r.is_ok());
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("create claim", 1, ApiErrorKind::Throttled),
                ("create claim", 2, ApiErrorKind::ServerError)
            ]
        );
    }
}
