//! What every protocol shares once a call arrives: auth, admission (drain and
//! the execution limit), the caller's `grpc-timeout`, and starting the agent
//! under cancellation.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use subtle::ConstantTimeEq;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::{Status, metadata::MetadataMap};
use tracing::Instrument;

use super::ServerOptions;
use crate::agent::{Agent, Execution, OutputStream};

/// State shared by the services, the health control and the serve loop.
pub(super) struct Shared {
    pub(super) serving: AtomicBool,
    /// Fired when shutdown starts: new calls are refused from then on.
    pub(super) draining: CancellationToken,
    /// Parent of every execution's token: cancelled when the grace period ends.
    pub(super) executions: CancellationToken,
    permits: Arc<Semaphore>,
    bearer: Option<Vec<u8>>,
}

impl Shared {
    pub(super) fn new(options: &ServerOptions) -> Self {
        Self {
            serving: AtomicBool::new(false),
            draining: CancellationToken::new(),
            executions: CancellationToken::new(),
            permits: Arc::new(Semaphore::new(options.max_concurrent_executions)),
            bearer: options.bearer_token.as_ref().map(|t| t.as_bytes().to_vec()),
        }
    }

    pub(super) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Checks `authorization: Bearer <token>` when the server requires one.
    pub(super) fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.bearer else {
            return Ok(());
        };
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated("bearer token does not match"))
        }
    }

    /// Lets one execution in, or says why not: the server is draining
    /// (`UNAVAILABLE`) or at its execution limit (`RESOURCE_EXHAUSTED`).
    pub(super) fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        if self.draining.is_cancelled() {
            return Err(Status::unavailable("agent server is shutting down"));
        }
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("agent is at its execution limit; retry later"))
    }
}

/// What one admitted execution holds until its stream ends.
pub(super) struct Run {
    pub(super) cancelled: CancellationToken,
    pub(super) deadline: Option<Instant>,
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) span: tracing::Span,
}

/// Runs [`Agent::execute`] until it hands back its outputs, ending early when
/// the caller's deadline passes or the server cancels executions.
///
/// Dropping the returned future (the client went away, or sent `cancel`)
/// cancels the execution's token, so an agent mid-start learns of it.
pub(super) async fn start<A: Agent>(
    agent: Arc<A>,
    execution: Execution,
    span: &tracing::Span,
) -> Result<OutputStream, Status> {
    let cancelled = execution.cancelled.clone();
    let deadline = execution.deadline;
    let execute = async move { agent.execute(execution).await }.instrument(span.clone());
    let guard = cancelled.clone().drop_guard();
    let result = tokio::select! {
        result = execute => result.map_err(Status::from),
        () = sleep_until(deadline) => Err(Status::deadline_exceeded("the call's deadline passed before the agent started")),
        () = cancelled.cancelled() => Err(Status::unavailable("agent server is shutting down")),
    };
    guard.disarm();
    if let Err(status) = &result {
        cancelled.cancel();
        tracing::info!(parent: span, code = ?status.code(), "execution refused");
    }
    result
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The caller's deadline, from its `grpc-timeout` header.
pub(super) fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    grpc_timeout(metadata).map(|d| Instant::now() + d)
}

/// Parses the `grpc-timeout` header (`<digits><unit>`, unit one of `HMSmun`).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        metadata
    }

    #[test]
    fn grpc_timeout_understands_every_unit() {
        assert_eq!(
            grpc_timeout(&with_timeout("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("3M")),
            Some(Duration::from_secs(180))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("5S")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("7u")),
            Some(Duration::from_micros(7))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("9n")),
            Some(Duration::from_nanos(9))
        );
    }

    #[test]
    fn grpc_timeout_ignores_malformed_values() {
        for bad in ["", "S", "10", "10x", "-5S", "1234567890S"] {
            assert_eq!(grpc_timeout(&with_timeout(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }
}
