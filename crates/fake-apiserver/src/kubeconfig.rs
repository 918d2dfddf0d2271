//! A kubeconfig pointing at the fake server, for consumers that load configuration from a file.

/// Renders a kubeconfig with one cluster, context and (credential-less) user, all named
/// `fake-apiserver`, with `current-context` set.
pub(crate) fn render(server_url: &str, namespace: &str) -> String {
    // JSON string literals are valid YAML scalars, which sidesteps YAML quoting rules.
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake-apiserver
  cluster:
    server: {server}
contexts:
- name: fake-apiserver
  context:
    cluster: fake-apiserver
    user: fake-apiserver
    namespace: {namespace}
current-context: fake-apiserver
users:
- name: fake-apiserver
  user: {{}}
preferences: {{}}
",
        server = q(server_url),
        namespace = q(namespace),
    )
}
