//! Request counting, so tests can assert how a client talks to the server.

use std::collections::BTreeMap;
use std::fmt;

/// The Kubernetes API verb of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// GET of one object (also discovery documents).
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH of any patch type, including server-side apply.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// The lower-case name Kubernetes uses, e.g. `"deletecollection"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of request counts by `(verb, resource)`.
///
/// `resource` is the plural (`"sandboxclaims"`), `"<plural>/status"` for the status
/// subresource, and `"discovery"` for `/api`, `/apis…` and `/version` documents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLog {
    counts: BTreeMap<(Verb, String), u64>,
}

impl RequestLog {
    pub(crate) fn record(&mut self, verb: Verb, resource: &str) {
        *self.counts.entry((verb, resource.to_owned())).or_default() += 1;
    }

    /// Requests with this verb on this resource.
    pub fn count(&self, verb: Verb, resource: &str) -> u64 {
        self.counts
            .get(&(verb, resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Like [`count`](Self::count), with the verb by name (`"create"`); unknown names count 0.
    pub fn count_named(&self, verb: &str, resource: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((v, r), _)| v.as_str() == verb && r == resource)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests with this verb on any resource.
    pub fn count_verb(&self, verb: Verb) -> u64 {
        self.counts
            .iter()
            .filter(|((v, _), _)| *v == verb)
            .map(|(_, n)| n)
            .sum()
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Every `((verb, resource), count)`, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (Verb, &str, u64)> {
        self.counts.iter().map(|((v, r), n)| (*v, r.as_str(), *n))
    }
}
