"""Every process the bench starts, and the guarantee that none outlives it.

Children run in sessions of their own, so a Ctrl-C reaches the bench alone, which then stops them in
reverse order of start (SIGTERM, then SIGKILL after a grace period). They also get SIGTERM from the
kernel if the bench dies without cleaning up (PR_SET_PDEATHSIG), so not even a SIGKILL leaks them.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TypeVar

PR_SET_PDEATHSIG = 1
ACCESS_LOGGER = '"logger": "app.http.access"'
STOP_TIMEOUT_S = 40.0
# Ports below the kernel's ephemeral range, so that no outgoing connection takes one after the check.
PORT_RANGE = range(20_000, 32_000)

T = TypeVar("T")


class BenchFailure(Exception):
    """The run cannot be trusted (a refused request, a variant that is not what it claims): stop it."""


def die_with_bench() -> None:
    """In the child, before exec: SIGTERM when the bench goes away."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One started process; its stdout and stderr go to `log_path` unless the caller pipes them."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30, *, skip: str = ACCESS_LOGGER) -> str:
        """The last lines of the log, without the access lines (one per request) that would drown them."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if skip not in line][-lines:])

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM and wait; then whatever is left of its process group (e.g. a worker's pool processes,
        orphaned when a worker was killed) gets SIGTERM, then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not _signal_group(self.pid, signum):
                break
            time.sleep(0.5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal the process group the child leads (its own session); False once it has no member left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


class Children:
    """Starts processes and stops all of them on exit, whatever the exit (error, Ctrl-C, SIGTERM)."""

    def __init__(self) -> None:
        self._running: list[Child] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, *, piped: bool = False
    ) -> Child:
        log = log_path.open("ab")
        try:
            popen = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=subprocess.PIPE if piped else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_bench,  # safe: the bench runs no threads
            )
        finally:
            log.close()
        child = Child(name, popen, log_path)
        self._running.append(child)
        return child

    def stop(self, child: Child) -> None:
        if child in self._running:
            self._running.remove(child)
        child.stop()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        try:
            while self._running:
                self._running.pop().stop()
        finally:
            signal.signal(signal.SIGINT, previous)


def exit_on_termination() -> None:
    """SIGTERM and SIGHUP unwind the bench like Ctrl-C does, so that its children are stopped."""

    def unwind(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, unwind)


def free_port() -> int:
    """A port nothing listens on now."""
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise BenchFailure(f"no free port in {PORT_RANGE}")


def wait_until(check: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll `check` until it returns something other than None or False; BenchFailure at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise BenchFailure(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def read_line(stream: IO[bytes] | None, what: str) -> str:
    if stream is None:
        raise BenchFailure(f"{what}: not piped")
    line = stream.readline()
    if not line:
        raise BenchFailure(f"{what}: the process ended")
    return line.decode().strip()
