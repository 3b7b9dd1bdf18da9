#!/bin/sh
# Ray Serve's HAProxy, with every listener on loopback.
#
# In high-throughput mode (RAY_SERVE_ENABLE_HA_PROXY=1) Ray Serve runs HAProxy
# in front of the ingress replicas. Its generated configuration binds the
# client frontend to http_options.host (127.0.0.1 locally), but also a stats
# page and a Prometheus exporter on every interface. deployments/local.py
# points RAY_SERVE_HAPROXY_BINARY_PATH here for local runs: this copies the
# configuration given with -f, rebinds those two listeners to 127.0.0.1, and
# runs the real binary (FACEFLEET_HAPROXY_BINARY) with the copy. Ray's own
# file is left as written, so its change detection and reloads work as usual.
set -eu
real="${FACEFLEET_HAPROXY_BINARY:?FACEFLEET_HAPROXY_BINARY is not set}"
next_is_cfg=0
for arg do
    shift
    if [ "$next_is_cfg" = 1 ]; then
        sed -E 's/^([[:space:]]*bind[[:space:]]+)(\*|0\.0\.0\.0)?:/\1127.0.0.1:/' "$arg" > "$arg.loopback"
        arg="$arg.loopback"
        next_is_cfg=0
    elif [ "$arg" = "-f" ]; then
        next_is_cfg=1
    fi
    set -- "$@" "$arg"
done
exec "$real" "$@"
