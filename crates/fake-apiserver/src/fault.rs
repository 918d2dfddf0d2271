//! Fault injection: make chosen requests fail, stall or break.
//!
//! A [`Fault`] pairs a [`FaultMatch`] (which requests) with a [`FaultAction`] (what happens).
//! Faults are checked in the order they were injected; every matching `Latency` is applied, then
//! the first matching non-latency action wins.
//!
//! ```
//! use std::time::Duration;
//! use fake_apiserver::{Fault, Verb};
//!
//! // The first two creates of sandboxclaims answer 503; the third succeeds.
//! let flaky = Fault::status(503, "ServiceUnavailable").verb(Verb::Create).resource("sandboxclaims").times(2);
//! // Every request is slowed down by 50 ms.
//! let slow = Fault::latency(Duration::from_millis(50));
//! # let _ = (flaky, slow);
//! ```

use std::time::Duration;

use crate::requests::Verb;

/// Which requests a fault applies to; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultMatch {
    /// Only this verb.
    pub verb: Option<Verb>,
    /// Only this resource plural (`"sandboxclaims"`) or subresource (`"sandboxclaims/status"`).
    /// A plural also matches its status subresource.
    pub resource: Option<String>,
    /// Only requests naming this object.
    pub name: Option<String>,
    /// Fire this many times, then stop; `None` fires forever.
    pub times: Option<u32>,
    /// Let this many matching requests through before firing.
    pub skip: u32,
}

/// What happens to a matched request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with a `Status` error, e.g. 500, 503, or 429 with `Retry-After`.
    Status {
        /// HTTP status code.
        code: u16,
        /// `Status.reason`, e.g. `"TooManyRequests"`.
        reason: String,
        /// Sent as the `Retry-After` header and `details.retryAfterSeconds`.
        retry_after_secs: Option<u64>,
    },
    /// Wait, then handle the request normally.
    Latency(Duration),
    /// For watches: abort the connection after sending this many events.
    DropWatch {
        /// Events delivered before the connection is dropped.
        after_events: usize,
    },
    /// For a list or watch that names a resourceVersion: answer 410 Expired, as when the
    /// server's history has been compacted. Watches get an `ERROR` event, lists a 410 response.
    ExpireResourceVersion,
    /// Close the TCP connection without answering.
    ResetConnection,
}

/// A fault to [`inject`](crate::FakeApiServer::inject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Which requests.
    pub matcher: FaultMatch,
    /// What happens to them.
    pub action: FaultAction,
}

/// Identifies an injected fault, for [`FakeApiServer::remove_fault`](crate::FakeApiServer::remove_fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultId(pub(crate) u64);

impl Fault {
    /// A fault with this action matching every request.
    pub fn new(action: FaultAction) -> Self {
        Self {
            matcher: FaultMatch::default(),
            action,
        }
    }

    /// Answer with `code` and `reason`.
    pub fn status(code: u16, reason: &str) -> Self {
        Self::new(FaultAction::Status {
            code,
            reason: reason.to_owned(),
            retry_after_secs: None,
        })
    }

    /// Answer 429 TooManyRequests with `Retry-After: secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(FaultAction::Status {
            code: 429,
            reason: "TooManyRequests".to_owned(),
            retry_after_secs: Some(retry_after_secs),
        })
    }

    /// Delay matching requests.
    pub fn latency(delay: Duration) -> Self {
        Self::new(FaultAction::Latency(delay))
    }

    /// Drop watch connections after `after_events` events (matches only watches).
    pub fn drop_watch(after_events: usize) -> Self {
        Self::new(FaultAction::DropWatch { after_events }).verb(Verb::Watch)
    }

    /// Answer lists and watches from a resourceVersion with 410 Expired.
    pub fn expire_resource_version() -> Self {
        Self::new(FaultAction::ExpireResourceVersion)
    }

    /// Close connections without an answer.
    pub fn reset_connection() -> Self {
        Self::new(FaultAction::ResetConnection)
    }

    /// Only requests with this verb.
    #[must_use]
    pub fn verb(mut self, verb: Verb) -> Self {
        self.matcher.verb = Some(verb);
        self
    }

    /// Only requests on this plural (or `"plural/status"`).
    #[must_use]
    pub fn resource(mut self, plural: &str) -> Self {
        self.matcher.resource = Some(plural.to_owned());
        self
    }

    /// Only requests naming this object.
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.matcher.name = Some(name.to_owned());
        self
    }

    /// Fire at most `times` times.
    #[must_use]
    pub fn times(mut self, times: u32) -> Self {
        self.matcher.times = Some(times);
        self
    }

    /// Let the first `skip` matching requests through.
    #[must_use]
    pub fn skip(mut self, skip: u32) -> Self {
        self.matcher.skip = skip;
        self
    }

    /// Sets `Retry-After` on a `Status` fault; no effect on other actions.
    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Self {
        if let FaultAction::Status {
            retry_after_secs, ..
        } = &mut self.action
        {
            *retry_after_secs = Some(secs);
        }
        self
    }
}

/// What a request is, for matching.
#[derive(Debug)]
pub(crate) struct RequestFacts<'a> {
    pub(crate) verb: Verb,
    pub(crate) resource: &'a str,
    pub(crate) subresource: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
    /// Lists and watches that name a non-zero resourceVersion.
    pub(crate) has_resource_version: bool,
}

impl FaultMatch {
    fn matches(&self, req: &RequestFacts<'_>, action: &FaultAction) -> bool {
        let applicable = match action {
            FaultAction::DropWatch { .. } => req.verb == Verb::Watch,
            FaultAction::ExpireResourceVersion => {
                matches!(req.verb, Verb::List | Verb::Watch) && req.has_resource_version
            }
            _ => true,
        };
        let resource_ok = self.resource.as_deref().is_none_or(|r| {
            r == req.resource
                || req
                    .subresource
                    .is_some_and(|s| r.split_once('/') == Some((req.resource, s)))
        });
        applicable
            && resource_ok
            && self.verb.is_none_or(|v| v == req.verb)
            && self.name.as_deref().is_none_or(|n| Some(n) == req.name)
    }
}

#[derive(Debug)]
struct Entry {
    id: FaultId,
    fault: Fault,
    seen: u32,
    fired: u32,
}

/// The injected faults.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    next_id: u64,
    entries: Vec<Entry>,
}

/// The faults that fire for one request.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub(crate) latency: Duration,
    pub(crate) action: Option<FaultAction>,
}

impl Faults {
    pub(crate) fn inject(&mut self, fault: Fault) -> FaultId {
        self.next_id += 1;
        let id = FaultId(self.next_id);
        self.entries.push(Entry {
            id,
            fault,
            seen: 0,
            fired: 0,
        });
        id
    }

    pub(crate) fn remove(&mut self, id: FaultId) {
        self.entries.retain(|e| e.id != id);
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Decides which faults fire for a request, consuming their budgets.
    pub(crate) fn decide(&mut self, req: &RequestFacts<'_>) -> Decision {
        let mut decision = Decision::default();
        for entry in &mut self.entries {
            let is_latency = matches!(entry.fault.action, FaultAction::Latency(_));
            if (!is_latency && decision.action.is_some())
                || !entry.fault.matcher.matches(req, &entry.fault.action)
            {
                continue;
            }
            entry.seen += 1;
            if entry.seen <= entry.fault.matcher.skip
                || entry.fault.matcher.times.is_some_and(|t| entry.fired >= t)
            {
                continue;
            }
            entry.fired += 1;
            match &entry.fault.action {
                FaultAction::Latency(d) => decision.latency += *d,
                other => decision.action = Some(other.clone()),
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> RequestFacts<'static> {
        RequestFacts {
            verb: Verb::Create,
            resource: "things",
            subresource: None,
            name: None,
            has_resource_version: false,
        }
    }

    #[test]
    fn skip_and_times_bound_when_a_fault_fires() {
        let mut faults = Faults::default();
        faults.inject(Fault::status(503, "ServiceUnavailable").skip(1).times(2));
        let fired: Vec<bool> = (0..5)
            .map(|_| faults.decide(&create()).action.is_some())
            .collect();
        assert_eq!(fired, [false, true, true, false, false]);
    }

    #[test]
    fn a_plural_matcher_covers_its_status_subresource() {
        let mut faults = Faults::default();
        faults.inject(Fault::status(500, "InternalError").resource("things"));
        let req = RequestFacts {
            subresource: Some("status"),
            ..create()
        };
        assert!(faults.decide(&req).action.is_some());
        let other = RequestFacts {
            resource: "others",
            ..create()
        };
        assert!(faults.decide(&other).action.is_none());
    }
}
