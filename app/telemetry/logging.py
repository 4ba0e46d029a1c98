"""JSON log lines on stdout and OTLP log records, both correlated with traces and scrubbed of secrets.

Two handlers at the root logger, each with the same `RecordPreparer` filter:
- stdout: a StreamHandler with `JsonFormatter` (python-json-logger), one JSON object per line with the
  fields of docs/telemetry.md; the trace and span ids are those of the span current when the line is
  written. Built by `json_stdout_handler`, installed by `configure_logging`;
- OTLP: the LoggingHandler of opentelemetry-instrumentation-logging, added in each worker by the
  auto-instrumentation when logs are exported; the distro calls `prepare_otlp_handlers` to give it the
  preparer and to keep the SDK's own records (and loggers named in `exclude_from_otlp`) off it.

The preparer replaces secrets (app.telemetry.redaction) in the message, the extra attributes and the
exception text before either handler formats or exports the record, and adds the caller's context fields
(request id, user) from the provider the application registered with `set_context_fields`. This module
knows nothing of the web server or the framework.
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler as OtlpHandler
from opentelemetry.sdk._logs import LoggingHandler as SdkOtlpHandler
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.json import JsonFormatter as BaseJsonFormatter

from app.telemetry.redaction import REDACTED, is_sensitive_name, redact_text, redact_value

ContextFields = Callable[[], Mapping[str, str]]

CORRELATION_FIELDS = ("service", "trace_id", "span_id", "request_id", "user", "pid")
# LogRecord attributes that are not "extra" fields.
_STANDARD_ATTRS = frozenset(RESERVED_ATTRS) | {"taskName", "message", "asctime"}
_NOT_EXTRA = _STANDARD_ATTRS | frozenset(CORRELATION_FIELDS)
INTERNAL_LOG_INTERVAL_S = 60.0  # the SDK's own warnings (a failing export) reach stdout once a minute


class RecordPreparer(logging.Filter):
    """Scrubs secrets and adds the application's context fields; safe to run twice on a record."""

    def __init__(self) -> None:
        super().__init__()
        self.context_fields: ContextFields | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        msg = record.msg
        if isinstance(msg, Mapping):
            record.msg = redact_value(msg)
        else:
            try:
                text = record.getMessage()
            except Exception:
                text = f"{msg!s} {record.args!r}"
            record.msg = redact_text(text)
            record.args = None
        for name in fields.keys() - _STANDARD_ATTRS:
            value = fields[name]
            if is_sensitive_name(name):
                fields[name] = REDACTED
            elif isinstance(value, str | Mapping | list | tuple):
                fields[name] = redact_value(value)
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            scrubbed = redact_text(text)
            if scrubbed != text:  # the exception object itself would leak it again: keep only the text
                record.exc_info = None
            record.exc_text = scrubbed
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        provider = self.context_fields
        if provider is not None:
            for name, value in provider().items():
                fields.setdefault(name, value)
        return True


PREPARER = RecordPreparer()


def set_context_fields(provider: ContextFields | None) -> None:
    """Fields every record gets from the caller's context (e.g. request id and user), unless it has them."""
    PREPARER.context_fields = provider


_ts_cache: tuple[int, str] = (-1, "")  # one tuple: threads read and replace it atomically


def rfc3339(created: float) -> str:
    """`2025-01-02T03:04:05.678Z`; the per-second prefix is cached (one strftime per second, not per line)."""
    global _ts_cache
    second = int(created)
    cached_second, prefix = _ts_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _ts_cache = (second, prefix)
    return f"{prefix}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(BaseJsonFormatter):
    """python-json-logger's formatter with the fields of docs/telemetry.md, in a fixed order.

    timestamp, level, logger, message, service, trace_id, span_id, request_id, user, pid; then the extra
    attributes (what a caller passed in `extra=`), then `exc_info`/`stack_info`.
    """

    def __init__(self, service_name: str | None = None) -> None:
        super().__init__(json_ensure_ascii=False)
        self.service_name = service_name or os.environ.get("OTEL_SERVICE_NAME", "")
        # One encoder for all lines (json.dumps(cls=...) would build one per line); C-accelerated.
        self._encode = JsonEncoder(ensure_ascii=False).encode

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        return str(self._encode(log_data))

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        fields = record.__dict__
        log_data["timestamp"] = rfc3339(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["service"] = self.service_name
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            log_data["trace_id"] = format(span_context.trace_id, "032x")
            log_data["span_id"] = format(span_context.span_id, "016x")
        else:
            log_data["trace_id"] = log_data["span_id"] = ""
        log_data["request_id"] = fields.get("request_id", "")
        log_data["user"] = fields.get("user", "")
        log_data["pid"] = record.process
        for name, value in fields.items():
            if name not in _NOT_EXTRA:
                log_data[name] = value
        log_data.update(message_dict)


class _OncePerInterval(logging.Filter):
    """Lets each message template of the SDK's loggers through at most once per interval."""

    def __init__(
        self, interval_s: float = INTERNAL_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, object], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("opentelemetry"):
            return True
        key = (record.name, record.msg)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                return False
            if len(self._last) > 256:  # bounded: templates are few, but stay safe
                self._last.clear()
            self._last[key] = now
        return True


def json_stdout_handler(stream: Any = None, service_name: str | None = None) -> logging.Handler:
    """The stdout handler: JSON lines, prepared records, the SDK's repeated warnings thinned out."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(service_name))
    handler.addFilter(PREPARER)
    handler.addFilter(_OncePerInterval())
    return handler


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout for every logger of the process, at `level` (root handlers are replaced)."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"json": {"()": json_stdout_handler}},
            "root": {"level": level, "handlers": ["json"]},
        }
    )


class _OtlpFilter(logging.Filter):
    """Keeps the SDK's own records (which may report the very export that fails) and excluded loggers off."""

    def __init__(self) -> None:
        super().__init__()
        self.excluded: frozenset[str] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry") and record.name not in self.excluded


_OTLP_FILTER = _OtlpFilter()


def otlp_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, OtlpHandler | SdkOtlpHandler)]


def prepare_otlp_handlers() -> None:
    """Give the OTLP handlers at the root logger the record preparer and the OTLP filter (idempotent)."""
    for handler in otlp_handlers():
        for part in (_OTLP_FILTER, PREPARER):
            if part not in handler.filters:
                handler.addFilter(part)


def exclude_from_otlp(*logger_names: str) -> None:
    """Records of these loggers stay on stdout only."""
    _OTLP_FILTER.excluded = _OTLP_FILTER.excluded | frozenset(logger_names)
