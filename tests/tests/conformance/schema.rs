//! Reading `openAPIV3Schema`s: the fields and validation rules they declare, minimal valid
//! instances, and instances that break exactly one rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::Regex;
use serde_json::{Map, Value, json};

/// One step from a schema into a sub-schema.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// `properties.<name>`.
    Prop(String),
    /// `items` (every element of an array).
    Items,
    /// `additionalProperties` (every value of a map).
    Values,
}

/// Where a field or rule sits, from the object root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<Step>);

impl Path {
    fn child(&self, step: Step) -> Self {
        let mut steps = self.0.clone();
        steps.push(step);
        Self(steps)
    }

    /// The path of the property that holds this one (`None` at the root).
    pub fn parent_field(&self) -> Option<Self> {
        let mut steps = self.0.clone();
        steps.pop()?;
        while matches!(steps.last(), Some(Step::Items | Step::Values)) {
            steps.pop();
        }
        Some(Self(steps))
    }

    /// Whether `self` is `prefix` or below it.
    pub fn starts_with(&self, prefix: &Self) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// A path of property names (`"[]"` steps into items).
    pub fn of(steps: &[&str]) -> Self {
        Self(
            steps
                .iter()
                .map(|s| match *s {
                    "[]" => Step::Items,
                    "{}" => Step::Values,
                    name => Step::Prop(name.to_owned()),
                })
                .collect(),
        )
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for step in &self.0 {
            match step {
                Step::Prop(name) => write!(f, ".{name}")?,
                Step::Items => f.write_str("[]")?,
                Step::Values => f.write_str("{}")?,
            }
        }
        Ok(())
    }
}

/// A validation rule the fake API server enforces.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// `required` names this property.
    Required(String),
    /// `type`.
    Type(String),
    /// `x-kubernetes-int-or-string`.
    IntOrString,
    /// `enum`.
    Enum(Vec<Value>),
    /// `pattern`.
    Pattern(String),
    /// `format: date-time`.
    DateTime,
    /// `minimum`.
    Minimum(f64),
    /// `maximum`.
    Maximum(f64),
    /// `minLength`.
    MinLength(u64),
    /// `maxLength`.
    MaxLength(u64),
    /// `minItems`.
    MinItems(u64),
    /// `maxItems`.
    MaxItems(u64),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Required(name) => write!(f, "required {name}"),
            Self::Type(t) => write!(f, "type {t}"),
            Self::IntOrString => f.write_str("int-or-string"),
            Self::Enum(values) => write!(f, "enum {}", Value::Array(values.clone())),
            Self::Pattern(p) => write!(f, "pattern {p}"),
            Self::DateTime => f.write_str("format date-time"),
            Self::Minimum(n) => write!(f, "minimum {n}"),
            Self::Maximum(n) => write!(f, "maximum {n}"),
            Self::MinLength(n) => write!(f, "minLength {n}"),
            Self::MaxLength(n) => write!(f, "maxLength {n}"),
            Self::MinItems(n) => write!(f, "minItems {n}"),
            Self::MaxItems(n) => write!(f, "maxItems {n}"),
        }
    }
}

/// A rule and where it applies.
#[derive(Clone, Debug)]
pub struct Located {
    pub path: Path,
    pub rule: Rule,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path, self.rule)
    }
}

/// `apiVersion`, `kind` and `metadata` belong to the API server, not to the kind's schema.
const ROOT_FIELDS_OF_THE_SERVER: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Visits every sub-schema below `root` with its path (the root's server-owned fields
/// skipped).
fn walk<'a>(root: &'a Value, visit: &mut dyn FnMut(&Path, &'a Value)) {
    fn go<'a>(schema: &'a Value, path: &Path, visit: &mut dyn FnMut(&Path, &'a Value)) {
        visit(path, schema);
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                if path.0.is_empty() && ROOT_FIELDS_OF_THE_SERVER.contains(&name.as_str()) {
                    continue;
                }
                go(sub, &path.child(Step::Prop(name.clone())), visit);
            }
        }
        if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
            go(items, &path.child(Step::Items), visit);
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            go(values, &path.child(Step::Values), visit);
        }
    }
    go(root, &Path::default(), visit);
}

/// Every property path the schema declares.
pub fn fields(root: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(root, &mut |path, _| {
        if matches!(path.0.last(), Some(Step::Prop(_))) {
            out.insert(path.clone());
        }
    });
    out
}

/// Every rule the schema declares, in schema order.
pub fn rules(root: &Value) -> Vec<Located> {
    let mut out = Vec::new();
    walk(root, &mut |path, schema| {
        let mut push = |rule| {
            out.push(Located {
                path: path.clone(),
                rule,
            });
        };
        let num = |k: &str| schema.get(k).and_then(Value::as_f64);
        let count = |k: &str| schema.get(k).and_then(Value::as_u64);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            push(Rule::Required(name.to_owned()));
        }
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            push(Rule::IntOrString);
        } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
            push(Rule::Type(t.to_owned()));
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            push(Rule::Enum(values.clone()));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            push(Rule::Pattern(p.to_owned()));
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time") {
            push(Rule::DateTime);
        }
        if let Some(n) = num("minimum") {
            push(Rule::Minimum(n));
        }
        if let Some(n) = num("maximum") {
            push(Rule::Maximum(n));
        }
        if let Some(n) = count("minLength") {
            push(Rule::MinLength(n));
        }
        if let Some(n) = count("maxLength") {
            push(Rule::MaxLength(n));
        }
        if let Some(n) = count("minItems") {
            push(Rule::MinItems(n));
        }
        if let Some(n) = count("maxItems") {
            push(Rule::MaxItems(n));
        }
    });
    out
}

/// Candidate strings for patterns: plausible Kubernetes values first, odd ones last.
const STRING_CANDIDATES: [&str; 10] = [
    "Ready",
    "a",
    "example.com/Ready",
    "1",
    "100m",
    "a-b",
    "",
    " ",
    "-",
    "!",
];

fn pattern_of(schema: &Value) -> Option<Regex> {
    schema
        .get("pattern")
        .and_then(Value::as_str)
        .map(|p| Regex::new(p).expect("the fake API server compiled it too"))
}

fn length_ok(schema: &Value, s: &str) -> bool {
    let n = s.chars().count() as u64;
    schema
        .get("minLength")
        .and_then(Value::as_u64)
        .is_none_or(|m| n >= m)
        && schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_none_or(|m| n <= m)
}

/// The smallest valid value of `schema` (required properties only), or `None` when none can be
/// built (a pattern no candidate matches).
pub fn synth(schema: &Value) -> Option<Value> {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
    {
        return Some(first.clone());
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return Some(json!(1));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") | None => {
            let mut map = Map::new();
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let sub = schema.get("properties")?.get(name)?;
                map.insert(name.to_owned(), synth(sub)?);
            }
            Some(Value::Object(map))
        }
        Some("array") => {
            let n = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            let item = schema.get("items")?;
            (0..n)
                .map(|_| synth(item))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array)
        }
        Some("string") => {
            if schema.get("format").and_then(Value::as_str) == Some("date-time") {
                return Some(json!("2026-08-28T00:00:00Z"));
            }
            let pattern = pattern_of(schema);
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && pattern.is_none()
            {
                return Some(Value::String("a".repeat(usize::try_from(min).ok()?.max(1))));
            }
            STRING_CANDIDATES
                .iter()
                .find(|s| length_ok(schema, s) && pattern.as_ref().is_none_or(|p| p.is_match(s)))
                .map(|s| json!(s))
        }
        Some("integer") | Some("number") => {
            let min = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            let value = min.max(0.0);
            let max = schema.get("maximum").and_then(Value::as_f64);
            let value = max.map_or(value, |m| value.min(m));
            #[allow(clippy::cast_possible_truncation)]
            Some(json!(value as i64))
        }
        Some("boolean") => Some(json!(true)),
        Some(_) => None,
    }
}

/// A minimal valid instance of `root` in which `path` exists, with `leaf` applied to the value
/// at `path` (given that value's schema).
fn realize(
    schema: &Value,
    path: &[Step],
    leaf: &mut dyn FnMut(&Value, &mut Value) -> Option<()>,
) -> Option<Value> {
    let mut value = synth(schema)?;
    match path.split_first() {
        None => {
            leaf(schema, &mut value)?;
        }
        Some((Step::Prop(name), rest)) => {
            let sub = schema.get("properties")?.get(name)?;
            let child = realize(sub, rest, leaf)?;
            value.as_object_mut()?.insert(name.clone(), child);
        }
        Some((Step::Items, rest)) => {
            let child = realize(schema.get("items")?, rest, leaf)?;
            let items = value.as_array_mut()?;
            match items.first_mut() {
                Some(first) => *first = child,
                None => items.push(child),
            }
        }
        Some((Step::Values, rest)) => {
            let child = realize(schema.get("additionalProperties")?, rest, leaf)?;
            value.as_object_mut()?.insert("key".into(), child);
        }
    }
    Some(value)
}

/// A minimal valid instance of `root` in which `path` exists: the control for the objects
/// [`breaking`] builds at that path.
pub fn valid_with(root: &Value, path: &Path) -> Option<Value> {
    realize(root, &path.0, &mut |_, _| Some(()))
}

/// A wrong-typed value for a schema of type `t`.
fn wrong_type(t: &str) -> Value {
    match t {
        "string" => json!(true),
        _ => json!("not-a-value-of-this-type"),
    }
}

/// A string that breaks `pattern` but keeps the length bounds, if there is one.
fn breaking_string(schema: &Value) -> Option<String> {
    let pattern = pattern_of(schema)?;
    let odd = ["!", " ", "-", "a b", "_", "..", "A!", "-a-", "Not Valid!"];
    odd.iter()
        .chain(STRING_CANDIDATES.iter())
        .find(|s| !pattern.is_match(s) && length_ok(schema, s))
        .or_else(|| odd.iter().find(|s| !pattern.is_match(s)))
        .map(|s| (*s).to_owned())
}

/// An instance of `root` that is valid except for `rule` at its path, or `None` when the
/// rule cannot be broken alone (e.g. an enum of every value) or no instance can be built.
pub fn breaking(root: &Value, located: &Located) -> Option<Value> {
    let rule = located.rule.clone();
    realize(root, &located.path.0, &mut |schema, value| {
        match &rule {
            Rule::Required(name) => {
                value.as_object_mut()?.remove(name)?;
            }
            Rule::Type(t) => *value = wrong_type(t),
            Rule::IntOrString => *value = json!(true),
            Rule::Enum(values) => {
                let is_string = values.iter().all(Value::is_string);
                let outsider = if is_string {
                    json!("NotOneOfTheListedValues")
                } else {
                    json!(987_654_321)
                };
                if values.contains(&outsider) {
                    return None;
                }
                *value = outsider;
            }
            Rule::Pattern(_) => *value = json!(breaking_string(schema)?),
            Rule::DateTime => *value = json!("not-a-date"),
            Rule::Minimum(n) => *value = json!((n - 1.0).floor() as i64),
            Rule::Maximum(n) => *value = json!((n + 1.0).ceil() as i64),
            Rule::MinLength(n) => {
                let n = usize::try_from(*n).ok()?.checked_sub(1)?;
                *value = json!("a".repeat(n));
            }
            Rule::MaxLength(n) => *value = json!("a".repeat(usize::try_from(*n).ok()? + 1)),
            Rule::MinItems(n) => {
                let n = usize::try_from(*n).ok()?.checked_sub(1)?;
                let item = synth(schema.get("items")?)?;
                *value = Value::Array(vec![item; n]);
            }
            Rule::MaxItems(n) => {
                let item = synth(schema.get("items")?)?;
                *value = Value::Array(vec![item; usize::try_from(*n).ok()? + 1]);
            }
        }
        Some(())
    })
}

/// The rules of `rules` keyed for comparison between two schemas (`path rule` text).
pub fn rule_keys(rules: &[Located]) -> BTreeMap<String, &Located> {
    rules.iter().map(|r| (r.to_string(), r)).collect()
}
