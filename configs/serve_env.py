"""The environment that puts Ray Serve in the mode facefleet runs in, everywhere:
local instances (``deployments.local``) and the KubeRay manifest
(``configs/make_rayservice.py``) both set it."""

#: Serve's high-throughput mode: HAProxy is the HTTP front instead of Serve's Python
#: proxy and forwards to ingress replicas that serve HTTP themselves; calls between
#: deployments go over gRPC; user code and routers run on the replica's own loop.
FAST_SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}
