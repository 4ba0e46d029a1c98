"""Quotes from the upstream service, behind timeout + retry + circuit breaker, with a stale fallback.

Per call: an overall deadline (`upstream_deadline_s`) bounds everything; inside it the retry policy
tries up to `upstream_max_attempts` times (connection errors, timeouts, 502/503/504 only, full-jitter
backoff); every attempt asks the "upstream" circuit breaker first and reports its outcome to it, and its
connect/read timeouts never reach past the deadline. When all of that fails (or the breaker is open) the
last good quote for the symbol, if any from the last hour, is served marked `stale`; otherwise the call
fails with DependencyUnavailable and a Retry-After taken from the breaker.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, TypeGuard

import urllib3
from cachetools import TTLCache
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.domain import context
from app.domain.errors import DeadlineExceeded, DependencyUnavailable, InvalidArgument, NotFound
from app.domain.models import Quote
from app.resilience.breaker import CircuitBreaker, CircuitOpen
from app.resilience.retry import RetryPolicy
from app.settings import Settings
from app.telemetry.gauges import Reading, shared_gauge

SYMBOL_PATTERN = r"[A-Z]{1,8}"  # also the OpenAPI pattern (anchored there)
SYMBOL_RE = re.compile(SYMBOL_PATTERN)  # fullmatch: Python's $ matches before a trailing newline
RETRYABLE_STATUS = frozenset({502, 503, 504})
MAX_BODY_BYTES = 16 * 1024
LAST_GOOD_MAX, LAST_GOOD_TTL_S = 4096, 3600.0
MIN_TIMEOUT_S = 0.001


class UpstreamFailed(Exception):
    """One failed attempt; `retryable` says whether trying again can help."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamFailed) and exc.retryable


class QuoteService:
    def __init__(
        self,
        settings: Settings,
        *,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy | None = None,
        http: urllib3.PoolManager | None = None,
    ) -> None:
        self._base_url = settings.upstream_url
        self._connect_s = settings.upstream_connect_timeout_s
        self._read_s = settings.upstream_read_timeout_s
        self._breaker = breaker or CircuitBreaker(
            "upstream",
            window=settings.breaker_window,
            min_calls=settings.breaker_min_calls,
            failure_rate=settings.breaker_failure_rate,
            open_s=settings.breaker_open_s,
            half_open_calls=settings.breaker_half_open_calls,
        )
        self._retry = retry or RetryPolicy(
            dependency="upstream",
            max_attempts=settings.upstream_max_attempts,
            base_s=0.05,
            cap_s=0.5,
            deadline_s=settings.upstream_deadline_s,
            retryable=_is_retryable,
        )
        # Pool size bounded by how many request threads could call at once; extra connections beyond
        # it are opened and closed rather than queued (block=False), and urllib3 retries nothing itself.
        self._http = http or urllib3.PoolManager(
            num_pools=4,
            maxsize=max(1, min(32, settings.http_threads + settings.grpc_handler_threads)),
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=self._connect_s, read=self._read_s),
        )
        self._last_good: TTLCache[str, Quote] = TTLCache(maxsize=LAST_GOOD_MAX, ttl=LAST_GOOD_TTL_S)
        self._lock = threading.Lock()
        self._tracer = trace.get_tracer("app.domain.quotes")
        self._requests = metrics.get_meter("app.domain.quotes").create_counter(
            "platform.cache.requests", unit="{request}", description="In-process cache lookups"
        )
        self._requests.add(0, {"cache": "quotes", "result": "stale"})  # the series exists from the start
        self._unregister_gauge = shared_gauge(
            "app.domain.items", "platform.cache.size", unit="{entry}", description="Entries in a cache"
        ).add(self._size_readings)

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    def close(self) -> None:
        self._unregister_gauge()
        self._breaker.close()
        self._http.clear()

    def get(self, symbol: str, *, deadline_s: float | None = None) -> Quote:
        """The quote, within the configured deadline or the caller's `deadline_s`, whichever ends first."""
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            raise InvalidArgument("must be 1 to 8 capital letters A-Z", field="symbol")
        started = time.monotonic()
        with self._tracer.start_as_current_span(
            "quotes.fetch",
            kind=SpanKind.INTERNAL,
            attributes={"quote.symbol": symbol},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                quote = self._retry.call(
                    lambda remaining: self._attempt(symbol, remaining), deadline_s=deadline_s
                )
            except (UpstreamFailed, CircuitOpen) as exc:
                with self._lock:
                    last = self._last_good.get(symbol)
                if last is not None:
                    self._requests.add(1, {"cache": "quotes", "result": "stale"})
                    span.set_attribute("quote.stale", True)
                    span.add_event("stale_fallback", {"error.type": type(exc).__name__})
                    return replace(last, stale=True)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                if deadline_s is not None and time.monotonic() >= started + deadline_s:
                    # The caller's own deadline ended it, before ours: say so, not "unavailable".
                    raise DeadlineExceeded(
                        "the caller's deadline passed before the quotes upstream answered"
                    ) from exc
                retry_after = self._breaker.retry_after_s() or 1.0
                raise DependencyUnavailable("quotes upstream unavailable", retry_after_s=retry_after) from exc
            if quote is None:
                raise NotFound(f"no quote for symbol {symbol!r}", field="symbol")
            with self._lock:
                self._last_good[symbol] = quote
            return quote

    def _attempt(self, symbol: str, remaining_s: float) -> Quote | None:
        """One call through the breaker; None means the upstream does not know the symbol (404)."""
        if not self._breaker.allow():
            trace.get_current_span().add_event("circuit_open", {"breaker": self._breaker.name})
            raise CircuitOpen("upstream circuit is open", retry_after_s=self._breaker.retry_after_s() or 1.0)
        budget = max(MIN_TIMEOUT_S, remaining_s)
        timeout = urllib3.Timeout(connect=min(self._connect_s, budget), read=min(self._read_s, budget))
        headers = {"Accept": "application/json"}
        request_id = context.current().request_id
        if request_id:
            headers["X-Request-ID"] = request_id
        try:
            response = self._http.request(
                "GET",
                f"{self._base_url}/v1/quotes/{symbol}",
                headers=headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
            try:
                status = response.status
                body = response.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    response.close()  # unread bytes would poison the pooled connection for the next call
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            self._breaker.record_failure()
            raise UpstreamFailed(type(exc).__name__, retryable=True) from exc
        if status == 200:
            quote = _parse(body, symbol)
            if quote is None:
                self._breaker.record_failure()
                raise UpstreamFailed("malformed quote", retryable=False)
            self._breaker.record_success()
            return quote
        if status >= 500:
            self._breaker.record_failure()
            raise UpstreamFailed(f"status {status}", retryable=status in RETRYABLE_STATUS)
        self._breaker.record_success()  # the upstream answered sanely: it is healthy
        if status == 404:
            return None
        raise UpstreamFailed(f"status {status}", retryable=False)

    def _size_readings(self) -> Iterable[Reading]:
        with self._lock:
            size = len(self._last_good)
        return [(float(size), {"cache": "quotes"})]


def _parse(body: bytes, symbol: str) -> Quote | None:
    if len(body) > MAX_BODY_BYTES:
        return None
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    price, currency, as_of = data.get("price"), data.get("currency"), data.get("as_of")
    if (
        data.get("symbol") != symbol
        or not isinstance(currency, str)
        or not _is_number(price)
        or not _is_number(as_of)
    ):
        return None
    return Quote(symbol=symbol, price=float(price), currency=currency, as_of=float(as_of))


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
