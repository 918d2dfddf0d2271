//! Fault injection: make chosen requests fail, stall or break.
//!
//! A [`Fault`] pairs a [`FaultMatch`] (which requests) with a [`FaultAction`] (what happens).
//! Faults are checked in the order they were injected; every matching `Latency` is applied, then
//! the first matching non-latency action wins.
//!
//! Every kind applies to every verb (discovery included) except two that only make sense for
//! some: [`FaultAction::DropWatch`] fires on watches only, and
//! [`FaultAction::ExpireResourceVersion`] on lists and watches that name a resourceVersion.
//!
//! [`FaultAction::Random`] is the chaos mode: each matching request draws from a seeded RNG
//! and, with the given probability, suffers one of the chosen kinds (among those that apply to
//! it). The same seed and the same request sequence give the same faults.
//! [`FakeApiServer::faults_fired`](crate::FakeApiServer::faults_fired) counts what fired, by
//! [`FaultKind`].
//!
//! ```
//! use std::time::Duration;
//! use fake_apiserver::{Fault, Verb};
//!
//! // The first two creates of sandboxclaims answer 503; the third succeeds.
//! let flaky = Fault::status(503, "ServiceUnavailable").verb(Verb::Create).resource("sandboxclaims").times(2);
//! // Every request is slowed down by 50 ms.
//! let slow = Fault::latency(Duration::from_millis(50));
//! // One request in ten, on any verb, fails in one of every way (seeded, so reproducible).
//! let chaos = Fault::random(RandomFaults::every_kind(7, 0.1));
//! # let _ = (flaky, slow, chaos);
//! # use fake_apiserver::RandomFaults;
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

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
#[derive(Debug, Clone, PartialEq)]
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
    /// With a probability per request, one of several actions, drawn from a seeded RNG.
    Random(RandomFaults),
}

impl FaultAction {
    /// What kind of fault this is, for [`FaultCounts`]; `None` for [`FaultAction::Random`]
    /// (what fires is one of its actions).
    pub fn kind(&self) -> Option<FaultKind> {
        Some(match self {
            Self::Status { code, .. } => FaultKind::Status(*code),
            Self::Latency(_) => FaultKind::Latency,
            Self::DropWatch { .. } => FaultKind::DropWatch,
            Self::ExpireResourceVersion => FaultKind::Expired,
            Self::ResetConnection => FaultKind::ResetConnection,
            Self::Random(_) => return None,
        })
    }

    /// Whether this action can happen to `req` at all.
    fn applies_to(&self, req: &RequestFacts<'_>) -> bool {
        match self {
            Self::DropWatch { .. } => req.verb == Verb::Watch,
            Self::ExpireResourceVersion => {
                matches!(req.verb, Verb::List | Verb::Watch) && req.has_resource_version
            }
            _ => true,
        }
    }
}

/// The chaos mode of [`FaultAction::Random`]: every matching request fires one of `actions`
/// (chosen uniformly among those that apply to it) with `probability`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    /// Seed of the RNG (one RNG per injected fault, drawn once per matching request).
    pub seed: u64,
    /// Chance that a matching request suffers a fault, `0.0..=1.0`.
    pub probability: f64,
    /// The kinds to choose from (nested [`FaultAction::Random`]s are ignored).
    pub actions: Vec<FaultAction>,
}

impl RandomFaults {
    /// Every kind: 500, 503, 429 with `Retry-After: 1`, a connection reset, 200 ms of latency,
    /// a watch dropped after one event, and 410 Expired on lists and watches from a
    /// resourceVersion.
    pub fn every_kind(seed: u64, probability: f64) -> Self {
        Self {
            seed,
            probability,
            actions: vec![
                FaultAction::Status {
                    code: 500,
                    reason: "InternalError".to_owned(),
                    retry_after_secs: None,
                },
                FaultAction::Status {
                    code: 503,
                    reason: "ServiceUnavailable".to_owned(),
                    retry_after_secs: None,
                },
                FaultAction::Status {
                    code: 429,
                    reason: "TooManyRequests".to_owned(),
                    retry_after_secs: Some(1),
                },
                FaultAction::ResetConnection,
                FaultAction::Latency(Duration::from_millis(200)),
                FaultAction::DropWatch { after_events: 1 },
                FaultAction::ExpireResourceVersion,
            ],
        }
    }
}

/// A kind of fault, as [`FaultCounts`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A `Status` error with this HTTP code (500, 503, 429, …).
    Status(u16),
    /// A delay before the request was handled.
    Latency,
    /// The connection was closed without an answer.
    ResetConnection,
    /// A watch was cut off.
    DropWatch,
    /// A list or watch was answered 410 Expired.
    Expired,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(code) => write!(f, "status {code}"),
            Self::Latency => f.write_str("latency"),
            Self::ResetConnection => f.write_str("connection reset"),
            Self::DropWatch => f.write_str("dropped watch"),
            Self::Expired => f.write_str("410 expired"),
        }
    }
}

/// How many faults fired, by kind (injected and random ones alike).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    counts: BTreeMap<FaultKind, u64>,
}

impl FaultCounts {
    /// Faults of this kind that fired.
    pub fn count(&self, kind: FaultKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// All faults that fired.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Every `(kind, count)` that fired at least once, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (FaultKind, u64)> + '_ {
        self.counts.iter().map(|(k, n)| (*k, *n))
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (kind, n) in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{kind}: {n}")?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A fault to [`inject`](crate::FakeApiServer::inject).
#[derive(Debug, Clone, PartialEq)]
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

    /// The chaos mode: matching requests fail at random ([`RandomFaults`]).
    pub fn random(random: RandomFaults) -> Self {
        Self::new(FaultAction::Random(random))
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
        let applicable = action.applies_to(req);
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
    /// The RNG of a [`FaultAction::Random`].
    rng: Option<StdRng>,
}

/// The injected faults.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    next_id: u64,
    entries: Vec<Entry>,
    counts: FaultCounts,
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
        let rng = match &fault.action {
            FaultAction::Random(r) => Some(StdRng::seed_from_u64(r.seed)),
            _ => None,
        };
        self.entries.push(Entry {
            id,
            fault,
            seen: 0,
            fired: 0,
            rng,
        });
        id
    }

    /// What fired so far.
    pub(crate) fn counts(&self) -> FaultCounts {
        self.counts.clone()
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
            let action = match (&entry.fault.action, entry.rng.as_mut()) {
                (FaultAction::Random(random), Some(rng)) => {
                    match draw(random, rng, req, decision.action.is_some()) {
                        Some(action) => action,
                        None => continue,
                    }
                }
                (action, _) => action.clone(),
            };
            entry.fired += 1;
            if let Some(kind) = action.kind() {
                *self.counts.counts.entry(kind).or_default() += 1;
            }
            match action {
                FaultAction::Latency(d) => decision.latency += d,
                other => decision.action = Some(other),
            }
        }
        decision
    }
}

/// One draw of a random fault for `req`: `None` when it does not fire, or fires nothing that
/// applies (only latency, when another fault already decided the answer).
fn draw(
    random: &RandomFaults,
    rng: &mut StdRng,
    req: &RequestFacts<'_>,
    decided: bool,
) -> Option<FaultAction> {
    if !rng.random_bool(random.probability.clamp(0.0, 1.0)) {
        return None;
    }
    let candidates: Vec<&FaultAction> = random
        .actions
        .iter()
        .filter(|a| !matches!(a, FaultAction::Random(_)) && a.applies_to(req))
        .filter(|a| !decided || matches!(a, FaultAction::Latency(_)))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[rng.random_range(0..candidates.len())].clone())
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

    fn watch_from(rv: bool) -> RequestFacts<'static> {
        RequestFacts {
            verb: Verb::Watch,
            has_resource_version: rv,
            ..create()
        }
    }

    #[test]
    fn random_faults_fire_at_about_their_probability_and_are_counted_by_kind() {
        let mut faults = Faults::default();
        faults.inject(Fault::random(RandomFaults::every_kind(42, 0.25)));
        let mut fired = 0;
        for _ in 0..4000 {
            let d = faults.decide(&watch_from(true));
            if d.action.is_some() || !d.latency.is_zero() {
                fired += 1;
            }
        }
        assert!((800..1200).contains(&fired), "{fired} of 4000 at p=0.25");
        let counts = faults.counts();
        assert_eq!(counts.total(), fired);
        for kind in [
            FaultKind::Status(500),
            FaultKind::Status(503),
            FaultKind::Status(429),
            FaultKind::ResetConnection,
            FaultKind::Latency,
            FaultKind::DropWatch,
            FaultKind::Expired,
        ] {
            assert!(
                counts.count(kind) > 50,
                "{kind} fired {}",
                counts.count(kind)
            );
        }
    }

    #[test]
    fn random_faults_choose_only_kinds_that_apply_to_the_request() {
        let mut faults = Faults::default();
        faults.inject(Fault::random(RandomFaults::every_kind(1, 1.0)));
        for _ in 0..500 {
            faults.decide(&create());
        }
        let counts = faults.counts();
        assert_eq!(counts.total(), 500, "p=1 fires on every request");
        assert_eq!(
            counts.count(FaultKind::DropWatch),
            0,
            "a create is no watch"
        );
        assert_eq!(
            counts.count(FaultKind::Expired),
            0,
            "a create names no resourceVersion"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let run = || {
            let mut faults = Faults::default();
            faults.inject(Fault::random(RandomFaults::every_kind(9, 0.5)));
            (0..200)
                .map(|_| {
                    faults
                        .decide(&watch_from(true))
                        .action
                        .and_then(|a| a.kind())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
