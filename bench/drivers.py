"""The load generators, their command lines and their output: wrk for HTTP at full speed, h2load for the
rest (gRPC at full speed, both transports at a fixed rate and for a fixed number of requests).

Every parse returns `problems`: anything that means a request was not served as it should have been
(a non-2xx status, a socket error, a failed or timed-out stream). The bench fails the run on any.
"""

from __future__ import annotations

import re
import resource
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from bench.processes import BenchFailure, die_with_bench

WRK_THREADS = 2
H2LOAD_THREADS = 1
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class LoadResult:
    """One run of a load generator, as the client saw it."""

    tool: str
    requests: int  # answered with success
    seconds: float
    problems: tuple[str, ...] = ()
    data_bytes: int | None = None  # h2load: the DATA payload received (gRPC messages with their prefixes)
    client_cpu_s: float = 0.0  # the load generator's own user + system time

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def parse_duration(text: str) -> float:
    """`3.06s`, `987.12ms`, `1.00m`, as wrk and h2load print them, in seconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def _search(pattern: str, out: str, what: str) -> re.Match[str]:
    match = re.search(pattern, out, re.MULTILINE)
    if match is None:
        raise BenchFailure(f"no {what} in the load generator's output:\n{out}")
    return match


def parse_wrk(out: str) -> LoadResult:
    done = _search(r"^\s*(\d+) requests in ([\d.]+\w+),", out, "request count")
    requests, seconds = int(done.group(1)), parse_duration(done.group(2))
    problems = []
    if errors := re.search(r"Socket errors: (.+)$", out, re.MULTILINE):
        problems.append(f"socket errors: {errors.group(1).strip()}")
    # wrk counts a status >= 400 here; a 3xx shows in the server's own count (bench.verify).
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        problems.append(f"{non_2xx.group(1)} responses with status >= 400")
        requests -= int(non_2xx.group(1))
    return LoadResult("wrk", requests, seconds, tuple(problems))


def parse_h2load(out: str) -> LoadResult:
    seconds = parse_duration(_search(r"^finished in ([\d.]+\w+),", out, "duration").group(1))
    counts = _search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
        "request counts",
    )
    _total, _started, _done, succeeded, failed, errored, timeout = map(int, counts.groups())
    statuses = _search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, "status codes")
    ok, *not_ok = map(int, statuses.groups())
    data = int(_search(r"^traffic: .*\((\d+)\) data", out, "traffic").group(1))
    problems = [
        f"{n} {what}"
        for n, what in (
            (failed, "failed"),
            (errored, "errored"),
            (timeout, "timed out"),
            (not_ok[0], "3xx"),
            (not_ok[1], "4xx"),
            (not_ok[2], "5xx"),
        )
        if n
    ]
    return LoadResult("h2load", min(succeeded, ok), seconds, tuple(problems), data_bytes=data)


def parse_h2load_log(text: str) -> list[tuple[int, int]]:
    """(status, microseconds) per request from `h2load --log-file` (start time, status, duration, ...)."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            columns = line.split("\t")
            rows.append((int(columns[1]), int(columns[2])))
    return rows


def _headers(headers: dict[str, str]) -> list[str]:
    return [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]


def wrk_command(url: str, *, seconds: float, connections: int, headers: dict[str, str]) -> list[str]:
    return [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        *_headers(headers),
        url,
    ]


@dataclass(frozen=True)
class H2load:
    """One h2load invocation: `requests` (exact) or `seconds` (timing-based); `rate` in req/s overall."""

    url: str
    connections: int
    headers: dict[str, str]
    http1: bool = False
    data: Path | None = None
    requests: int | None = None
    seconds: float | None = None
    rate: float | None = None
    log_file: Path | None = None

    def command(self) -> list[str]:
        argv = ["h2load", f"-t{H2LOAD_THREADS}", f"-c{self.connections}", "-m1", *_headers(self.headers)]
        if self.http1:
            argv.append("--h1")
        if self.data is not None:
            argv += ["-d", str(self.data)]
        if self.requests is not None:
            argv.append(f"-n{max(self.requests, self.connections)}")
        if self.seconds is not None:
            argv.append(f"-D{max(1, round(self.seconds))}")
        if self.rate is not None:
            argv.append(f"--rps={self.rate / self.connections:.3f}")
        if self.log_file is not None:
            argv.append(f"--log-file={self.log_file}")
        return [*argv, self.url]


def run(argv: list[str], parse: Callable[[str], LoadResult]) -> LoadResult:
    """Run a load generator to its end; the result carries its CPU time (from the kernel's accounting)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, preexec_fn=die_with_bench)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchFailure(f"{argv[0]} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return replace(parse(done.stdout), client_cpu_s=cpu)


def run_wrk(url: str, *, seconds: float, connections: int, headers: dict[str, str]) -> LoadResult:
    return run(wrk_command(url, seconds=seconds, connections=connections, headers=headers), parse_wrk)


def run_h2load(load: H2load) -> LoadResult:
    return run(load.command(), parse_h2load)
