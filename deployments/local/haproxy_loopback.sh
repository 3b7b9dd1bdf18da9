#!/bin/sh
# Ray Serve's HAProxy, with every listener on loopback and the API's error envelope.
#
# In high-throughput mode (RAY_SERVE_ENABLE_HA_PROXY=1) Ray Serve runs HAProxy
# in front of the ingress replicas. Its generated configuration binds the
# client frontend to http_options.host (127.0.0.1 locally), but also a stats
# page and a Prometheus exporter on every interface. deployments/local/__init__.py
# points RAY_SERVE_HAPROXY_BINARY_PATH here for local runs: this copies the
# configuration given with -f, rebinds those two listeners to 127.0.0.1, and
# runs the real binary (FACEFLEET_HAPROXY_BINARY) with the copy. Ray's own
# file is left as written, so its change detection and reloads work as usual.
#
# With FACEFLEET_HAPROXY_RESPONSES (a directory written by deployments/local/__init__.py)
# the copy also answers like the rest of the API where HAProxy answers itself:
# while no application is deployed on a path (start-up), Ray's plain-text 404
# becomes the rule in no_app.cfg (a JSON 503 `unavailable` with Retry-After),
# and HAProxy's own 502/503/504 (Ray's errorfile: a plain-text 500) become
# unavailable.http (the same envelope, 503 with Retry-After). The backup
# server of an application's backend (Serve's fallback proxy, which holds a
# request until an ingress replica is up, for as long as that takes) is kept
# but disabled: with no ingress replica up, HAProxy answers that 503 at once.
#
# Always: the admin socket (Ray writes `mode 666 level admin`: anyone on the
# machine could drive HAProxy) is made 0600, and the defaults get a
# `timeout http-request` (FACEFLEET_HAPROXY_HTTP_REQUEST_TIMEOUT_S, 10 s), so a
# client that sends its request headers a byte at a time is cut off (408)
# instead of holding a connection for as long as it likes.
set -eu
real="${FACEFLEET_HAPROXY_BINARY:?FACEFLEET_HAPROXY_BINARY is not set}"
resp="${FACEFLEET_HAPROXY_RESPONSES:-}"
hreq="${FACEFLEET_HAPROXY_HTTP_REQUEST_TIMEOUT_S:-10}"
case "$hreq" in ''|*[!0-9]*) echo "FACEFLEET_HAPROXY_HTTP_REQUEST_TIMEOUT_S: whole seconds" >&2; exit 2;; esac
sock='s/^([[:space:]]*stats[[:space:]]+socket[[:space:]].*[[:space:]]mode[[:space:]]+)[0-7]+/\1600/'
hto="s/^defaults\$/defaults\n    timeout http-request ${hreq}s/"
next_is_cfg=0
for arg do
    shift
    if [ "$next_is_cfg" = 1 ]; then
        if [ -n "$resp" ] && [ -f "$resp/no_app.cfg" ] && [ -f "$resp/unavailable.http" ]; then
            sed -E -e "$sock" -e "$hto" \
                -e 's/^([[:space:]]*bind[[:space:]]+)(\*|0\.0\.0\.0)?:/\1127.0.0.1:/' \
                -e "s#^([[:space:]]*errorfile[[:space:]]+50[234][[:space:]]+).*#\\1$resp/unavailable.http#" \
                -e 's/^([[:space:]]*server[[:space:]].*[[:space:]]check backup)$/\1 disabled/' \
                -e "/^[[:space:]]*http-request return status 404 content-type text\\/plain /{
r $resp/no_app.cfg
d
}" "$arg" > "$arg.loopback"
        else
            sed -E -e "$sock" -e "$hto" \
                -e 's/^([[:space:]]*bind[[:space:]]+)(\*|0\.0\.0\.0)?:/\1127.0.0.1:/' \
                "$arg" > "$arg.loopback"
        fi
        arg="$arg.loopback"
        next_is_cfg=0
    elif [ "$arg" = "-f" ]; then
        next_is_cfg=1
    fi
    set -- "$@" "$arg"
done
# HAProxy dies with the process that started it (Serve's HAProxy manager
# actor): a reload started while the service stops (`-sf <old pid>`) would
# otherwise outlive its killed parent, reparented to init and still holding the
# HTTP port. PR_SET_PDEATHSIG survives exec; it is set here, in the process
# that becomes HAProxy, and the parent is checked after setting it (it may have
# died in between).
py="${FACEFLEET_HAPROXY_PYTHON:-}"
if [ -n "$py" ]; then
    exec "$py" -I -S -c '
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):
    sys.exit("haproxy: its parent is gone")
os.execv(sys.argv[2], sys.argv[2:])
' "$PPID" "$real" "$@"
fi
exec "$real" "$@"
