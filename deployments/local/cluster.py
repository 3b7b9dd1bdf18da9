"""Several Ray nodes on this one machine, running the app: the cluster tests and the
node-loss and autoscaling benchmarks start it.

Each node is a real raylet with its own worker processes (``ray.cluster_utils.Cluster``,
the harness of Ray's own multi-node tests), all on 127.0.0.1, with the environment
``deployments.local`` gives a single-node instance (loopback, Serve's high-throughput
mode with the HAProxy shim). Worker nodes carry a custom resource ``node<N>`` so a
test can pin something to one of them. Killing a worker node SIGKILLs its raylet and
every worker process on it, as a machine loss or the OOM killer would.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deployments import local

REPO = Path(__file__).resolve().parents[2]


class LocalCluster:
    """A head node and ``workers`` worker nodes of ``cpus`` logical CPUs each."""

    def __init__(self, workers: int = 2, cpus: int = 2, object_store_mb: int = 150,
                 system_config: dict[str, Any] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="ff-rayc-", dir="/tmp")
        env = {**local.LOOPBACK_ENV, **local.fast_serve_env(self.temp_dir)}
        local.apply_env(env)  # every node's processes inherit them
        # Ray reads some of them when it is imported (the node address among them)
        from ray.cluster_utils import Cluster

        self._env = {k: os.environ[k] for k in env}
        # the harness records the cluster's address under Ray's default temp dir
        # (/tmp/ray/ray_current_cluster): keep that file inside this cluster's dir
        self._tmpdir_was = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = self.temp_dir
        os.makedirs(os.path.join(self.temp_dir, "ray"), exist_ok=True)
        self._cpus = cpus
        self._object_store = object_store_mb * 1024 * 1024
        # log_to_stderr False: each node's daemons log to files, as ray.init's do
        head = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False,
                "object_store_memory": self._object_store, "temp_dir": self.temp_dir,
                "log_to_stderr": False}
        if system_config:
            head["_system_config"] = system_config
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.workers: list[Any] = []
        self._resources: dict[str, str] = {}
        self._next = 1
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> Any:
        """Start one more worker node (a node that joins, or rejoins)."""
        resource = f"node{self._next}"
        node = self.cluster.add_node(num_cpus=self._cpus, node_ip_address="127.0.0.1",
                                     object_store_memory=self._object_store,
                                     log_to_stderr=False, resources={resource: 1})
        self._next += 1
        self._resources[node.node_id] = resource
        self.workers.append(node)
        return node

    def connect(self, namespace: str = "serve") -> None:
        import ray

        ray.init(address=self.cluster.address, namespace=namespace, log_to_driver=False,
                 runtime_env={"env_vars": {**self._env, "PYTHONPATH": str(REPO)}})

    def deploy(self, config: dict[str, Any], timeout_s: float = 600.0) -> None:
        """Deploy a serve config (``deployments.local.load_config``) on the cluster."""
        local.start(config, timeout_s=timeout_s)

    def kill_worker(self, node: Any) -> None:
        """SIGKILL a worker node's raylet and every process on it."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def resource(self, node: Any) -> str:
        """The custom resource only that worker node has (``node<N>``): ask for a
        fraction of it to pin an actor or replica there."""
        return self._resources[node.node_id]

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                try:
                    serve.shutdown()
                finally:
                    ray.shutdown()
        finally:
            self.cluster.shutdown()
            if self._tmpdir_was is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = self._tmpdir_was
            shutil.rmtree(self.temp_dir, ignore_errors=True)
