"""Loopback ports for a local instance: reserved without a race, and who holds one.

A port found free by binding port 0 and closing the socket can be taken by any
process before its intended owner binds it: the kernel hands the same range
(``net.ipv4.ip_local_port_range``, 32768-60999 by default) to every outgoing
connection and every port-0 bind, and Ray opens hundreds of both while it
starts (a start of ``make serve`` once failed on exactly that). So
:func:`reserve_port` picks a port *outside* the kernel's ephemeral range and
outside Ray's worker port range (10002-19999), where nothing is allocated
automatically (Ray's own random ports are drawn above the ephemeral start too),
and holds an exclusive lock file for it for the life of this process, so that
two facefleet processes on one machine never pick the same one.

:func:`listeners` maps listening TCP ports to their processes (from ``/proc``),
for a start that finds its port taken and must say by whom.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

#: Ray's default worker port range (``ray start --min-worker-port/--max-worker-port``)
RAY_WORKER_PORTS = range(10002, 20000)
#: lowest port handed out (above Ray's worker ports)
FIRST_PORT = 20000
_held: dict[int, int] = {}  # port -> open lock file descriptor, kept for the process's life


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for automatically assigned ports (inclusive)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _candidates() -> list[int]:
    lo, hi = ephemeral_range()
    ports = [p for p in range(FIRST_PORT, 65536)
             if not lo <= p <= hi and p not in RAY_WORKER_PORTS]
    random.shuffle(ports)
    return ports


def _lock_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"facefleet-ports-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def reserve_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that no other process is given automatically, held
    against other facefleet processes until this one exits (see the module doc)."""
    locks = _lock_dir()
    for port in _candidates():
        if port in _held:
            continue
        fd = os.open(locks / f"{port}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # another facefleet process holds it
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                os.close(fd)
                continue  # in use by something else
        _held[port] = fd
        return port
    raise RuntimeError("no free loopback port outside the ephemeral range")


def _socket_inodes(port: int | None = None) -> dict[int, int]:
    """Listening TCP sockets on this machine: inode -> port (``port`` only, if given)."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            p = int(fields[1].rsplit(":", 1)[1], 16)
            if port is None or p == port:
                found[int(fields[9])] = p
    return found


def listeners(pids: list[int] | None = None, port: int | None = None) -> dict[int, list[int]]:
    """pid -> the TCP ports it listens on, for ``pids`` (every readable process
    when None), only ``port`` if given. Processes of other users are not readable."""
    inodes = _socket_inodes(port)
    out: dict[int, list[int]] = {}
    if not inodes:
        return out
    for pid in pids if pids is not None else [int(e) for e in os.listdir("/proc") if e.isdigit()]:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                p = inodes.get(int(target[8:-1]))
                if p is not None and p not in out.setdefault(pid, []):
                    out[pid].append(p)
        if not out.get(pid):
            out.pop(pid, None)
    return out


def process_name(pid: int) -> str:
    """The program a process runs (its command line's first word, shortened)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    name = Path(words[0]).name
    if name.startswith("python") and len(words) > 2 and words[1] == "-m":
        name = f"{name} -m {words[2]}"
    return name
