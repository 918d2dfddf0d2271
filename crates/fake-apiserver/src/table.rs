//! Server-side `Table`s (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): what
//! `kubectl get` prints, with a CRD version's `additionalPrinterColumns`.
//!
//! As upstream, the first column is `Name`; a CRD version without printer columns gets `Age`
//! (`.metadata.creationTimestamp`). `date` cells are ages (`5s`, `3m12s`, `2d`), a JSONPath
//! that finds nothing gives an empty (`null`) cell, several matches are joined with commas.
//! Rows carry the object as `PartialObjectMetadata` (`includeObject=Metadata`, the default),
//! the whole object (`Object`) or nothing (`None`).
//!
//! # Caveats
//!
//! The JSONPath subset is what printer columns use: `.field`, `['field']`, `[N]`, `[*]` and
//! `[?(@.path=='value')]` (also `!=`, numbers and booleans); no recursive descent or slices.

use serde_json::{Value, json};

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrinterColumn {
    pub(crate) name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub(crate) column_type: String,
    pub(crate) format: String,
    pub(crate) description: String,
    pub(crate) json_path: String,
    /// 0 for the default view, more for `-o wide`.
    pub(crate) priority: i64,
}

impl PrinterColumn {
    fn new(name: &str, column_type: &str, json_path: &str, priority: i64) -> Self {
        Self {
            name: name.into(),
            column_type: column_type.into(),
            format: String::new(),
            description: String::new(),
            json_path: json_path.into(),
            priority,
        }
    }

    fn age() -> Self {
        let mut age = Self::new("Age", "date", ".metadata.creationTimestamp", 0);
        age.description = "CreationTimestamp is a timestamp representing the server time when this object was created.".into();
        age
    }

    /// The columns of one `spec.versions[]` entry of a CRD.
    pub(crate) fn from_crd_version(version: &Value) -> Vec<Self> {
        let columns: Vec<Self> = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let name = text("name");
                let json_path = text("jsonPath");
                (!name.is_empty() && !json_path.is_empty()).then(|| Self {
                    name,
                    column_type: text("type"),
                    format: text("format"),
                    description: text("description"),
                    json_path,
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                })
            })
            .collect();
        if columns.is_empty() {
            vec![Self::age()]
        } else {
            columns
        }
    }

    /// What the built-in namespaces show: phase and Age.
    pub(crate) fn namespaces() -> Vec<Self> {
        vec![
            Self::new("Status", "string", ".status.phase", 0),
            Self::age(),
        ]
    }

    /// What the built-in pods show: phase, Age, and the pod IP under `-o wide`.
    pub(crate) fn pods() -> Vec<Self> {
        vec![
            Self::new("Status", "string", ".status.phase", 0),
            Self::age(),
            Self::new("IP", "string", ".status.podIP", 1),
        ]
    }
}

/// What a `Table` row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(param: Option<&str>) -> Self {
        match param {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// `true` when `accept` asks for a `meta.k8s.io` `Table` (kubectl lists it first, with plain
/// JSON as the fallback).
pub(crate) fn wanted(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// A `Table` of `objects` with `columns` (after the `Name` column).
pub(crate) fn table(
    columns: &[PrinterColumn],
    objects: &[Value],
    resource_version: &str,
    include: IncludeObject,
) -> Value {
    let mut definitions = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    })];
    definitions.extend(columns.iter().map(|c| {
        json!({
            "name": c.name,
            "type": c.column_type,
            "format": c.format,
            "description": c.description,
            "priority": c.priority,
        })
    }));
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": objects.iter().map(|o| row(columns, o, include)).collect::<Vec<_>>(),
    })
}

fn row(columns: &[PrinterColumn], object: &Value, include: IncludeObject) -> Value {
    let name = object
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    let mut cells = vec![name];
    cells.extend(columns.iter().map(|c| cell(c, object)));
    let mut row = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
        }
        IncludeObject::Object => row["object"] = object.clone(),
    }
    row
}

fn cell(column: &PrinterColumn, object: &Value) -> Value {
    let found = evaluate(&column.json_path, object);
    let value = match found.as_slice() {
        [] => return Value::Null,
        [one] => (*one).clone(),
        many => Value::String(
            many.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    if column.column_type == "date"
        && let Some(since) = value
            .as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    {
        let seconds = (jiff::Timestamp::now().as_second() - since.as_second()).max(0);
        return Value::String(human_duration(seconds));
    }
    value
}

/// kubectl's `HumanDuration`: `45s`, `3m12s`, `25m`, `5h3m`, `30h`, `3d4h`, `120d`, `3y45d`.
pub(crate) fn human_duration(seconds: i64) -> String {
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    match seconds {
        s if s < 120 => format!("{s}s"),
        _ if minutes < 10 => match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        },
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        },
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 192 => match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        },
        _ if days < 730 => format!("{days}d"),
        _ if days < 2920 => match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        },
        _ => format!("{}y", days / 365),
    }
}

/// One step of a printer-column JSONPath.
#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter {
        path: Vec<String>,
        equal: bool,
        value: Value,
    },
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let mut steps = Vec::new();
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_owned()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = bracket_end(r)?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            steps.push(if inner == "*" {
                Step::All
            } else if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
            {
                parse_filter(filter)?
            } else if let Ok(i) = inner.parse() {
                Step::Index(i)
            } else {
                Step::Field(unquote(inner)?.to_owned())
            });
        } else {
            return None;
        }
    }
    Some(steps)
}

/// The position of the `]` closing a bracket, skipping quoted text.
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

fn parse_filter(filter: &str) -> Option<Step> {
    let (lhs, rhs, equal) = match filter.split_once("==") {
        Some((l, r)) => (l, r, true),
        None => {
            let (l, r) = filter.split_once("!=")?;
            (l, r, false)
        }
    };
    let path = lhs
        .trim()
        .strip_prefix("@.")?
        .split('.')
        .map(str::to_owned)
        .collect();
    let rhs = rhs.trim();
    let value = match unquote(rhs) {
        Some(text) => Value::String(text.to_owned()),
        None => serde_json::from_str(rhs).ok()?,
    };
    Some(Step::Filter { path, equal, value })
}

/// Every value `path` selects in `object`; an unparsable path selects nothing.
fn evaluate<'a>(path: &str, object: &'a Value) -> Vec<&'a Value> {
    let Some(steps) = parse(path) else {
        return Vec::new();
    };
    let mut current = vec![object];
    for step in &steps {
        let mut next = Vec::new();
        for value in current {
            match step {
                Step::Field(f) => next.extend(value.get(f)),
                Step::Index(i) => next.extend(value.get(*i)),
                Step::All => match value {
                    Value::Array(items) => next.extend(items),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                },
                Step::Filter {
                    path,
                    equal,
                    value: wanted,
                } => {
                    let items = value.as_array().into_iter().flatten();
                    next.extend(items.filter(|item| {
                        let found = path.iter().try_fold(*item, |v, k| v.get(k));
                        (found == Some(wanted)) == *equal
                    }));
                }
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> Value {
        // Three hours ago: an age that reads `3h` for a whole minute.
        let created = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(3);
        let created = created.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        json!({"metadata": {"name": "c1", "creationTimestamp": created},
            "status": {"sandbox": {"name": "s1"}, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "Done"},
                {"type": "Ready", "status": "True", "reason": "DependenciesReady"}]}})
    }

    #[test]
    fn printer_column_paths_select_by_field_index_and_filter() {
        let c = claim();
        let one = |p: &str| evaluate(p, &c);
        assert_eq!(
            one(".status.conditions[?(@.type=='Ready')].status"),
            [&json!("True")]
        );
        assert_eq!(one("{.status.sandbox['name']}"), [&json!("s1")]);
        assert_eq!(one(".status.conditions[0].reason"), [&json!("Done")]);
        assert_eq!(one(".status.conditions[*].type").len(), 2);
        assert_eq!(
            one(".status.conditions[?(@.type!='Ready')].reason"),
            [&json!("Done")]
        );
        assert!(one(".status.missing").is_empty());
        assert!(one(".status[unclosed").is_empty());
    }

    #[test]
    fn a_table_has_the_name_column_then_the_crd_columns_and_ages_for_dates() {
        let version = json!({"additionalPrinterColumns": [
            {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type=='Ready')].status"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.missing"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]});
        let columns = PrinterColumn::from_crd_version(&version);
        let t = table(&columns, &[claim()], "7", IncludeObject::Metadata);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Ready", "Reason", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "c1");
        assert_eq!(cells[1], "True");
        assert_eq!(cells[2], Value::Null);
        assert_eq!(cells[3], "3h");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(
            PrinterColumn::from_crd_version(&json!({})),
            vec![PrinterColumn::age()]
        );
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let cases = [
            (45, "45s"),
            (192, "3m12s"),
            (1500, "25m"),
            (18_180, "5h3m"),
            (108_000, "30h"),
            (273_600, "3d4h"),
            (10_368_000, "120d"),
        ];
        for (seconds, text) in cases {
            assert_eq!(human_duration(seconds), text);
        }
    }

    #[test]
    fn only_a_meta_table_media_type_asks_for_a_table() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
        assert!(!wanted("application/json;as=Table;g=example.com"));
    }
}
