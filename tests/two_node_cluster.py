"""Two Ray nodes on this machine (ray.cluster_utils.Cluster), for tests/test_scale.py.

    python tests/two_node_cluster.py     prints {"address": GCS, "dashboard": URL} on one line, then keeps
                                         the cluster up until its stdin closes, and shuts it down

The head node has the custom resource `head`, the second node `second` (CPUs each: TEMPER_NODE_CPUS, default
2); a run puts its learner on one and its rollout workers on the other with ray.learner_resources /
ray.worker_resources. Each node has its own raylet and object store, so objects really travel between
nodes. Run it with RAY_TMPDIR set to a folder of its own: Cluster writes the address of "the" local cluster
under it, where another process's `ray.init(address="auto")` would otherwise find this one.
"""

import json
import os
import socket
import sys

from ray.cluster_utils import Cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start(cpus: int) -> tuple[Cluster, int]:
    """Head, then the second node; returns the cluster and its dashboard port. Ray gives a node 30 s to
    register (fixed in its code), which a busy 2-core machine can miss: then the cluster is torn down and
    started again, on new ports."""
    for attempt in range(4):
        cluster, port = Cluster(), free_port()
        try:
            # Free ports, not Ray's defaults: another cluster on this machine may hold those (the dashboard
            # agent on 52365 is what `ray job submit` needs on the head).
            cluster.add_node(num_cpus=cpus, resources={"head": 100}, include_dashboard=True,
                             dashboard_host="127.0.0.1", dashboard_port=port,
                             dashboard_agent_listen_port=free_port(), object_store_memory=300 << 20)
            cluster.add_node(num_cpus=cpus, resources={"second": 100}, object_store_memory=300 << 20)
            cluster.wait_for_nodes()
            return cluster, port
        except Exception as e:  # noqa: BLE001 - a node that did not come up in time
            print(f"two_node_cluster: attempt {attempt + 1} failed: {e}", file=sys.stderr, flush=True)
            cluster.shutdown()
    raise RuntimeError("two_node_cluster: the nodes did not start")


def main() -> None:
    cpus = int(os.environ.get("TEMPER_NODE_CPUS", "2"))
    cluster, port = start(cpus)
    try:
        print(json.dumps({"address": cluster.address, "dashboard": f"http://127.0.0.1:{port}"}), flush=True)
        sys.stdin.read()  # until the test closes it
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
