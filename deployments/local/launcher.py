"""The process in front of a local instance: owns its signals, its start and its stop.

``python -m deployments.local`` runs this first; it starts the driver (the same
command, which starts Ray and Serve) as a child in a session of its own, and
stays in the caller's process group. Why two processes: Ray's daemons (GCS,
raylet, dashboard...) are the driver's children, in its process group, and a
SIGTERM to the whole group (``kill -- -PGID``, a shell wrapper's ``docker
stop``) killed them at once, before the driver could shut Serve down in order;
Ray's workers and HAProxy live in groups of their own, and what outlived its
parent stayed behind (HAProxy still holding the HTTP port). So:

- Ctrl-C, SIGTERM or SIGHUP to the launcher or its group becomes one SIGTERM to
  the driver, which shuts Serve and Ray down in order; a second signal kills the
  driver's group (the driver and Ray's daemons) at once.
- If the launcher itself is killed (SIGKILL, the OOM killer), the driver gets
  SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and shuts down the same way.
- Every process of the instance carries :data:`ENV_INSTANCE` in its environment
  (Ray's daemons, workers and HAProxy inherit the driver's), so once the driver
  has exited, whatever is still running is found and, after a grace period,
  killed (:func:`sweep`), wherever it was reparented.
- ``<data_dir>/local-instance.json`` records the running instance and is locked
  for its life: a second start on the same data directory is refused in one
  line naming the running one; a start after a crash (the file is there, its
  lock free) first clears what that run left. A port held by anything else is
  named in one line (pid, program, what to do) instead of a failed start.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from deployments.local import ports

log = logging.getLogger("facefleet.local")

#: the instance id every process of one local instance carries in its environment
ENV_INSTANCE = "FACEFLEET_INSTANCE"
#: set in the driver's environment: the launcher's pid (its absence means "be the launcher")
ENV_LAUNCHER = "FACEFLEET_LAUNCHER_PID"
STATE_FILE = "local-instance.json"
#: how long the processes of an instance get to exit by themselves once its driver has
#: (workers leave shortly after their raylet), or a crashed run's driver to finish stopping
GRACE_S = 20.0


def processes_with_env(name: str, value: str) -> list[int]:
    """Every process (readable by this user) whose environment has ``name=value``:
    Ray's daemons, workers and HAProxy inherit the environment of who started them."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def instance_processes(instance: str) -> list[int]:
    """Every process (readable by this user) whose environment carries the instance id."""
    return processes_with_env(ENV_INSTANCE, instance)


def sweep(instance: str, grace_s: float | None = None,
          exclude: frozenset[int] = frozenset()) -> list[str]:
    """Wait up to ``grace_s`` (:data:`GRACE_S`) for the instance's processes to exit,
    then SIGKILL the rest; returns "pid program" of each one killed."""
    deadline = time.monotonic() + (GRACE_S if grace_s is None else grace_s)
    while True:
        pids = [p for p in instance_processes(instance) if p not in exclude]
        if not pids:
            return []
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    killed = []
    for pid in pids:
        name = ports.process_name(pid)
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(f"{pid} {name}")
        except ProcessLookupError:
            pass
    return killed


def die_with_launcher() -> None:
    """In the driver: get SIGTERM when the launcher dies; leave if it already has."""
    launcher = int(os.environ[ENV_LAUNCHER])
    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM),
                                               0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != launcher:
        sys.exit("the launcher exited before the service started")


class _State:
    """``<data_dir>/local-instance.json``, locked (flock) while its instance runs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / STATE_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def read(self) -> dict:
        os.lseek(self.fd, 0, os.SEEK_SET)
        raw = b""
        while chunk := os.read(self.fd, 65536):
            raw += chunk
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}

    def write(self, state: dict) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(state).encode(), 0)
        os.fsync(self.fd)

    def close(self) -> None:
        os.ftruncate(self.fd, 0)  # no instance; the file stays (unlinking races a new start)
        os.close(self.fd)


def _clear_earlier_run(earlier: dict) -> None:
    """The earlier run stopped without clearing its state (killed): clear what it left."""
    instance = earlier.get("instance")
    if not instance or not instance_processes(instance):
        return
    pids = instance_processes(instance)
    log.warning("the earlier run from this data directory (launcher pid %s) was killed; "
                "waiting up to %.0f s for its %d processes to stop, then killing them",
                earlier.get("launcher_pid"), GRACE_S, len(pids))
    killed = sweep(instance)
    if killed:
        log.warning("killed what the earlier run left: %s", ", ".join(killed))


def port_problem(host: str, port: int) -> str | None:
    """One line saying who holds ``host:port`` and what to do, or None if it is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HAProxy binds it
        try:
            s.bind((host, port))
            return None
        except OSError:
            pass
    holders = ports.listeners(port=port)
    if not holders:
        return (f"port {port} on {host} is in use by a process this user cannot see: "
                f"stop it or choose another port (--port N)")
    who = ", ".join(f"pid {pid} ({ports.process_name(pid)})" for pid in sorted(holders))
    return (f"port {port} on {host} is in use by {who}, not by a run from this data "
            f"directory: stop it (kill {' '.join(map(str, sorted(holders)))}) "
            f"or choose another port (--port N)")


def run(argv: list[str], data_dir: Path, host: str, port: int) -> int:
    """Launch the driver (``python -m deployments.local *argv``) and see it through
    to a stop that leaves nothing behind; returns the exit status."""
    data_dir.mkdir(parents=True, exist_ok=True)
    state = _State(data_dir)
    if not state.lock():
        other = state.read()
        log.error("facefleet is already running from %s (pid %s, http://%s:%s): stop it with "
                  "`kill %s` or use another data_dir", data_dir, other.get("launcher_pid", "?"),
                  host, other.get("port", "?"), other.get("launcher_pid", "<pid>"))
        return 1
    _clear_earlier_run(state.read())
    problem = port_problem(host, port)
    if problem:
        log.error("%s", problem)
        state.close()
        return 1
    instance = uuid.uuid4().hex
    env = {**os.environ, ENV_INSTANCE: instance, ENV_LAUNCHER: str(os.getpid())}
    signals = 0
    driver: subprocess.Popen | None = None

    def forward(signum: int, _frame) -> None:
        nonlocal signals
        signals += 1
        if driver is None:
            return
        if signals == 1:
            log.info("signal %s: stopping (a second one kills the service at once)", signum)
            os.kill(driver.pid, signal.SIGTERM)
        else:
            log.warning("signal %s again: killing the service", signum)
            try:
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    driver = subprocess.Popen([sys.executable, "-m", "deployments.local", *argv], env=env,
                              start_new_session=True)
    state.write({"instance": instance, "launcher_pid": os.getpid(), "driver_pid": driver.pid,
                 "host": host, "port": port, "started": time.time()})
    if signals:  # a signal before the driver existed
        os.kill(driver.pid, signal.SIGTERM)
    # wait without reaping: the driver's pid (its group id) stays reserved until
    # the sweep below is done, so the group signal cannot reach a stranger
    os.waitid(os.P_PID, driver.pid, os.WEXITED | os.WNOWAIT)
    try:
        os.killpg(driver.pid, signal.SIGKILL)  # Ray's daemons, if the driver died abruptly
    except ProcessLookupError:
        pass
    killed = sweep(instance)
    if killed:
        log.warning("killed what outlived the service: %s", ", ".join(killed))
    code = driver.wait()
    state.close()
    return code if code >= 0 else 128 - code
