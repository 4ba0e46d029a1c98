from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app.domain import context
from app.domain.errors import DependencyUnavailable, InvalidArgument, NotFound
from app.domain.quotes import QuoteService
from app.resilience.breaker import CircuitBreaker
from app.settings import Settings
from tests.unit.conftest import Metrics


class Upstream:
    """A real HTTP quotes server on a free port whose next answers a test can script.

    Each scripted action is a status code, "hang" (answer after the client's read timeout) or
    "garbage" (200 with a body that is not a quote); unscripted requests get a good quote.
    """

    def __init__(self) -> None:
        self.plan: deque[int | str] = deque()
        self.requests: list[dict[str, str]] = []
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.requests.append({"path": self.path, **dict(self.headers.items())})
                symbol = self.path.rsplit("/", 1)[-1]
                action = upstream.plan.popleft() if upstream.plan else 200
                if action == "hang":
                    upstream.release.wait(2)
                    action = 200
                if symbol == "NOPE":
                    action = 404
                body = b""
                if action == 200:
                    body = json.dumps(
                        {"symbol": symbol, "price": 12.5, "currency": "EUR", "as_of": 1.7e9}
                    ).encode()
                elif action == "garbage":
                    action, body = 200, b'{"symbol": "???"}'
                self.send_response(int(action))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def make_quotes(
    make_settings: Callable[..., Settings], upstream: Upstream
) -> Iterator[Callable[..., QuoteService]]:
    made: list[QuoteService] = []

    def make(**overrides: Any) -> QuoteService:
        params: dict[str, Any] = {
            "upstream_url": upstream.url,
            "upstream_connect_timeout_s": 0.2,
            "upstream_read_timeout_s": 0.2,
            "upstream_deadline_s": 1.5,
            "upstream_max_attempts": 3,
        }
        params.update(overrides)
        settings = make_settings(**params)
        breaker = CircuitBreaker(
            f"upstream-{uuid.uuid4().hex[:8]}", window=4, min_calls=4, failure_rate=0.5, open_s=30.0
        )
        service = QuoteService(settings, breaker=breaker)
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


def test_fetches_a_quote_with_the_request_id(
    make_quotes: Callable[..., QuoteService], upstream: Upstream, spans: InMemorySpanExporter
) -> None:
    with context.bind(context.RequestContext(request_id="req-7")):
        quote = make_quotes().get("ACME")
    assert (quote.symbol, quote.price, quote.currency, quote.as_of, quote.stale) == (
        "ACME",
        12.5,
        "EUR",
        1.7e9,
        False,
    )
    assert upstream.requests[0]["path"] == "/v1/quotes/ACME"
    assert upstream.requests[0]["X-Request-ID"] == "req-7"
    assert [s.name for s in spans.get_finished_spans() if s.name.startswith("quotes.")] == ["quotes.fetch"]


def test_retries_transient_failures_then_succeeds(
    make_quotes: Callable[..., QuoteService],
    upstream: Upstream,
    spans: InMemorySpanExporter,
    metric_values: Metrics,
) -> None:
    quotes = make_quotes()
    retries_before = metric_values.value("platform.retry.attempts", dependency="upstream", outcome="retry")
    upstream.plan.extend([503, 502])
    assert quotes.get("ACME").stale is False
    assert len(upstream.requests) == 3
    (span,) = [s for s in spans.get_finished_spans() if s.name == "quotes.fetch"]
    assert [e.name for e in span.events] == ["retry", "retry"]
    assert (
        metric_values.value("platform.retry.attempts", dependency="upstream", outcome="retry")
        - retries_before
        == 2
    )
    assert quotes.breaker.state == "closed"  # 2 failures of 3 calls, fewer than min_calls


def test_slow_upstream_times_out_and_is_retried(
    make_quotes: Callable[..., QuoteService], upstream: Upstream
) -> None:
    upstream.plan.extend(["hang"])
    started = time.monotonic()
    assert make_quotes().get("ACME").price == 12.5
    assert 0.2 <= time.monotonic() - started < 1.0
    assert len(upstream.requests) == 2


def test_not_found_is_not_retried(make_quotes: Callable[..., QuoteService], upstream: Upstream) -> None:
    with pytest.raises(NotFound) as info:
        make_quotes().get("NOPE")
    assert info.value.field == "symbol"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("symbol", ["", "acme", "TOOLONGSYM", "AC/ME", "A1"])
def test_bad_symbol(make_quotes: Callable[..., QuoteService], upstream: Upstream, symbol: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        make_quotes().get(symbol)
    assert info.value.field == "symbol"
    assert upstream.requests == []


def test_breaker_opens_and_the_last_good_quote_is_served_stale(
    make_quotes: Callable[..., QuoteService], upstream: Upstream, metric_values: Metrics
) -> None:
    quotes = make_quotes(upstream_max_attempts=1)
    good = quotes.get("ACME")
    stale_before = metric_values.value("platform.cache.requests", cache="quotes", result="stale")
    upstream.plan.extend([503] * 10)
    served = [quotes.get("ACME") for _ in range(3)]  # 1 success + 3 failures = 75 % of 4 calls
    assert quotes.breaker.state == "open"
    assert all(q.stale and q.price == good.price for q in served)
    requests_when_opened = len(upstream.requests)
    assert quotes.get("ACME").stale  # open: served without calling the upstream at all
    assert len(upstream.requests) == requests_when_opened
    assert metric_values.value("platform.cache.requests", cache="quotes", result="stale") - stale_before == 4


def test_no_last_value_is_dependency_unavailable_with_retry_after(
    make_quotes: Callable[..., QuoteService], upstream: Upstream, spans: InMemorySpanExporter
) -> None:
    quotes = make_quotes(upstream_max_attempts=1)
    upstream.plan.extend([503] * 10)
    for _ in range(3):
        with pytest.raises(DependencyUnavailable) as info:
            quotes.get("NEW")
        assert info.value.retry_after_s == 1  # breaker still closed
    for _ in range(2):  # the 4th failure opens the breaker; the 5th call never leaves the process
        with pytest.raises(DependencyUnavailable) as info:
            quotes.get("NEW")
        assert info.value.retry_after_s == pytest.approx(30, abs=1)  # until a probe is let through
    assert quotes.breaker.state == "open"
    assert len(upstream.requests) == 4
    fetches = [s for s in spans.get_finished_spans() if s.name == "quotes.fetch"]
    assert len(fetches) == 5
    assert all(s.status.status_code is StatusCode.ERROR for s in fetches)


def test_malformed_answer_is_a_failure_not_retried(
    make_quotes: Callable[..., QuoteService], upstream: Upstream
) -> None:
    upstream.plan.append("garbage")
    with pytest.raises(DependencyUnavailable):
        make_quotes().get("ACME")
    assert len(upstream.requests) == 1


def test_unreachable_upstream_gives_up_within_the_deadline(make_quotes: Callable[..., QuoteService]) -> None:
    from tests.conftest import free_port

    quotes = make_quotes(upstream_url=f"http://127.0.0.1:{free_port()}", upstream_deadline_s=1.0)
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable):
        quotes.get("ACME")
    assert time.monotonic() - started < 1.0
