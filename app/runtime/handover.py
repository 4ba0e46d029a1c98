"""Keep the gRPC listener open on SIGTERM until a successor listens on the same port.

HTTP needs no such care: the gunicorn master owns the HTTP socket and its accept queue outlives any
worker. gRPC sockets are per worker (SO_REUSEPORT), so during a rolling reload (SIGHUP, or a worker
being replaced) an old worker that closed its listener before the new worker opened one would leave
nobody listening, and clients would see "connection refused". The old worker therefore waits, bounded,
until another socket listens on the port. When the whole deployment stops there is no successor to
wait for: the master has no extra children then, and we stop at once.

What this cannot close: a connection the kernel already queued on the old listener when it closes is
reset. `net.ipv4.tcp_migrate_req=1` (set in compose.yaml) makes the kernel move those to a live
listener; clients should still use gRPC's wait-for-ready or a retry policy, which retry such a connect.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on `port` (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    wanted = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and fields[1].rsplit(":", 1)[1] == wanted:
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def start_ticks(pid: int) -> int:
    """Process start time (clock ticks since boot), field 22 of /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[19])


def siblings() -> list[int]:
    ppid = os.getppid()
    try:
        return [int(p) for p in Path(f"/proc/{ppid}/task/{ppid}/children").read_text().split()]
    except OSError:
        return []


def successor_listening(port: int) -> bool:
    """A sibling worker started after this one owns a socket listening on `port`."""
    listeners = listening_inodes(port)
    me, born = os.getpid(), start_ticks(os.getpid())
    return any(
        (start_ticks(pid), pid) > (born, me) and listeners & socket_inodes(pid)
        for pid in siblings()
        if pid != me
    )


def wait_for_successor(port: int, expected_workers: int, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Block until a newer worker listens on `port`; False at once if no successor is coming.

    While the master runs more workers than configured, a reload or replacement is under way and a
    successor is booting; otherwise the deployment is stopping and nobody will take over.
    """
    if len(siblings()) <= expected_workers:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if successor_listening(port):
            return True
        time.sleep(poll_s)
    return False
