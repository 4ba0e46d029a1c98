"""The profile's reading of py-spy's collapsed stacks: each sample to one part of the code."""

from __future__ import annotations

from bench.profile import OTHER, parse_collapsed, report, shares

SITE = "/venv/lib/python3.11/site-packages"
LOOP = "run (/usr/lib/python3.11/asyncio/base_events.py:1922)"
CONTRIB = f"intercept ({SITE}/opentelemetry/instrumentation/grpc/_aio_server.py:95)"
COLLAPSED = "\n".join(
    [
        f"{LOOP};{CONTRIB};start_span ({SITE}/opentelemetry/sdk/trace/__init__.py:1195) 30",
        f"{LOOP};{CONTRIB};get_item (/src/app/rpc/api.py:40);get (/src/app/domain/items.py:70) 40",
        f"{LOOP};{CONTRIB};loads (/usr/lib/python3.11/json/__init__.py:346) 5",
        f"worker ({SITE}/opentelemetry/sdk/_shared_internal/a.py:1);send ({SITE}/grpc/_channel.py:1) 10",
        f"handle ({SITE}/gunicorn/workers/gthread.py:280);emit (/usr/lib/logging/__init__.py:1) 10",
        "select (<frozen selectors>:1) 5",
        "not a stack line",
    ]
)


def test_each_sample_goes_to_its_innermost_part_or_its_background_thread() -> None:
    per_part, total = shares(parse_collapsed(COLLAPSED))
    assert total == 100
    assert per_part == {
        "SDK tracing (spans, sampling)": 30,
        "domain (auth, rate limit, items)": 40,
        "contrib gRPC server instrumentation": 5,  # its own frame is the innermost with a part
        "telemetry export (SDK batch threads, exporters)": 10,  # not "gRPC": a background thread
        "logging (JSON access line, handlers)": 10,
        OTHER: 5,
    }


def test_the_report_turns_shares_into_cpu_per_request() -> None:
    per_part, total = shares(parse_collapsed(COLLAPSED))
    text = report(per_part, total, 1000.0, "header")
    assert "| SDK tracing (spans, sampling) | 30.0% | 300 us |" in text
    assert "| all samples (100) | 100% | 1,000 us |" in text
    assert "Flask/Werkzeug" not in text  # parts with no samples are left out
