//! `fieldValidation`: what a write does with fields its schema does not declare, and the
//! `Warning` headers that carry what was dropped.
//!
//! As on a real API server (v1.23+): `Strict` fails the write with a 400 `BadRequest`
//! ("strict decoding error: unknown field …"), `Warn` prunes the fields and answers with one
//! `Warning: 299 - "unknown field \"spec.x\""` header per field, `Ignore` prunes them silently.
//! A write that names none gets `Warn`, unless
//! [`FakeApiServerOptions::strict_unknown_fields`](crate::FakeApiServerOptions::strict_unknown_fields)
//! makes it `Strict` (the default of this crate, for tests).
//!
//! # Caveats
//!
//! Duplicate fields are not detected: the JSON parser keeps the last one, as `Warn` and
//! `Ignore` would, and `Strict` lets them through.

use std::sync::{Mutex, PoisonError};

use http::HeaderValue;

use crate::status::ApiError;

/// The three directives of the `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    /// The directive of a request: its `fieldValidation` parameter, else the server's default.
    pub(crate) fn parse(param: Option<&str>, strict_by_default: bool) -> Result<Self, ApiError> {
        match param {
            Some("Strict") => Ok(Self::Strict),
            Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            None | Some("") if strict_by_default => Ok(Self::Strict),
            None | Some("") => Ok(Self::Warn),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid fieldValidation directive {other:?}: expected one of Ignore, Warn, Strict"
            ))),
        }
    }

    /// Applies the directive to the `unknown` (already pruned) fields of a `kind` object written
    /// through `version`: an error for `Strict`, warnings for `Warn`.
    pub(crate) fn apply(
        self,
        kind: &str,
        version: &str,
        unknown: &[String],
        warnings: &Warnings,
    ) -> Result<(), ApiError> {
        if unknown.is_empty() {
            return Ok(());
        }
        let described = || {
            unknown
                .iter()
                .map(|field| format!("unknown field \"{field}\""))
        };
        match self {
            Self::Strict => Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                described().collect::<Vec<_>>().join(", ")
            ))),
            Self::Warn => {
                described().for_each(|w| warnings.push(w));
                Ok(())
            }
            Self::Ignore => Ok(()),
        }
    }
}

/// The warnings of one request, sent back as `Warning` headers.
#[derive(Debug, Default)]
pub(crate) struct Warnings(Mutex<Vec<String>>);

impl Warnings {
    pub(crate) fn push(&self, warning: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(warning);
    }

    /// One `Warning` header value per warning, in the RFC 7234 form a real server sends
    /// (`299 - "text"`, with the text's quotes and backslashes escaped).
    pub(crate) fn headers(&self) -> Vec<HeaderValue> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|w| {
                let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
                HeaderValue::from_str(&format!("299 - \"{escaped}\"")).ok()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_without_a_directive_warns_unless_the_server_is_strict() {
        assert_eq!(
            FieldValidation::parse(None, false).unwrap(),
            FieldValidation::Warn
        );
        assert_eq!(
            FieldValidation::parse(None, true).unwrap(),
            FieldValidation::Strict
        );
        assert_eq!(
            FieldValidation::parse(Some("Ignore"), true).unwrap(),
            FieldValidation::Ignore
        );
        let err = FieldValidation::parse(Some("strict"), false).unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    }

    #[test]
    fn strict_fails_naming_every_field_and_warn_sends_one_escaped_header_each() {
        let unknown = ["spec.a".to_owned(), "spec.b".to_owned()];
        let warnings = Warnings::default();
        let err = FieldValidation::Strict
            .apply("Widget", "v1", &unknown, &warnings)
            .unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.a\", unknown field \"spec.b\""
        );
        FieldValidation::Warn
            .apply("Widget", "v1", &unknown, &warnings)
            .unwrap();
        let headers = warnings.headers();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0], "299 - \"unknown field \\\"spec.a\\\"\"");
        FieldValidation::Ignore
            .apply("Widget", "v1", &unknown, &Warnings::default())
            .unwrap();
    }
}
