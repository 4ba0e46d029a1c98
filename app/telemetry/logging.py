"""JSON logs on stdout and over OTLP, correlated with traces and requests, with secrets scrubbed.

Every handler we install carries the same `RecordPreparer` filter. It runs once per record (the first
handler to see it), before any formatting or export, and:
- replaces secrets (app.telemetry.redaction) in the message, the extra attributes and exception text;
- adds the correlation fields: service, trace_id/span_id of the current span, request_id/user of the
  current request context (app.domain.context), pid.
Both the stdout JSON handler and the OTel LoggingHandler therefore see the same scrubbed record.

Access logs: `GunicornJsonLogger.access` runs after the WSGI app returned, when neither the span nor the
request context is current any more. `instrument_flask_app` (app.telemetry.setup) therefore stashes both in
the WSGI environ in an `after_request` hook (`stash_request_log_context`), and the access record is logged
inside that span's context so that its OTLP copy carries the trace too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, MutableMapping
from datetime import timedelta
from typing import IO, Any

from gunicorn.glogging import Logger as GunicornLogger
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LoggerProvider as APILoggerProvider
from opentelemetry.sdk._logs import LoggingHandler
from opentelemetry.trace import NonRecordingSpan, SpanContext
from opentelemetry.util.types import Attributes
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from app.domain import context as request_context
from app.telemetry.line_writer import BufferedLineHandler, current_pid
from app.telemetry.redaction import REDACTED, is_sensitive_name, may_hold_secret, redact_text, redact_value

DEFAULT_SERVICE_NAME = "platform-api"

# WSGI environ key under which the Flask hook leaves (RequestContext, SpanContext) for the access log.
ENVIRON_LOG_CONTEXT = "platform.log_context"
_FLASK_SPAN_KEY = "opentelemetry-flask.span_key"  # set by the Flask instrumentation

_PREPARED = "_platform_prepared"
# An access record names the only fields that can carry client input; its other fields are ours.
_SCRUB_ONLY = "_platform_scrub_only"
CORRELATION_FIELDS = ("service", "trace_id", "span_id", "request_id", "user", "pid")
# LogRecord attributes that are not "extra" fields.
_STANDARD_ATTRS = frozenset(RESERVED_ATTRS) | {"taskName", "message", "asctime", _PREPARED, _SCRUB_ONLY}
_NOT_EXTRA = _STANDARD_ATTRS | frozenset(CORRELATION_FIELDS)
# Values we produce ourselves (hex ids, an IP address): nothing to scrub.
_TRUSTED_FIELDS = frozenset({"trace_id", "span_id", "remote_addr"})
_ACCESS_CLIENT_FIELDS = ("method", "path", "user_agent", "request_id", "user")
# The correlation fields travel in the OTLP record itself (trace context, resource), not as attributes.
_CODE_ATTRIBUTES = ("code.file.path", "code.function.name", "code.line.number")
_NOT_OTLP_ATTRIBUTES = frozenset({_PREPARED, _SCRUB_ONLY, "service", "trace_id", "span_id", "pid"})
_OUR_HANDLER = "_platform_handler"


class RecordPreparer(logging.Filter):
    """Scrubs secrets and adds correlation fields; idempotent, shared by all our handlers."""

    def __init__(self, service_name: str = DEFAULT_SERVICE_NAME) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if _PREPARED in fields:
            return True
        fields[_PREPARED] = True
        self._scrub(record, fields)
        if "trace_id" not in fields:
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                fields["trace_id"] = format(span_context.trace_id, "032x")
                fields["span_id"] = format(span_context.span_id, "016x")
            else:
                fields["trace_id"] = fields["span_id"] = ""
        if "request_id" not in fields:
            current = request_context.current()
            fields["request_id"] = current.request_id
            fields["user"] = current.user
        fields["service"] = self.service_name
        fields["pid"] = record.process
        return True

    @staticmethod
    def _scrub(record: logging.LogRecord, fields: dict[str, Any]) -> None:
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
        names = fields.pop(_SCRUB_ONLY, None) or (fields.keys() - _STANDARD_ATTRS)
        for name in names:
            value = fields[name]
            if is_sensitive_name(name):
                fields[name] = REDACTED
            elif isinstance(value, str):
                if name not in _TRUSTED_FIELDS:
                    fields[name] = redact_text(value)
            elif isinstance(value, Mapping | list | tuple):
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


_preparer = RecordPreparer()

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


class JsonFormatter(_BaseJsonFormatter):
    """python-json-logger's formatter with the fields of docs/telemetry.md, in a fixed order.

    timestamp, level, logger, message, service, trace_id, span_id, request_id, user, pid; then any extra
    attributes (access-log fields, or what a caller passed in `extra=`), then `exc_info`/`stack_info`.
    """

    def __init__(self, service_name: str = DEFAULT_SERVICE_NAME) -> None:
        super().__init__(json_ensure_ascii=False)
        self.service_name = service_name
        # One encoder for all lines (json.dumps(cls=...) would build one per line); C-accelerated.
        self._encode = JsonEncoder(ensure_ascii=False).encode

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        return self._encode(log_data)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        fields = record.__dict__
        log_data["timestamp"] = rfc3339(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["service"] = fields.get("service", self.service_name)
        log_data["trace_id"] = fields.get("trace_id", "")
        log_data["span_id"] = fields.get("span_id", "")
        log_data["request_id"] = fields.get("request_id", "")
        log_data["user"] = fields.get("user", "")
        log_data["pid"] = record.process
        for name, value in fields.items():
            if name not in _NOT_EXTRA:
                log_data[name] = value
        log_data.update(message_dict)


class OtlpLoggingHandler(LoggingHandler):
    """The SDK handler without the duplicated correlation fields (they travel in the record itself)."""

    def __init__(self, logger_provider: APILoggerProvider, *, access_lines: bool = True) -> None:
        self.access_lines = access_lines
        with warnings.catch_warnings():
            # The SDK handler is deprecated in favour of opentelemetry-instrumentation-logging, which is not
            # a dependency here; its behaviour is what we need.
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(logger_provider=logger_provider)

    def handle(self, record: logging.LogRecord) -> bool:
        # The SDK logger and its processors are thread-safe: skip the handler lock (a convoy per record).
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    @staticmethod
    def _get_attributes(record: logging.LogRecord) -> Attributes:
        attributes = dict(LoggingHandler._get_attributes(record) or {})
        for name in _NOT_OTLP_ATTRIBUTES:
            attributes.pop(name, None)
        if not record.lineno:  # built without a call site (access lines): no code location to report
            for name in _CODE_ATTRIBUTES:
                attributes.pop(name, None)
        if not record.exc_info and record.exc_text:  # scrubbed exception: only its text survived
            attributes["exception.stacktrace"] = record.exc_text
        return attributes


class _SkipAccessLines(logging.Filter):
    """Access lines stay on stdout only: each repeats its request's server span (method, route, status,
    duration, trace id), and as the highest-volume stream they would double the OTLP log cost per request.
    `OTLP_ACCESS_LOGS=true` sends them too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "gunicorn.access"


class _SkipOtelInternals(logging.Filter):
    """The SDK's own records must not feed back into the OTLP log pipeline that may be what is failing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


def _mark(handler: logging.Handler) -> logging.Handler:
    setattr(handler, _OUR_HANDLER, True)
    return handler


def configure_logging(
    service_name: str = DEFAULT_SERVICE_NAME, level: str | int = "INFO", *, stream: IO[str] | None = None
) -> logging.Handler:
    """One JSON handler on stdout (or `stream`) at the root logger, replacing one installed before.

    Lines below WARNING are written in batches within 0.1 s (app.telemetry.line_writer); call the
    returned handler's flush() to write them now.
    """
    _preparer.service_name = service_name
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OUR_HANDLER, False) and not isinstance(handler, OtlpLoggingHandler):
            root.removeHandler(handler)
    global _stdout_handler
    handler = BufferedLineHandler(stream if stream is not None else sys.stdout)
    _stdout_handler = handler
    handler.setFormatter(JsonFormatter(service_name))
    handler.addFilter(_preparer)
    root.addHandler(_mark(handler))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # processName/threadName are never output; not filling them saves work on every record.
    logging.logMultiprocessing = False
    logging.logThreads = False
    return handler


_stdout_handler: BufferedLineHandler | None = None  # the JSON stdout handler configure_logging installed
_otlp_handlers = 0  # OTLP handlers taking access lines: only then must an access line make its span current


def attach_otlp_handler(
    logger_provider: APILoggerProvider, level: int = logging.NOTSET, *, access_lines: bool = True
) -> logging.Handler:
    """Send every root-level record over OTLP too (scrubbed, with the active trace context)."""
    global _otlp_handlers
    handler = OtlpLoggingHandler(logger_provider, access_lines=access_lines)
    handler.setLevel(level)
    handler.addFilter(_SkipOtelInternals())
    if not access_lines:
        handler.addFilter(_SkipAccessLines())
    handler.addFilter(_preparer)
    logging.getLogger().addHandler(_mark(handler))
    _otlp_handlers += access_lines
    return handler


def detach_handler(handler: logging.Handler) -> None:
    global _otlp_handlers
    root = logging.getLogger()
    if handler in root.handlers:
        root.removeHandler(handler)
        if isinstance(handler, OtlpLoggingHandler):
            _otlp_handlers -= handler.access_lines


def stash_request_log_context(
    environ: MutableMapping[str, Any], span_context: SpanContext | None = None
) -> None:
    """Called while the request is still being handled: keep what the access log line needs."""
    if span_context is None:
        span_context = trace.get_current_span().get_span_context()
    environ[ENVIRON_LOG_CONTEXT] = (request_context.current(), span_context)


def _response_header(resp: Any, name: str) -> str:
    for key, value in getattr(resp, "headers", ()) or ():
        if key.lower() == name:
            return str(value)
    return ""


def _status_code(resp: Any) -> int | str:
    code = getattr(resp, "status_code", None)
    if isinstance(code, int):
        return code
    status = str(getattr(resp, "status", "") or "")
    head = status.split(None, 1)[0] if status else ""
    return int(head) if head.isdigit() else head


def _milliseconds(elapsed: timedelta) -> str:
    """`12.345`: the JSON number round(ms, 3) gives, from integers (no float formatting per line)."""
    micros = (elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    return f"{sign}{micros // 1000}.{micros % 1000:03d}"


# json's own string escaper (C), as JsonEncoder(ensure_ascii=False) applies it to every string.
_json_str: Callable[[str], str] = json.encoder.encode_basestring


class GunicornJsonLogger(GunicornLogger):  # type: ignore[misc]
    """gunicorn logger class: error and access logs as JSON records through the root handlers.

    Use with `logger_class = "app.telemetry.logging.GunicornJsonLogger"` and `accesslog = "-"` (gunicorn
    only calls access() when an access log is configured; where it points is ignored: stdout JSON).
    """

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        self._access_log_enabled = self._compute_access_log_enabled()
        self.loglevel = self.LOG_LEVELS.get(str(cfg.loglevel).lower(), logging.INFO)
        service = os.environ.get("OTEL_SERVICE_NAME") or _preparer.service_name
        configure_logging(service, level=self.loglevel)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True
        self.error_log.setLevel(self.loglevel)
        self.access_log.setLevel(logging.INFO)

    def access(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: timedelta) -> None:
        if not self.access_log_enabled or not self.access_log.isEnabledFor(logging.INFO):
            return
        try:
            self._access(resp, environ, request_time)
        except Exception:
            self.error_log.exception("access log failed")

    def _access(self, resp: Any, environ: Mapping[str, Any], request_time: timedelta) -> None:
        stash = environ.get(ENVIRON_LOG_CONTEXT)
        span_context: SpanContext | None
        if stash is not None:
            ctx, span_context = stash
            request_id, user = ctx.request_id, ctx.user
        else:
            span = environ.get(_FLASK_SPAN_KEY)
            span_context = span.get_span_context() if span is not None else None
            request_id, user = _response_header(resp, "x-request-id"), ""
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        status = _status_code(resp)
        stdout = _stdout_handler
        if (
            not _otlp_handlers
            and stdout is not None
            and all(getattr(h, _OUR_HANDLER, False) for h in logging.getLogger().handlers)
        ):
            # Fast path (the default): only our stdout handler takes access lines, so build the line
            # JsonFormatter would, without a LogRecord, filters and formatter (~3x cheaper per request).
            self._access_line(
                stdout, method, path, status, environ, request_time, request_id, user, span_context
            )
            return
        extra: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(request_time.total_seconds() * 1000.0, 3),
            "remote_addr": environ.get("REMOTE_ADDR", ""),
            "user_agent": environ.get("HTTP_USER_AGENT", ""),
            "request_id": request_id,
            "user": user,
            _SCRUB_ONLY: _ACCESS_CLIENT_FIELDS,
        }
        token = None
        if span_context is not None and span_context.is_valid:
            extra["trace_id"] = format(span_context.trace_id, "032x")
            extra["span_id"] = format(span_context.span_id, "016x")
            if _otlp_handlers:
                token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span_context)))
        # A LogRecord built here skips Logger._log's caller lookup (a stack walk per access line).
        record = logging.LogRecord(
            self.access_log.name, logging.INFO, "", 0, "%s %s %s", (method, path, status), None
        )
        record.__dict__.update(extra)
        try:
            self.access_log.handle(record)
        finally:
            if token is not None:
                otel_context.detach(token)

    @staticmethod
    def _access_line(
        stdout: BufferedLineHandler,
        method: str,
        path: str,
        status: int | str,
        environ: Mapping[str, Any],
        request_time: timedelta,
        request_id: str,
        user: str,
        span_context: SpanContext | None,
    ) -> None:
        # The line JsonFormatter would write for this record, field for field, as one f-string: every
        # string goes through json's C escaper, and one secret pre-check covers all client-supplied fields
        # (they rarely hold one) instead of one check per field. ~3 us instead of ~12 us per request.
        agent = environ.get("HTTP_USER_AGENT", "")
        if may_hold_secret(f"{method} {path} {agent} {request_id} {user}"):
            method, path, agent = redact_text(method), redact_text(path), redact_text(agent)
            request_id, user = redact_text(request_id), redact_text(user)
        trace_id = span_id = ""
        if span_context is not None and span_context.is_valid:
            trace_id, span_id = format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
        status_json = str(status) if isinstance(status, int) else _json_str(status)
        stdout.append_line(
            f'{{"timestamp": "{rfc3339(time.time())}", "level": "INFO", "logger": "gunicorn.access", '
            f'"message": {_json_str(f"{method} {path} {status}")}, '
            f'"service": {_json_str(_preparer.service_name)}, '
            f'"trace_id": "{trace_id}", "span_id": "{span_id}", '
            f'"request_id": {_json_str(request_id)}, "user": {_json_str(user)}, "pid": {current_pid()}, '
            f'"method": {_json_str(method)}, "path": {_json_str(path)}, "status": {status_json}, '
            f'"duration_ms": {_milliseconds(request_time)}, '
            f'"remote_addr": {_json_str(str(environ.get("REMOTE_ADDR", "")))}, '
            f'"user_agent": {_json_str(agent)}}}'
        )
