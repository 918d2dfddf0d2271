//! Kubernetes REST paths: what a request addresses (a discovery or OpenAPI document, a
//! collection, an object or its status, a pod's port-forward), its query and its verb.

use std::collections::HashMap;

use http::Method;

use crate::requests::Verb;

/// A parsed request path.
#[derive(Debug)]
pub(crate) enum Route {
    Version,
    CoreVersions,
    CoreResources,
    Groups,
    Group(String),
    Resources(String, String),
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3`: the index of group-version documents.
    OpenApiV3,
    /// `/openapi/v3/api/v1` (group `""`) or `/openapi/v3/apis/{group}/{version}`.
    OpenApiV3Doc(String, String),
    Object {
        group: String,
        version: String,
        namespace: Option<String>,
        plural: String,
        name: Option<String>,
        status: bool,
    },
    /// `GET /api/v1/namespaces/{ns}/pods/{name}/portforward` (a WebSocket upgrade).
    PortForward {
        namespace: String,
        name: String,
    },
    Unknown,
}

pub(crate) fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let obj = |group: &str, version: &str, namespace: Option<&str>, rest: &[&str]| {
        let (plural, name, status) = match rest {
            [plural] => (*plural, None, false),
            [plural, name] => (*plural, Some(*name), false),
            [plural, name, "status"] => (*plural, Some(*name), true),
            _ => return Route::Unknown,
        };
        Route::Object {
            group: group.to_owned(),
            version: version.to_owned(),
            namespace: namespace.map(str::to_owned),
            plural: plural.to_owned(),
            name: name.map(str::to_owned),
            status,
        }
    };
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3,
        ["openapi", "v3", "api", v] => Route::OpenApiV3Doc(String::new(), (*v).to_owned()),
        ["openapi", "v3", "apis", g, v] => Route::OpenApiV3Doc((*g).to_owned(), (*v).to_owned()),
        ["api"] => Route::CoreVersions,
        ["api", "v1"] => Route::CoreResources,
        ["api", "v1", "namespaces", ns, "pods", name, "portforward"] => Route::PortForward {
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
        },
        // A namespace itself, and its status: no resource is called `status`.
        ["api", "v1", "namespaces", name, "status"] => {
            obj("", "v1", None, &["namespaces", name, "status"])
        }
        ["api", "v1", "namespaces", ns, rest @ ..] if !rest.is_empty() => {
            obj("", "v1", Some(ns), rest)
        }
        ["api", "v1", rest @ ..] => obj("", "v1", None, rest),
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group((*g).to_owned()),
        ["apis", g, v] => Route::Resources((*g).to_owned(), (*v).to_owned()),
        ["apis", g, v, "namespaces", ns, rest @ ..] if !rest.is_empty() => {
            obj(g, v, Some(ns), rest)
        }
        ["apis", g, v, rest @ ..] => obj(g, v, None, rest),
        _ => Route::Unknown,
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn verb_of(
    method: &Method,
    route: &Route,
    query: &HashMap<String, String>,
) -> Option<Verb> {
    let named = match route {
        Route::Object { name, .. } => name.is_some(),
        _ => return (method == Method::GET).then_some(Verb::Get),
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    Some(match (method.clone(), named) {
        (Method::GET, true) => Verb::Get,
        (Method::GET, false) if watching => Verb::Watch,
        (Method::GET, false) => Verb::List,
        (Method::POST, false) => Verb::Create,
        (Method::PUT, true) => Verb::Update,
        (Method::PATCH, true) => Verb::Patch,
        (Method::DELETE, true) => Verb::Delete,
        (Method::DELETE, false) => Verb::DeleteCollection,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn openapi_documents_and_a_namespace_s_status_have_their_routes() {
        assert!(matches!(route("/openapi/v2"), Route::OpenApiV2));
        assert!(matches!(route("/openapi/v3"), Route::OpenApiV3));
        assert!(
            matches!(route("/openapi/v3/api/v1"), Route::OpenApiV3Doc(ref g, ref v) if g.is_empty() && v == "v1")
        );
        assert!(
            matches!(route("/openapi/v3/apis/g/v2"), Route::OpenApiV3Doc(ref g, ref v) if g == "g" && v == "v2")
        );
        assert!(matches!(route("/api/v1/namespaces/ns/status"),
            Route::Object { ref plural, ref name, namespace: None, status: true, .. } if plural == "namespaces" && name.as_deref() == Some("ns")));
        assert!(matches!(route("/api/v1/namespaces/ns"),
            Route::Object { ref plural, namespace: None, .. } if plural == "namespaces"));
        assert!(matches!(route("/api/v1/namespaces/ns/pods"),
            Route::Object { ref plural, ref namespace, .. } if plural == "pods" && namespace.as_deref() == Some("ns")));
    }

    #[test]
    fn paths_route_to_namespaced_and_cluster_scoped_objects() {
        assert!(matches!(route("/apis/g/v1/namespaces/ns/things/a/status"),
            Route::Object { ref namespace, ref name, status: true, .. } if namespace.as_deref() == Some("ns") && name.as_deref() == Some("a")));
        assert!(matches!(
            route("/apis/g/v1/things"),
            Route::Object {
                namespace: None,
                name: None,
                ..
            }
        ));
        assert!(matches!(route("/apis/g/v1"), Route::Resources(..)));
        assert!(matches!(
            route("/apis/g/v1/namespaces/ns/things/a/b/c"),
            Route::Unknown
        ));
    }
}
