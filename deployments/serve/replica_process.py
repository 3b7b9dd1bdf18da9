"""What every Serve replica process of the app needs before Serve builds its replica.

Imported (through ``deployments/__init__.py``) when a replica process loads its
deployment class, which Serve does *before* it creates the replica's
inter-deployment gRPC server. :func:`prepare` does three things there:

- **gRPC on the node address, not every interface.** Serve's high-throughput
  mode runs a gRPC server in every replica for calls between deployments. Ray
  binds it to ``[::]:0`` (every interface), unauthenticated unless Ray's token
  auth or TLS is on, and it unpickles what it receives. Callers reach it at the
  replica's node IP (``ReplicaWrapper.stub``), so binding to that address is
  enough: ``127.0.0.1`` locally, the pod / host IP on a cluster. ``RAY_USE_TLS``
  is honoured as before (Ray's own helper still adds the port).
- **Messages as large as the API accepts.** Serve keeps gRPC's 4 MiB default
  for those calls (``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``), so any image
  over about 4 MiB sent from the Ingress to the Detector failed with a 500.
  Unless that variable is set, the limit becomes :data:`MAX_MESSAGE_BYTES`; the
  Ingress refuses to start when it is below the request limit
  (:func:`check_message_limit`).
- **Logs that reach the replica's log file at once.** In high-throughput mode
  Serve buffers a replica's log records (1,000 of them) and redirects stderr to
  its logger at INFO, so a traceback written to stderr waited in memory, at INFO,
  forever. The app's loggers instead hand their records to Serve's own handlers
  with their level intact, and a warning or an error is flushed at once: it is
  in ``logs/serve/replica_<app>_<deployment>_<id>.log`` and the dashboard's log
  view as soon as it happens.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

#: the gRPC message limit between deployments unless the operator sets
#: RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH: gRPC's own maximum (a signed int)
MAX_MESSAGE_BYTES = 2**31 - 1
ENV_MESSAGE_LIMIT = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
#: what a request's images cost on top of their bytes once pickled for the hop
MESSAGE_OVERHEAD_BYTES = 1024 * 1024
_done = False


def in_replica() -> bool:
    """True in a Serve replica process (Serve's replica module is loaded there first)."""
    return "ray.serve._private.replica" in sys.modules


def prepare() -> None:
    """Bind the replica's gRPC server to the node address, raise its message limit,
    and route the app's logs to Serve's; once per process, only in a replica."""
    global _done
    if _done or not in_replica():
        return
    _done = True
    _bind_grpc_to_node_address()
    _raise_message_limit()
    _route_logs_to_serve()


def _bind_grpc_to_node_address() -> None:
    import ray
    from ray.serve._private import replica

    add_port = replica.add_port_to_grpc_server
    if getattr(add_port, "facefleet", False):
        return

    def add_port_on_node_address(server, address: str) -> int:
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            node_ip = ray.util.get_node_ip_address()
            address = f"[{node_ip}]:{port}" if ":" in node_ip else f"{node_ip}:{port}"
        return add_port(server, address)

    add_port_on_node_address.facefleet = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_node_address


def _raise_message_limit() -> None:
    if os.environ.get(ENV_MESSAGE_LIMIT):
        return  # the operator's choice stands (Ray read it at import)
    from ray.serve._private import replica
    from ray.serve._private.request_router import replica_wrapper

    for module in (replica, replica_wrapper):  # the server's and the caller's side
        module.RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH = MAX_MESSAGE_BYTES


def message_limit() -> int:
    """The gRPC message limit between deployments in this process."""
    from ray.serve._private.request_router import replica_wrapper

    return int(replica_wrapper.RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH)


def check_message_limit(max_request_bytes: int) -> None:
    """Refuse to start when a request the API accepts could not cross a hop."""
    if not in_replica():
        return
    limit = message_limit()
    if limit < max_request_bytes + MESSAGE_OVERHEAD_BYTES:
        raise RuntimeError(
            f"{ENV_MESSAGE_LIMIT}={limit} is below images.max_request_bytes "
            f"({max_request_bytes}) plus {MESSAGE_OVERHEAD_BYTES} bytes of overhead: "
            f"requests that large would fail between deployments; raise {ENV_MESSAGE_LIMIT} "
            "or lower images.max_request_bytes")


class ServeLogForwarder(logging.Handler):
    """Hands a record to the handlers of Serve's replica logger, level intact, and
    flushes them for warnings and errors (Serve buffers records in memory)."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger("ray.serve").handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
                if record.levelno >= logging.WARNING:
                    handler.flush()


def _route_logs_to_serve() -> None:
    root = logging.getLogger()
    # a StreamHandler on stderr would reach Serve's logger again, at INFO, through
    # the stderr redirect: Serve's handlers are the one way out
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(ServeLogForwarder())
    root.setLevel(logging.INFO)
