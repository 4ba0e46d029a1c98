"""What the platform's two server instrumentations (Flask, gRPC aio) share: when to extract trace context,
and how an exception goes on a span."""

from __future__ import annotations

import os
import traceback

from opentelemetry.trace import Span

from app.telemetry.redaction import redact_text

_DEFAULT_PROPAGATORS = {"tracecontext,baggage", "baggage,tracecontext"}


def always_extract() -> bool:
    """True when OTEL_PROPAGATORS names others (b3, jaeger...) whose keys are unknown here: extract always."""
    propagators = os.environ.get("OTEL_PROPAGATORS", "tracecontext,baggage").replace(" ", "")
    return propagators not in _DEFAULT_PROPAGATORS


def record_exception(span: Span, exc: BaseException) -> None:
    """An exception event with its message and stack trace scrubbed: exception text may quote request data."""
    span.record_exception(
        exc,
        attributes={
            "exception.message": redact_text(str(exc)),
            "exception.stacktrace": redact_text(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            ),
        },
    )
