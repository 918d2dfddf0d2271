//! `/openapi/v2` as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`),
//! the only form client-go's discovery client reads (kubectl loads it before every `apply`).
//!
//! The messages are the subset of gnostic's `openapi.v2` (`OpenAPIv2.proto`) that a document
//! built from CRD schemas uses, with the same field numbers; a `oneof` is written as its
//! alternatives' optional fields, which is the same wire format. Values of `default`, `enum`
//! and vendor extensions travel as `Any.yaml` text (JSON is YAML).

use prost::Message as _;
use serde_json::Value;

/// How clients ask for the protobuf form (`Accept`).
pub(crate) const ACCEPTED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// The `Content-Type` a real server answers with: the same type, spelt so that it parses as a
/// media type (`@` is not allowed in one).
pub(crate) const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

#[derive(Clone, PartialEq, prost::Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    definitions: Option<Definitions>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Definitions {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NamedSchema {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Schema>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AnyValue {
    #[prost(string, tag = "2")]
    yaml: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NamedAny {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Schema {
    #[prost(string, tag = "1")]
    reference: String,
    #[prost(string, tag = "2")]
    format: String,
    #[prost(string, tag = "3")]
    title: String,
    #[prost(string, tag = "4")]
    description: String,
    #[prost(message, optional, tag = "5")]
    default: Option<AnyValue>,
    #[prost(double, tag = "7")]
    maximum: f64,
    #[prost(double, tag = "9")]
    minimum: f64,
    #[prost(int64, tag = "11")]
    max_length: i64,
    #[prost(int64, tag = "12")]
    min_length: i64,
    #[prost(string, tag = "13")]
    pattern: String,
    #[prost(int64, tag = "14")]
    max_items: i64,
    #[prost(int64, tag = "15")]
    min_items: i64,
    #[prost(string, repeated, tag = "19")]
    required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    enumeration: Vec<AnyValue>,
    #[prost(message, optional, tag = "21")]
    additional_properties: Option<AdditionalPropertiesItem>,
    #[prost(message, optional, tag = "22")]
    r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    properties: Option<Properties>,
    #[prost(message, repeated, tag = "31")]
    vendor_extension: Vec<NamedAny>,
}

/// `oneof { Schema schema = 1; bool boolean = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
struct AdditionalPropertiesItem {
    #[prost(message, optional, boxed, tag = "1")]
    schema: Option<Box<Schema>>,
    #[prost(bool, optional, tag = "2")]
    boolean: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    value: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Properties {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Paths {
    #[prost(message, repeated, tag = "2")]
    path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NamedPathItem {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<PathItem>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PathItem {
    #[prost(message, optional, tag = "2")]
    get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    delete: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    patch: Option<Operation>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Operation {
    #[prost(string, tag = "5")]
    operation_id: String,
    #[prost(message, repeated, tag = "8")]
    parameters: Vec<ParametersItem>,
    #[prost(message, repeated, tag = "13")]
    vendor_extension: Vec<NamedAny>,
}

/// `oneof { Parameter parameter = 1; JsonReference json_reference = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    parameter: Option<Parameter>,
}

/// `oneof { BodyParameter body_parameter = 1; NonBodyParameter non_body_parameter = 2; }`.
#[derive(Clone, PartialEq, prost::Message)]
struct Parameter {
    #[prost(message, optional, tag = "2")]
    non_body_parameter: Option<NonBodyParameter>,
}

/// `oneof { … QueryParameterSubSchema query_parameter_sub_schema = 3; … }`.
#[derive(Clone, PartialEq, prost::Message)]
struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    query_parameter_sub_schema: Option<QueryParameter>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct QueryParameter {
    #[prost(string, tag = "2")]
    r#in: String,
    #[prost(string, tag = "3")]
    description: String,
    #[prost(string, tag = "4")]
    name: String,
    #[prost(string, tag = "6")]
    r#type: String,
}

fn yaml(value: &Value) -> AnyValue {
    AnyValue {
        yaml: value.to_string(),
    }
}

fn text(schema: &Value, key: &str) -> String {
    schema
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn named_schemas(map: Option<&Value>) -> Vec<NamedSchema> {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, s)| NamedSchema {
            name: name.clone(),
            value: Some(schema(s)),
        })
        .collect()
}

fn vendor_extensions(object: &Value) -> Vec<NamedAny> {
    object
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| NamedAny {
            name: k.clone(),
            value: Some(yaml(v)),
        })
        .collect()
}

fn schema(s: &Value) -> Schema {
    let number = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| s.get(k).and_then(Value::as_i64).unwrap_or(0);
    let additional_properties = s.get("additionalProperties").map(|a| match a {
        Value::Bool(b) => AdditionalPropertiesItem {
            schema: None,
            boolean: Some(*b),
        },
        other => AdditionalPropertiesItem {
            schema: Some(Box::new(schema(other))),
            boolean: None,
        },
    });
    Schema {
        reference: text(s, "$ref"),
        format: text(s, "format"),
        title: text(s, "title"),
        description: text(s, "description"),
        default: s.get("default").map(yaml),
        maximum: number("maximum"),
        minimum: number("minimum"),
        max_length: int("maxLength"),
        min_length: int("minLength"),
        pattern: text(s, "pattern"),
        max_items: int("maxItems"),
        min_items: int("minItems"),
        required: s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        enumeration: s
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(yaml)
            .collect(),
        additional_properties,
        r#type: s.get("type").and_then(Value::as_str).map(|t| TypeItem {
            value: vec![t.to_owned()],
        }),
        items: s.get("items").map(|i| ItemsItem {
            schema: vec![schema(i)],
        }),
        all_of: s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(schema)
            .collect(),
        properties: s.get("properties").map(|p| Properties {
            additional_properties: named_schemas(Some(p)),
        }),
        vendor_extension: vendor_extensions(s),
    }
}

fn operation(op: Option<&Value>) -> Option<Operation> {
    let op = op?;
    Some(Operation {
        operation_id: text(op, "operationId"),
        parameters: op
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|p| p.get("in").and_then(Value::as_str) == Some("query"))
            .map(|p| ParametersItem {
                parameter: Some(Parameter {
                    non_body_parameter: Some(NonBodyParameter {
                        query_parameter_sub_schema: Some(QueryParameter {
                            r#in: "query".into(),
                            description: text(p, "description"),
                            name: text(p, "name"),
                            r#type: text(p, "type"),
                        }),
                    }),
                }),
            })
            .collect(),
        vendor_extension: vendor_extensions(op),
    })
}

/// Encodes the JSON Swagger 2.0 document of [`crate::openapi::v2`].
pub(crate) fn encode(doc: &Value) -> Vec<u8> {
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, item)| NamedPathItem {
            name: name.clone(),
            value: Some(PathItem {
                get: operation(item.get("get")),
                put: operation(item.get("put")),
                post: operation(item.get("post")),
                delete: operation(item.get("delete")),
                patch: operation(item.get("patch")),
            }),
        })
        .collect();
    Document {
        swagger: text(doc, "swagger"),
        info: Some(Info {
            title: doc
                .pointer("/info/title")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            version: doc
                .pointer("/info/version")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
        }),
        paths: Some(Paths { path: paths }),
        definitions: Some(Definitions {
            additional_properties: named_schemas(doc.get("definitions")),
        }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_round_trips_through_the_wire_format() {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1"},
            "paths": {"/apis/g/v1/things/{name}": {"patch": {"operationId": "patchThing",
                "x-kubernetes-group-version-kind": {"group": "g", "version": "v1", "kind": "Thing"},
                "parameters": [{"name": "fieldValidation", "in": "query", "type": "string"}]}}},
            "definitions": {"g.v1.Thing": {"type": "object", "required": ["spec"],
                "x-kubernetes-group-version-kind": [{"group": "g", "version": "v1", "kind": "Thing"}],
                "properties": {"spec": {"type": "object", "additionalProperties": {"type": "string"}},
                    "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                    "list": {"type": "array", "items": {"$ref": "#/definitions/x"}}}}}});
        let bytes = encode(&doc);
        let back = Document::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.swagger, "2.0");
        let thing = &back.definitions.unwrap().additional_properties[0];
        assert_eq!(thing.name, "g.v1.Thing");
        let thing = thing.value.as_ref().unwrap();
        assert_eq!(thing.required, ["spec"]);
        assert_eq!(
            thing.vendor_extension[0].name,
            "x-kubernetes-group-version-kind"
        );
        let props = &thing.properties.as_ref().unwrap().additional_properties;
        let list = props.iter().find(|p| p.name == "list").unwrap();
        assert_eq!(
            list.value.as_ref().unwrap().items.as_ref().unwrap().schema[0].reference,
            "#/definitions/x"
        );
        let mode = props.iter().find(|p| p.name == "mode").unwrap();
        assert_eq!(mode.value.as_ref().unwrap().enumeration[1].yaml, "\"B\"");
        let patch = back.paths.unwrap().path[0]
            .value
            .clone()
            .unwrap()
            .patch
            .unwrap();
        let param = patch.parameters[0].parameter.clone().unwrap();
        assert_eq!(
            param
                .non_body_parameter
                .unwrap()
                .query_parameter_sub_schema
                .unwrap()
                .name,
            "fieldValidation"
        );
    }
}
