//! What [`crate::Claims::acquire`] returns: where the sandbox is.

use crate::api_version::ApiVersion;
use std::net::IpAddr;
use std::time::Duration;

/// A ready sandbox checked out for one conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxHandle {
    /// Namespace of the claim and sandbox.
    pub namespace: String,
    /// Name of the SandboxClaim.
    pub claim_name: String,
    /// Name of the bound Sandbox (`status.sandbox.name`): the claim name on a cold start,
    /// `<pool>-xxxxx` on a warm one.
    pub sandbox_name: String,
    /// Name of the pod. The current upstream controllers name the pod after the sandbox,
    /// so this is the sandbox name (read without an extra request).
    pub pod_name: String,
    /// The pod IP to connect to (IPv4 preferred; IPv4-mapped IPv6 normalized).
    pub pod_ip: IpAddr,
    /// API version the claim was made with.
    pub api_version: ApiVersion,
    /// The conversation the sandbox belongs to.
    pub conversation_id: String,
}

/// What [`crate::Claims::acquire_with`] returns: the sandbox, and how it was got.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Acquired {
    /// Where the sandbox is.
    pub handle: SandboxHandle,
    /// Whether the claim was made now (warm or cold) or adopted.
    pub path: AcquirePath,
    /// How long the claim took to become Ready once created or adopted.
    pub ready_wait: Duration,
}

/// How [`crate::Claims::acquire_with`] got its sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcquirePath {
    /// A new claim, bound to a pre-warmed Sandbox of the pool (named `<pool>-xxxxx`).
    Warm,
    /// A new claim, for which the controller created a Sandbox (named after the claim).
    Cold,
    /// Our existing claim for the conversation (made before a restart, say).
    Adopted,
}

impl AcquirePath {
    /// A short lower-case name (`warm`, `cold`, `adopt`), e.g. for a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
            Self::Adopted => "adopt",
        }
    }

    /// The path of a claim this call created: cold when the controller named the sandbox
    /// after the claim (as it does when no pool member was free), else warm.
    pub(crate) fn of_new_claim(claim_name: &str, sandbox_name: &str) -> Self {
        if claim_name == sandbox_name {
            Self::Cold
        } else {
            Self::Warm
        }
    }
}

/// Picks the address to connect to: the first IPv4 (including IPv4-mapped IPv6), else the
/// first parseable IPv6. Unparseable entries are skipped.
pub fn preferred_ip<S: AsRef<str>>(ips: &[S]) -> Option<IpAddr> {
    let parsed: Vec<IpAddr> = ips
        .iter()
        .filter_map(|s| s.as_ref().trim().parse::<IpAddr>().ok())
        .map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        })
        .collect();
    parsed
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| parsed.first())
        .copied()
}

/// Anything that names a conversation: a `&str`, a `String` or a [`SandboxHandle`].
pub trait ConversationRef {
    /// The conversation id.
    fn conversation_id(&self) -> &str;
}

impl ConversationRef for str {
    fn conversation_id(&self) -> &str {
        self
    }
}

impl ConversationRef for String {
    fn conversation_id(&self) -> &str {
        self
    }
}

impl ConversationRef for SandboxHandle {
    fn conversation_id(&self) -> &str {
        &self.conversation_id
    }
}

impl<T: ConversationRef + ?Sized> ConversationRef for &T {
    fn conversation_id(&self) -> &str {
        (**self).conversation_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_ipv4_and_unmaps_mapped_addresses() {
        assert_eq!(
            preferred_ip(&["fd00::1", "10.0.0.7"]),
            Some("10.0.0.7".parse().unwrap())
        );
        assert_eq!(
            preferred_ip(&["::ffff:10.1.2.3"]),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(preferred_ip(&["fd00::1"]), Some("fd00::1".parse().unwrap()));
        assert_eq!(preferred_ip(&["garbage"]), None);
        assert_eq!(preferred_ip::<&str>(&[]), None);
    }
}
