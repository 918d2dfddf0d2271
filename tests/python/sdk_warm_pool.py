"""The official agent-sandbox Python SDK against the fake cluster: claim a sandbox from a warm
pool, wait until it is Ready, delete it. Prints one JSON line of what it saw.

Usage: python sdk_warm_pool.py WARM_POOL NAMESPACE   (KUBECONFIG names the cluster)
"""

import json
import sys

from k8s_agent_sandbox import SandboxClient
from k8s_agent_sandbox.models import SandboxInClusterConnectionConfig

pool, namespace = sys.argv[1], sys.argv[2]
# In-cluster connection: nothing is dialled until a command runs, and none does here.
client = SandboxClient(connection_config=SandboxInClusterConnectionConfig())
sandbox = client.create_sandbox(pool, namespace=namespace, sandbox_ready_timeout=60)
seen = {
    "claim": sandbox.claim_name,
    "sandbox": sandbox.sandbox_id,
    "pod_ip": sandbox.get_pod_ip(),
    "claims_while_held": client.list_all_sandboxes(namespace),
}
client.delete_sandbox(sandbox.claim_name, namespace=namespace)
seen["claims_after_delete"] = client.list_all_sandboxes(namespace)
print(json.dumps(seen))
