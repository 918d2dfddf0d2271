"""The official Kubernetes Python client's watch against the fake cluster: create a
SandboxClaim, watch it (field selector, from the create's resourceVersion) until Ready=True,
delete it and watch the DELETED event. Prints one JSON line of the events seen.

Usage: python kubernetes_watch.py WARM_POOL NAMESPACE CLAIM   (KUBECONFIG names the cluster)
"""

import json
import sys

from kubernetes import client, config, watch

pool, namespace, name = sys.argv[1], sys.argv[2], sys.argv[3]
GROUP, VERSION, PLURAL = "extensions.agents.x-k8s.io", "v1beta1", "sandboxclaims"

config.load_kube_config()
api = client.CustomObjectsApi()
created = api.create_namespaced_custom_object(
    GROUP, VERSION, namespace, PLURAL,
    {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SandboxClaim",
        "metadata": {"name": name},
        "spec": {"warmPoolRef": {"name": pool}},
    },
)


def ready(claim):
    conditions = (claim.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


events = []
w = watch.Watch()
for event in w.stream(
    api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
    field_selector=f"metadata.name={name}",
    resource_version=created["metadata"]["resourceVersion"],
    timeout_seconds=60,
):
    claim = event["object"]
    events.append([event["type"], ready(claim), (claim.get("status") or {}).get("sandbox", {}).get("name")])
    if ready(claim):
        w.stop()

api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
w = watch.Watch()
for event in w.stream(
    api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
    field_selector=f"metadata.name={name}",
    resource_version=created["metadata"]["resourceVersion"],
    timeout_seconds=60,
):
    if event["type"] == "DELETED":
        events.append(["DELETED", False, None])
        w.stop()

print(json.dumps({"events": events}))
