//! Kubernetes `Status` bodies: the error shape every kube client decodes.
//!
//! The kube client maps a non-2xx response to `kube::Error::Api(status)` only when the body is a
//! `Status`; `is_not_found()`, `is_already_exists()` and friends look at `reason` and `code`, so
//! both must match what a real API server sends.

use serde_json::{Value, json};

/// One field-level problem, reported in `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueRequired`.
    pub reason: String,
    /// Human-readable message, e.g. `Required value`.
    pub message: String,
    /// Dotted field path, e.g. `spec.warmPoolRef.name`.
    pub field: String,
}

impl Cause {
    pub(crate) fn new(reason: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
            field: field.to_owned(),
        }
    }
}

/// A failed request, rendered as a `Status` body with a matching HTTP code.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) message: String,
    /// `details.name`, `details.group` and `details.kind`: as upstream, the resource (plural) for
    /// NotFound, AlreadyExists and Conflict, the kind for Invalid.
    pub(crate) details: Option<Box<(String, String, String)>>,
    pub(crate) causes: Vec<Cause>,
    pub(crate) retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            message: message.into(),
            details: None,
            causes: Vec::new(),
            retry_after_secs: None,
        }
    }

    pub(crate) fn with_details(mut self, group: &str, plural: &str, name: &str) -> Self {
        self.details = Some(Box::new((
            name.to_owned(),
            group.to_owned(),
            plural.to_owned(),
        )));
        self
    }

    pub(crate) fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(plural, group)),
        )
        .with_details(group, plural, name)
    }

    pub(crate) fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(plural, group)),
        )
        .with_details(group, plural, name)
    }

    pub(crate) fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(plural, group)
            ),
        )
        .with_details(group, plural, name)
    }

    pub(crate) fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
            .join(", ");
        let mut err = Self::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {summary}",
                qualified(kind, group)
            ),
        )
        .with_details(group, kind, name);
        err.causes = causes;
        err
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` JSON body.
    pub(crate) fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.is_some() || !self.causes.is_empty() || self.retry_after_secs.is_some() {
            let mut details = json!({});
            if let Some((name, group, kind)) = self.details.as_deref() {
                details["name"] = json!(name);
                details["group"] = json!(group);
                details["kind"] = json!(kind);
            }
            if !self.causes.is_empty() {
                details["causes"] = self
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            if let Some(secs) = self.retry_after_secs {
                details["retryAfterSeconds"] = json!(secs);
            }
            status["details"] = details;
        }
        status
    }
}

/// The `Status` a delete answers with once the object is gone.
pub(crate) fn success(group: &str, plural: &str, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": group, "kind": plural, "uid": uid},
    })
}

/// `plural.group`, or the bare plural in the core group (`pods`), as upstream writes it.
fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}
