"""Parsing wrk's and h2load's output and h2load's per-request log, and the command lines the bench runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.drivers import H2load, parse_duration, parse_h2load, parse_h2load_log, parse_wrk, wrk_command
from bench.processes import BenchFailure

WRK_CLEAN = """\
Running 3s test @ http://127.0.0.1:28080/v1/items/bench
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    50.96ms   43.15ms 419.23ms   80.93%
    Req/Sec   334.77    112.59   595.00     66.67%
  2019 requests in 3.06s, 775.51KB read
Requests/sec:    659.98
Transfer/sec:    253.50KB
"""

WRK_ERRORS = """\
Running 1m test @ http://127.0.0.1:28080/v1/items/bench
  2 threads and 32 connections
  120000 requests in 1.00m, 40.00MB read
  Socket errors: connect 0, read 32, write 74453, timeout 0
  Non-2xx or 3xx responses: 12
Requests/sec:   2000.00
"""

H2LOAD_GRPC = """\
starting benchmark...
spawning thread #0: 8 total client(s). 2000 total requests
Application protocol: h2c

finished in 3.44s, 580.69 req/s, 110.69KB/s
requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 381.23KB (390376) total, 199.80KB (204600) headers (space savings 41.21%), 70.31KB (72000) data
                     min         max         mean         sd        +/- sd
time for request:     1.98ms     92.68ms     13.31ms      5.76ms    81.10%
"""

H2LOAD_FAILED = """\
finished in 987.50ms, 20.25 req/s, 7.29KB/s
requests: 20 total, 20 started, 18 done, 17 succeeded, 1 failed, 2 errored, 0 timeout
status codes: 16 2xx, 0 3xx, 1 4xx, 0 5xx
traffic: 7.20KB (7374) total, 2.14KB (2190) headers (space savings 37.07%), 100B (100) data
"""


def test_durations_in_every_unit_the_tools_print() -> None:
    assert parse_duration("3.06s") == pytest.approx(3.06)
    assert parse_duration("987.50ms") == pytest.approx(0.9875)
    assert parse_duration("250.00us") == pytest.approx(0.00025)
    assert parse_duration("1.00m") == pytest.approx(60.0)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("3 s")


def test_wrk_clean_run() -> None:
    result = parse_wrk(WRK_CLEAN)
    assert (result.tool, result.requests, result.problems) == ("wrk", 2019, ())
    assert result.seconds == pytest.approx(3.06)
    assert result.rate == pytest.approx(2019 / 3.06)


def test_wrk_socket_errors_and_error_statuses_are_problems_and_not_successes() -> None:
    result = parse_wrk(WRK_ERRORS)
    assert result.requests == 120000 - 12
    assert result.seconds == pytest.approx(60.0)
    assert result.problems == (
        "socket errors: connect 0, read 32, write 74453, timeout 0",
        "12 responses with status >= 400",
    )


def test_h2load_clean_run_counts_successes_and_data_bytes() -> None:
    result = parse_h2load(H2LOAD_GRPC)
    assert (result.tool, result.requests, result.data_bytes, result.problems) == ("h2load", 2000, 72000, ())
    assert result.seconds == pytest.approx(3.44)


def test_h2load_failures_and_non_2xx_are_problems() -> None:
    result = parse_h2load(H2LOAD_FAILED)
    assert result.requests == 16
    assert result.seconds == pytest.approx(0.9875)
    assert result.problems == ("1 failed", "2 errored", "1 4xx")


def test_output_without_the_expected_lines_fails_the_run() -> None:
    with pytest.raises(BenchFailure, match="request count"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(BenchFailure, match="duration"):
        parse_h2load("No protocol negotiated. Aborted.\n")


def test_h2load_log_rows_are_status_and_microseconds() -> None:
    log = "1796191665406739\t200\t2264\n1796191665406728\t-1\t2317\n\n1796191665808338\t200\t3143\t9\n"
    assert parse_h2load_log(log) == [(200, 2264), (-1, 2317), (200, 3143)]


def test_wrk_command() -> None:
    argv = wrk_command("http://h/x", seconds=10, connections=32, headers={"authorization": "Bearer t"})
    assert argv == ["wrk", "-t2", "-c32", "-d10s", "-H", "authorization: Bearer t", "http://h/x"]


def test_h2load_command_for_a_fixed_rate_grpc_run() -> None:
    load = H2load(
        "http://h/platform.v1.PlatformService/GetItem",
        32,
        {"content-type": "application/grpc", "te": "trailers"},
        data=Path("/tmp/frame"),
        requests=4800,
        rate=480.0,
        log_file=Path("/tmp/log"),
    )
    assert load.command() == [
        "h2load",
        "-t1",
        "-c32",
        "-m1",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        "/tmp/frame",
        "-n4800",
        "--rps=15.000",  # per connection: 480 req/s over 32 connections
        "--log-file=/tmp/log",
        "http://h/platform.v1.PlatformService/GetItem",
    ]


def test_h2load_command_never_asks_fewer_requests_than_connections() -> None:
    argv = H2load("http://h/", 32, {}, http1=True, requests=5).command()
    assert "--h1" in argv
    assert "-n32" in argv
