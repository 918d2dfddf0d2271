//! Structural-schema validation of custom resources: the OpenAPI v3 subset CRDs use.
//!
//! Like the real API server this prunes unknown fields (reporting them, for `fieldValidation`),
//! drops `null`s of non-nullable fields and
//! applies `default`s before validating. Supported keywords: `type`, `properties`, `required`,
//! `items`, `additionalProperties`, `enum`, `pattern`, `format: date-time`,
//! `maxLength`/`minLength`, `minimum`/`maximum`, `maxItems`/`minItems`, `nullable`,
//! `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string` and
//! `x-kubernetes-embedded-resource`.
//!
//! # Caveats
//!
//! `pattern` is matched with the `regex` crate, not an ECMA-262 engine: a pattern using
//! look-around or back-references is rejected when the CRD is installed. `anyOf`/`allOf`/`oneOf`
//! value validations, list-type uniqueness and CEL `x-kubernetes-validations` are not checked (no
//! CEL engine is worth its weight here).

use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value};

use crate::status::Cause;

/// What [`validate`] found.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    /// Every violation; empty when the (pruned, defaulted) object is valid.
    pub(crate) causes: Vec<Cause>,
    /// The dotted paths of the fields the schema does not declare, which were pruned; what
    /// `fieldValidation` decides about ([`crate::field_validation`]).
    pub(crate) unknown: Vec<String>,
}

/// The compiled `pattern`s of one schema, keyed by their source text.
#[derive(Debug, Clone, Default)]
pub(crate) struct Patterns(HashMap<String, Regex>);

/// A `pattern` of a CRD schema that does not compile (see [`CrdError::InvalidPattern`]).
///
/// [`CrdError::InvalidPattern`]: crate::CrdError::InvalidPattern
#[derive(Debug, thiserror::Error)]
#[error("pattern {pattern:?} at {path} does not compile")]
pub struct PatternError {
    /// Where in the version's `openAPIV3Schema` (a JSON pointer).
    pub path: String,
    /// The pattern.
    pub pattern: String,
    /// Why.
    #[source]
    pub source: regex::Error,
}

impl Patterns {
    /// Compiles every `pattern` in `schema`, so that a bad one fails at install time as it does on
    /// a real API server.
    pub(crate) fn compile(schema: &Value) -> Result<Self, Box<PatternError>> {
        let mut patterns = HashMap::new();
        collect_patterns(schema, "", &mut patterns)?;
        Ok(Self(patterns))
    }

    fn get(&self, pattern: &str) -> Option<&Regex> {
        self.0.get(pattern)
    }
}

fn collect_patterns(
    schema: &Value,
    path: &str,
    out: &mut HashMap<String, Regex>,
) -> Result<(), Box<PatternError>> {
    match schema {
        Value::Object(map) => {
            for (key, sub) in map {
                let sub_path = format!("{path}/{key}");
                // `properties` names fields; a field called "pattern" is not a keyword.
                if key == "pattern"
                    && let Some(p) = sub.as_str()
                {
                    if !out.contains_key(p) {
                        let re = Regex::new(p).map_err(|source| PatternError {
                            path: sub_path.clone(),
                            pattern: p.to_owned(),
                            source,
                        })?;
                        out.insert(p.to_owned(), re);
                    }
                } else if key == "properties"
                    && let Some(props) = sub.as_object()
                {
                    for (name, prop) in props {
                        collect_patterns(prop, &format!("{sub_path}/{name}"), out)?;
                    }
                } else if key != "enum" && key != "default" && key != "example" {
                    collect_patterns(sub, &sub_path, out)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_patterns(item, &format!("{path}/{i}"), out)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Validates `object` (a whole custom resource) in place against a version's `openAPIV3Schema`
/// (whose `pattern`s are in `patterns`), pruning the fields the schema does not declare.
pub(crate) fn validate(schema: &Value, patterns: &Patterns, object: &mut Value) -> Checked {
    let mut checked = Checked::default();
    let mut walker = Walker {
        patterns,
        checked: &mut checked,
    };
    walker.root(schema, object);
    checked
}

struct Walker<'a> {
    patterns: &'a Patterns,
    checked: &'a mut Checked,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

impl Walker<'_> {
    fn cause(&mut self, reason: &str, path: &str, message: impl Into<String>) {
        self.checked.causes.push(Cause::new(reason, path, message));
    }

    /// The root accepts `apiVersion`, `kind` and `metadata` whatever the schema says.
    fn root(&mut self, schema: &Value, object: &mut Value) {
        let Some(map) = object.as_object_mut() else {
            self.cause("FieldValueTypeInvalid", "", "must be an object");
            return;
        };
        let metadata = map.remove("metadata");
        let api_version = map.remove("apiVersion");
        let kind = map.remove("kind");
        self.object(schema, map, "");
        if let Some(m) = metadata {
            self.metadata(&m, "metadata");
            map.insert("metadata".into(), m);
        }
        if let Some(v) = api_version {
            map.insert("apiVersion".into(), v);
        }
        if let Some(v) = kind {
            map.insert("kind".into(), v);
        }
    }

    /// ObjectMeta's string maps are the part of metadata a client can plausibly get wrong.
    fn metadata(&mut self, meta: &Value, path: &str) {
        let Some(meta) = meta.as_object() else {
            self.cause(
                "FieldValueTypeInvalid",
                path,
                "Invalid value: must be an object",
            );
            return;
        };
        for key in ["labels", "annotations"] {
            match meta.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    for (k, v) in m {
                        if !v.is_string() {
                            let field = format!("{path}.{key}[{k}]");
                            self.cause(
                                "FieldValueTypeInvalid",
                                &field,
                                "Invalid value: must be a string",
                            );
                        }
                    }
                }
                Some(_) => {
                    let field = join(path, key);
                    self.cause(
                        "FieldValueTypeInvalid",
                        &field,
                        "Invalid value: must be a map of strings",
                    );
                }
            }
        }
    }

    fn value(&mut self, schema: &Value, value: &mut Value, path: &str) {
        // Only nulls of nullable fields get this far (the others were dropped).
        if value.is_null() && flag(schema, "nullable") {
            return;
        }
        if flag(schema, "x-kubernetes-int-or-string") {
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                let msg = format!(
                    "Invalid value: \"{}\": must be an integer or string",
                    type_name(value)
                );
                self.cause("FieldValueTypeInvalid", path, msg);
            } else if let Some(s) = value.as_str() {
                // Quantities: the pattern applies to the string form only.
                self.pattern(schema, s, path);
            }
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let actual = type_name(value);
        let type_ok = match ty {
            None => true,
            Some("integer") => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            Some("number") => value.is_number(),
            Some(t) => t == actual,
        };
        if !type_ok {
            let msg = format!(
                "Invalid value: \"{actual}\": {path} in body must be of type {}: \"{actual}\"",
                ty.unwrap_or("")
            );
            self.cause("FieldValueTypeInvalid", path, msg);
            return;
        }
        self.enum_and_bounds(schema, value, path);
        match value {
            Value::Object(map) => {
                if flag(schema, "x-kubernetes-embedded-resource") {
                    if let Some(m) = map.get("metadata") {
                        let m = m.clone();
                        self.metadata(&m, &join(path, "metadata"));
                    }
                    let keep: Vec<_> = ["apiVersion", "kind", "metadata"]
                        .iter()
                        .filter_map(|k| map.remove(*k).map(|v| (*k, v)))
                        .collect();
                    self.object(schema, map, path);
                    for (k, v) in keep {
                        map.insert(k.to_owned(), v);
                    }
                } else {
                    self.object(schema, map, path);
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.value(item_schema, item, &format!("{path}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }

    fn enum_and_bounds(&mut self, schema: &Value, value: &Value, path: &str) {
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list = allowed
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            self.cause(
                "FieldValueNotSupported",
                path,
                format!("Unsupported value: {value}: supported values: {list}"),
            );
        }
        let num = |k: &str| schema.get(k).and_then(Value::as_f64);
        let len = match value {
            Value::String(s) => Some(s.chars().count() as f64),
            _ => None,
        };
        if let Some(len) = len {
            if num("maxLength").is_some_and(|m| len > m) {
                self.cause(
                    "FieldValueTooLong",
                    path,
                    format!(
                        "Too long: may not be longer than {}",
                        num("maxLength").unwrap_or(0.0)
                    ),
                );
            }
            if num("minLength").is_some_and(|m| len < m) {
                self.cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: should be at least {} chars long",
                        num("minLength").unwrap_or(0.0)
                    ),
                );
            }
            if let Some(s) = value.as_str() {
                self.pattern(schema, s, path);
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && let Some(s) = value.as_str()
                && s.parse::<jiff::Timestamp>().is_err()
            {
                self.cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: \"{s}\": {path} in body must be of type date-time: \"{s}\""
                    ),
                );
            }
        }
        if let Some(n) = value.as_f64() {
            if num("minimum").is_some_and(|m| n < m) {
                self.cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {n}: {path} in body should be greater than or equal to {}",
                        num("minimum").unwrap_or(0.0)
                    ),
                );
            }
            if num("maximum").is_some_and(|m| n > m) {
                self.cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {n}: {path} in body should be less than or equal to {}",
                        num("maximum").unwrap_or(0.0)
                    ),
                );
            }
        }
        if let Some(items) = value.as_array() {
            let n = items.len() as f64;
            if num("maxItems").is_some_and(|m| n > m) {
                self.cause(
                    "FieldValueTooMany",
                    path,
                    "Too many: must have at most the allowed number of items",
                );
            }
            if num("minItems").is_some_and(|m| n < m) {
                self.cause(
                    "FieldValueInvalid",
                    path,
                    "Invalid value: must have at least the required number of items",
                );
            }
        }
    }

    fn pattern(&mut self, schema: &Value, s: &str, path: &str) {
        let Some(pattern) = schema.get("pattern").and_then(Value::as_str) else {
            return;
        };
        // Every pattern was compiled at install time; a miss means the schema changed since.
        if let Some(re) = self.patterns.get(pattern)
            && !re.is_match(s)
        {
            self.cause(
                "FieldValueInvalid",
                path,
                format!("Invalid value: \"{s}\": {path} in body should match '{pattern}'"),
            );
        }
    }

    fn object(&mut self, schema: &Value, map: &mut Map<String, Value>, path: &str) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");

        // Nulls of non-nullable fields are dropped before defaulting, as upstream does.
        map.retain(|k, v| {
            !v.is_null()
                || properties
                    .and_then(|p| p.get(k))
                    .is_some_and(|s| flag(s, "nullable"))
        });
        if let Some(props) = properties {
            for (k, s) in props {
                if !map.contains_key(k)
                    && let Some(default) = s.get("default")
                {
                    map.insert(k.clone(), default.clone());
                }
            }
        }

        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            let field = join(path, &key);
            let sub_schema = properties.and_then(|p| p.get(&key)).or(match additional {
                Some(Value::Object(_)) => additional,
                _ => None,
            });
            match sub_schema {
                Some(s) => {
                    if let Some(v) = map.get_mut(&key) {
                        self.value(s, v, &field);
                    }
                }
                None if preserve || additional == Some(&Value::Bool(true)) => {}
                None => {
                    map.remove(&key);
                    self.checked.unknown.push(field);
                }
            }
        }

        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    self.cause("FieldValueRequired", &join(path, r), "Required value");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["ref"], "properties": {
                "ref": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 5}}},
                "policy": {"type": "string", "enum": ["A", "B"], "default": "A"},
                "count": {"type": "integer", "minimum": 0},
                "reason": {"type": "string", "pattern": "^[A-Z][a-z]*$"},
                "quantity": {"x-kubernetes-int-or-string": true, "pattern": "^[0-9]+m?$"},
                "note": {"type": "string", "nullable": true},
                "pattern": {"type": "string"},
                "when": {"type": "string", "format": "date-time"},
                "port": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "list": {"type": "array", "items": {"type": "object", "required": ["n"], "properties": {"n": {"type": "string"}}}}
            }}
        }})
    }

    fn check(o: &mut Value) -> Vec<Cause> {
        checked(o).causes
    }

    fn checked(o: &mut Value) -> Checked {
        let schema = schema();
        let patterns = Patterns::compile(&schema).unwrap();
        validate(&schema, &patterns, o)
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn a_valid_object_is_defaulted_and_accepted() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"ref": {"name": "p"}, "port": 80, "free": {"x": 1}, "labels": {"a": "b"}, "when": "2024-01-01T00:00:00Z"}});
        assert!(check(&mut o).is_empty());
        assert_eq!(o["spec"]["policy"], "A");
        assert_eq!(o["spec"]["free"]["x"], 1);
    }

    #[test]
    fn missing_required_fields_are_reported_with_their_path() {
        let mut o = json!({"spec": {"ref": {}, "list": [{}]}});
        let causes = check(&mut o);
        assert_eq!(fields(&causes), ["spec.list[0].n", "spec.ref.name"]);
        assert_eq!(causes[0].message, "Required value");
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported_with_their_path() {
        let mut o =
            json!({"spec": {"ref": {"name": "p"}, "bogus": 1, "free": {"kept": 1}}, "extra": true});
        let found = checked(&mut o);
        assert!(found.causes.is_empty());
        assert_eq!(found.unknown, ["extra", "spec.bogus"]);
        assert_eq!(
            o,
            json!({"spec": {"ref": {"name": "p"}, "policy": "A", "free": {"kept": 1}}})
        );
    }

    #[test]
    fn types_enums_and_bounds_are_checked() {
        let mut o = json!({"spec": {"ref": {"name": "toolong"}, "policy": "C", "count": -1, "port": true, "when": "yesterday", "labels": {"a": 1}}});
        let causes = check(&mut o);
        let mut got = fields(&causes);
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "spec.count",
                "spec.labels.a",
                "spec.policy",
                "spec.port",
                "spec.ref.name",
                "spec.when"
            ]
        );
    }

    #[test]
    fn strings_must_match_their_pattern_and_quantities_only_as_strings() {
        let mut ok = json!({"spec": {"ref": {"name": "p"}, "reason": "Ready", "quantity": "250m", "pattern": "not a keyword"}});
        assert!(check(&mut ok).is_empty());
        let mut int = json!({"spec": {"ref": {"name": "p"}, "quantity": 2}});
        assert!(check(&mut int).is_empty());
        let mut bad =
            json!({"spec": {"ref": {"name": "p"}, "reason": "not-camel", "quantity": "lots"}});
        let causes = check(&mut bad);
        let mut got = fields(&causes);
        got.sort_unstable();
        assert_eq!(got, ["spec.quantity", "spec.reason"]);
        assert!(
            causes
                .iter()
                .any(|c| c.message.contains("should match '^[A-Z][a-z]*$'")),
            "{causes:?}"
        );
    }

    #[test]
    fn a_null_is_kept_for_nullable_fields_and_dropped_for_others() {
        let mut o = json!({"spec": {"ref": {"name": "p"}, "note": null, "count": null}});
        assert!(check(&mut o).is_empty());
        assert_eq!(o["spec"]["note"], Value::Null);
        assert!(o["spec"].get("count").is_none());
    }

    #[test]
    fn a_pattern_that_does_not_compile_is_reported_with_its_place() {
        let schema = json!({"properties": {"spec": {"properties": {"x": {"type": "string", "pattern": "(unclosed"}}}}});
        let err = Patterns::compile(&schema).unwrap_err();
        assert_eq!(err.path, "/properties/spec/properties/x/pattern");
        assert_eq!(err.pattern, "(unclosed");
    }
}
