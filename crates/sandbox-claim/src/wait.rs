//! Waiting for one claim until it is ready (or fails, or goes away) — never polling.
//!
//! By default the [`Claims`](crate::Claims)' shared watch reports the claim's states
//! ([`WatchMode::Shared`](crate::WatchMode::Shared)). With
//! [`WatchMode::PerClaim`](crate::WatchMode::PerClaim), one `WATCH` with
//! `fieldSelector=metadata.name=<claim>` starts at a known resourceVersion; a dropped stream
//! is resumed from the last resourceVersion seen (bookmarks included); `410 Gone` is
//! answered with one `LIST` of the same field selector, which gives the current object and a
//! fresh resourceVersion.

use crate::handle::preferred_ip;
use crate::reason::{Missing, ReasonClass, classify};
use crate::retry::{RetryPolicy, retry, transient};
use crate::shared_watch::SharedWatch;
use crate::types::ClaimResource;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Why waiting for a claim ended without a ready sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `Ready=False` with a reason after which the sandbox will not become ready.
    #[error("claim {claim} failed with reason {reason}: {message}")]
    Terminal {
        /// Claim name.
        claim: String,
        /// Condition reason (e.g. `PodFailed`).
        reason: String,
        /// Condition message.
        message: String,
    },
    /// `Ready=False reason=WarmPoolNotFound`.
    #[error("warm pool of claim {claim} not found: {message}")]
    WarmPoolNotFound {
        /// Claim name.
        claim: String,
        /// Condition message (names the pool).
        message: String,
    },
    /// `Ready=False reason=TemplateNotFound`.
    #[error("template of claim {claim} not found: {message}")]
    TemplateNotFound {
        /// Claim name.
        claim: String,
        /// Condition message (names the template).
        message: String,
    },
    /// The claim was deleted (or is being deleted) while we waited.
    #[error("claim {claim} was deleted")]
    Deleted {
        /// Claim name.
        claim: String,
    },
    /// The deadline passed before the claim was ready. The message says what was seen
    /// last: `the controller reported no status`, or `Ready=False: <reason>: <message>`.
    #[error("claim {claim} not ready after {}; last seen: {}", seconds(*.after), last_seen(.last_status.as_deref(), .last_reason.as_deref(), .last_message.as_deref()))]
    Timeout {
        /// Claim name.
        claim: String,
        /// How long we waited.
        after: Duration,
        /// Status (`True`/`False`/`Unknown`) of the last `Ready` condition seen, if any.
        last_status: Option<String>,
        /// Last `Ready` reason seen, if any.
        last_reason: Option<String>,
        /// Last `Ready` message seen, if any.
        last_message: Option<String>,
    },
    /// The deadline passed while a previous claim of the same name was still being deleted.
    #[error("claim {claim} was still being deleted after {}", seconds(*.after))]
    StillDeleting {
        /// Claim name.
        claim: String,
        /// How long we waited.
        after: Duration,
    },
    /// The deadline passed while the claim kept disappearing between our create and read
    /// (someone else deletes it as fast as we make it).
    #[error("claim {claim} kept disappearing between create and read for {}", seconds(*.after))]
    Vanishing {
        /// Claim name.
        claim: String,
        /// How long we tried.
        after: Duration,
    },
    /// Starting or re-listing the watch failed with a non-transient error.
    #[error("watching claim {claim} failed")]
    Watch {
        /// Claim name.
        claim: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// A duration in words for messages: `2.5s`.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The last `Ready` condition in words: `the controller reported no status` when none was
/// seen, else `Ready=<status>: <reason>: <message>` (empty parts left out).
pub(crate) fn last_seen(
    status: Option<&str>,
    reason: Option<&str>,
    message: Option<&str>,
) -> String {
    let parts: Vec<&str> = [reason, message]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .collect();
    match status {
        None if parts.is_empty() => "the controller reported no status".to_owned(),
        None => format!("Ready condition without a status: {}", parts.join(": ")),
        Some(status) if parts.is_empty() => format!("Ready={status}"),
        Some(status) => format!("Ready={status}: {}", parts.join(": ")),
    }
}

/// Where a ready claim's sandbox is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// `status.sandbox.name`.
    pub sandbox_name: String,
    /// Preferred pod IP.
    pub pod_ip: IpAddr,
}

/// The last `Ready` reason and message seen, for the timeout error.
#[derive(Clone, Debug, Default)]
pub(crate) struct LastSeen {
    status: Option<String>,
    reason: Option<String>,
    message: Option<String>,
}

/// Verdict on one observed state of a claim.
#[derive(Debug)]
pub(crate) enum Verdict {
    Ready(Ready),
    Pending,
}

/// Judges one observed claim: ready, still pending, or failed.
pub(crate) fn evaluate<K: ClaimResource>(
    claim: &K,
    keep_waiting_on_not_found: bool,
    last: &mut LastSeen,
) -> Result<Verdict, Error> {
    let name = claim.meta().name.clone().unwrap_or_default();
    if claim.meta().deletion_timestamp.is_some() {
        return Err(Error::Deleted { claim: name });
    }
    let Some(status) = claim.claim_status() else {
        return Ok(Verdict::Pending);
    };
    let Some(ready) = status.ready() else {
        return Ok(Verdict::Pending);
    };
    if last.reason.as_deref() != Some(ready.reason.as_str()) {
        tracing::debug!(claim = %name, status = %ready.status, reason = %ready.reason, message = %ready.message, "claim Ready condition");
    }
    last.status = Some(ready.status.clone());
    last.reason = Some(ready.reason.clone());
    last.message = Some(ready.message.clone());
    if ready.status == "True" {
        let sandbox = status.sandbox.as_ref();
        let sandbox_name = sandbox
            .and_then(|s| s.name.clone())
            .filter(|n| !n.is_empty());
        let ip = sandbox.and_then(|s| preferred_ip(&s.pod_ips));
        return Ok(match (sandbox_name, ip) {
            (Some(sandbox_name), Some(pod_ip)) => Verdict::Ready(Ready {
                sandbox_name,
                pod_ip,
            }),
            // Ready but the IPs have not been mirrored yet: the next write brings them.
            _ => Verdict::Pending,
        });
    }
    let reason = ready.reason.clone();
    let message = ready.message.clone();
    match classify(&reason) {
        ReasonClass::Terminal => Err(Error::Terminal {
            claim: name,
            reason,
            message,
        }),
        ReasonClass::NotFound(_) if keep_waiting_on_not_found => Ok(Verdict::Pending),
        ReasonClass::NotFound(Missing::WarmPool) => Err(Error::WarmPoolNotFound {
            claim: name,
            message,
        }),
        ReasonClass::NotFound(Missing::Template) => Err(Error::TemplateNotFound {
            claim: name,
            message,
        }),
        ReasonClass::Transient => Ok(Verdict::Pending),
    }
}

/// What a watch callback decides.
pub(crate) enum Step<T> {
    Continue,
    Done(T),
}

/// Where a wait learns about its claim.
pub(crate) enum Source<'a, K: ClaimResource> {
    /// A watch of its own.
    PerClaim(&'a Api<K>),
    /// The shared watch of its [`Claims`](crate::Claims).
    Shared(&'a SharedWatch<K>),
}

/// Feeds the states of claim `name` (our copy: `uid` at `resource_version`) to `f` from
/// `source`, until `f` returns `Done` or an error (see [`watch_claim`]).
async fn observe<K, T>(
    source: &Source<'_, K>,
    name: &str,
    uid: Option<&str>,
    resource_version: String,
    policy: &RetryPolicy,
    f: impl FnMut(Option<&K>) -> Result<Step<T>, Error>,
) -> Result<T, Error>
where
    K: ClaimResource,
{
    match source {
        Source::PerClaim(api) => watch_claim(api, name, resource_version, policy, f).await,
        Source::Shared(shared) => shared.observe(name, uid, &resource_version, f).await,
    }
}

/// Watches claim `name` from `resource_version`, feeding every observed state to `f`
/// (`None` = the claim does not exist), until `f` returns `Done` or an error. No deadline:
/// callers wrap it in `tokio::time::timeout_at`, which makes it cancel-safe by construction
/// (it only reads).
pub(crate) async fn watch_claim<K, T>(
    api: &Api<K>,
    name: &str,
    mut resource_version: String,
    policy: &RetryPolicy,
    mut f: impl FnMut(Option<&K>) -> Result<Step<T>, Error>,
) -> Result<T, Error>
where
    K: ClaimResource,
{
    let selector = format!("metadata.name={name}");
    let mut failures = 0u32;
    loop {
        let wp = WatchParams::default().fields(&selector).timeout(290);
        let stream = match api.watch(&wp, &resource_version).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(s)) if s.code == 410 => {
                match relist(api, name, &selector, policy, &mut f).await? {
                    Relisted::Done(v) => return Ok(v),
                    Relisted::Resume(rv) => resource_version = rv,
                }
                continue;
            }
            Err(err) => {
                if transient(&err).is_none() {
                    return Err(Error::Watch {
                        claim: name.to_owned(),
                        source: err,
                    });
                }
                tracing::debug!(error = %err, "starting the watch failed, retrying");
                tokio::time::sleep(policy.delay(failures, None)).await;
                failures = failures.saturating_add(1).min(16);
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream.into_stream());
        let mut gone = false;
        let mut progressed = false;
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                    progressed = true;
                    if let Some(rv) = obj.meta().resource_version.clone() {
                        resource_version = rv;
                    }
                    if let Step::Done(v) = f(Some(&obj))? {
                        return Ok(v);
                    }
                }
                Some(Ok(WatchEvent::Deleted(obj))) => {
                    if let Some(rv) = obj.meta().resource_version.clone() {
                        resource_version = rv;
                    }
                    if let Step::Done(v) = f(None)? {
                        return Ok(v);
                    }
                }
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    progressed = true;
                    resource_version = b.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    gone = true;
                    break;
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    tracing::debug!(?status, "watch error event, re-watching");
                    break;
                }
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "watch stream broke, re-watching");
                    break;
                }
                None => break,
            }
        }
        if gone {
            tracing::debug!("resourceVersion expired (410), re-listing");
            match relist(api, name, &selector, policy, &mut f).await? {
                Relisted::Done(v) => return Ok(v),
                Relisted::Resume(rv) => resource_version = rv,
            }
        } else if progressed {
            failures = 0;
        } else {
            // A stream that ends without delivering anything counts as a failure for the
            // backoff, so a server that keeps closing watches at once is not hammered.
            tokio::time::sleep(policy.delay(failures, None)).await;
            failures = failures.saturating_add(1).min(16);
        }
    }
}

/// Outcome of a re-list.
enum Relisted<T> {
    /// The callback finished on the listed state.
    Done(T),
    /// Keep watching from this resourceVersion.
    Resume(String),
}

/// One `LIST` with the name selector after a 410: feeds the current state to `f` and
/// returns the list's resourceVersion to resume from.
async fn relist<K, T>(
    api: &Api<K>,
    name: &str,
    selector: &str,
    policy: &RetryPolicy,
    f: &mut impl FnMut(Option<&K>) -> Result<Step<T>, Error>,
) -> Result<Relisted<T>, Error>
where
    K: ClaimResource,
{
    let lp = ListParams::default().fields(selector);
    let list = retry(policy, "list claim", || api.list(&lp))
        .await
        .map_err(|source| Error::Watch {
            claim: name.to_owned(),
            source,
        })?;
    if let Step::Done(v) = f(list.items.first())? {
        return Ok(Relisted::Done(v));
    }
    Ok(Relisted::Resume(
        list.metadata.resource_version.unwrap_or_default(),
    ))
}

/// Waits until the claim is ready, starting from an already observed state `initial`.
///
/// Returns the ready claim and where its sandbox is.
#[tracing::instrument(skip_all, fields(claim = initial.meta().name.as_deref().unwrap_or_default()))]
pub(crate) async fn wait_ready<K: ClaimResource>(
    source: &Source<'_, K>,
    initial: &K,
    deadline: Instant,
    keep_waiting_on_not_found: bool,
    policy: &RetryPolicy,
) -> Result<Ready, Error> {
    let name = initial.meta().name.clone().unwrap_or_default();
    let started = Instant::now();
    let mut last = LastSeen::default();
    if let Verdict::Ready(r) = evaluate(initial, keep_waiting_on_not_found, &mut last)? {
        return Ok(r);
    }
    let rv = initial.meta().resource_version.clone().unwrap_or_default();
    let watched = tokio::time::timeout_at(
        deadline,
        observe(
            source,
            &name,
            initial.meta().uid.as_deref(),
            rv,
            policy,
            |obj| match obj {
                None => Err(Error::Deleted {
                    claim: name.clone(),
                }),
                Some(obj) => Ok(match evaluate(obj, keep_waiting_on_not_found, &mut last)? {
                    Verdict::Ready(r) => Step::Done(r),
                    Verdict::Pending => Step::Continue,
                }),
            },
        ),
    )
    .await;
    match watched {
        Ok(result) => result,
        Err(_elapsed) => Err(Error::Timeout {
            claim: name.clone(),
            after: started.elapsed(),
            last_status: last.status,
            last_reason: last.reason,
            last_message: last.message,
        }),
    }
}

/// Waits until the claim with `uid` no longer exists (deleted, or replaced by a new object
/// of the same name), watching from `resource_version`.
pub(crate) async fn wait_deleted<K: ClaimResource>(
    source: &Source<'_, K>,
    name: &str,
    uid: Option<String>,
    resource_version: String,
    deadline: Instant,
    policy: &RetryPolicy,
) -> Result<(), Error> {
    let started = Instant::now();
    let watched = tokio::time::timeout_at(
        deadline,
        observe(
            source,
            name,
            uid.as_deref(),
            resource_version,
            policy,
            |obj| {
                Ok(match obj {
                    None => Step::Done(()),
                    Some(o) if o.meta().uid != uid => Step::Done(()),
                    Some(_) => Step::Continue,
                })
            },
        ),
    )
    .await;
    watched.unwrap_or_else(|_| {
        Err(Error::StillDeleting {
            claim: name.to_owned(),
            after: started.elapsed(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::v1beta1::SandboxClaim;

    fn claim(status_yaml: &str) -> SandboxClaim {
        let yaml = format!(
            "apiVersion: extensions.agents.x-k8s.io/v1beta1\nkind: SandboxClaim\nmetadata:\n  name: c\nspec:\n  warmPoolRef:\n    name: p\n{status_yaml}"
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    fn ready_cond(status: &str, reason: &str) -> String {
        format!(
            "status:\n  conditions:\n  - type: Ready\n    status: \"{status}\"\n    reason: {reason}\n    message: m\n    lastTransitionTime: \"2026-01-01T00:00:00Z\"\n"
        )
    }

    fn judge(c: &SandboxClaim, keep: bool) -> Result<Verdict, Error> {
        evaluate(c, keep, &mut LastSeen::default())
    }

    #[test]
    fn no_status_is_pending() {
        assert!(matches!(judge(&claim(""), false), Ok(Verdict::Pending)));
    }

    #[test]
    fn ready_needs_a_sandbox_name_and_an_ip() {
        let base = ready_cond("True", "DependenciesReady");
        assert!(matches!(judge(&claim(&base), false), Ok(Verdict::Pending)));
        let named = format!("{base}  sandbox:\n    name: s\n");
        assert!(matches!(judge(&claim(&named), false), Ok(Verdict::Pending)));
        let full =
            format!("{base}  sandbox:\n    name: s\n    podIPs: [\"fd00::2\", \"10.0.0.9\"]\n");
        match judge(&claim(&full), false) {
            Ok(Verdict::Ready(r)) => {
                assert_eq!(r.sandbox_name, "s");
                assert_eq!(r.pod_ip, "10.0.0.9".parse::<IpAddr>().unwrap());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reasons_map_to_errors_or_waiting() {
        let c = claim(&ready_cond("False", "PodFailed"));
        assert!(
            matches!(judge(&c, false), Err(Error::Terminal { reason, .. }) if reason == "PodFailed")
        );
        let c = claim(&ready_cond("False", "WarmPoolNotFound"));
        assert!(matches!(
            judge(&c, false),
            Err(Error::WarmPoolNotFound { .. })
        ));
        assert!(matches!(judge(&c, true), Ok(Verdict::Pending)));
        let c = claim(&ready_cond("False", "TemplateNotFound"));
        assert!(matches!(
            judge(&c, false),
            Err(Error::TemplateNotFound { .. })
        ));
        let c = claim(&ready_cond("False", "SandboxNotReady"));
        let mut last = LastSeen::default();
        assert!(matches!(
            evaluate(&c, false, &mut last),
            Ok(Verdict::Pending)
        ));
        assert_eq!(last.reason.as_deref(), Some("SandboxNotReady"));
    }

    #[test]
    fn a_deleting_claim_is_deleted() {
        let mut c = claim("");
        c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        assert!(matches!(judge(&c, false), Err(Error::Deleted { .. })));
    }

    fn timeout(status: Option<&str>, reason: Option<&str>, message: Option<&str>) -> String {
        Error::Timeout {
            claim: "c".into(),
            after: Duration::from_millis(2500),
            last_status: status.map(Into::into),
            last_reason: reason.map(Into::into),
            last_message: message.map(Into::into),
        }
        .to_string()
    }

    #[test]
    fn a_timeout_without_a_condition_says_the_controller_reported_no_status() {
        let text = timeout(None, None, None);
        assert_eq!(
            text,
            "claim c not ready after 2.5s; last seen: the controller reported no status"
        );
    }

    #[test]
    fn a_timeout_names_the_last_condition_in_words_never_as_options() {
        let text = timeout(Some("False"), Some("SandboxNotReady"), Some("pod pending"));
        assert_eq!(
            text,
            "claim c not ready after 2.5s; last seen: Ready=False: SandboxNotReady: pod pending"
        );
        assert_eq!(
            timeout(Some("True"), Some("DependenciesReady"), Some("")),
            "claim c not ready after 2.5s; last seen: Ready=True: DependenciesReady"
        );
        for text in [
            timeout(None, None, None),
            timeout(Some("False"), Some("X"), None),
        ] {
            assert!(!text.contains("None") && !text.contains("Some("), "{text}");
        }
    }

    #[test]
    fn the_last_condition_seen_is_remembered_with_its_status() {
        let c = claim(&ready_cond("False", "SandboxNotReady"));
        let mut last = LastSeen::default();
        let _ = evaluate(&c, false, &mut last);
        assert_eq!(
            last_seen(
                last.status.as_deref(),
                last.reason.as_deref(),
                last.message.as_deref()
            ),
            "Ready=False: SandboxNotReady: m"
        );
    }

    #[test]
    fn waits_that_end_at_the_deadline_for_other_causes_say_so_in_words() {
        let text = Error::StillDeleting {
            claim: "c".into(),
            after: Duration::from_secs(3),
        }
        .to_string();
        assert_eq!(text, "claim c was still being deleted after 3.0s");
        let text = Error::Vanishing {
            claim: "c".into(),
            after: Duration::from_secs(3),
        }
        .to_string();
        assert!(text.contains("kept disappearing"), "{text}");
    }
}
