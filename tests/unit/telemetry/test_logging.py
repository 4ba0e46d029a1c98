"""JSON logs: the documented fields, trace and request correlation, secrets never written or exported."""

from __future__ import annotations

import base64
import json
import logging
import os
import re

import jwt
from opentelemetry.sdk.trace import TracerProvider

from app.domain.context import RequestContext, bind, set_user
from app.telemetry import logging as tlog
from app.telemetry.redaction import REDACTED, redact_text, redact_value
from tests.unit.conftest import Captured

DOC_FIELDS = [
    "timestamp",
    "level",
    "logger",
    "message",
    "service",
    "trace_id",
    "span_id",
    "request_id",
    "user",
    "pid",
]
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

tracer = TracerProvider().get_tracer("test")


def test_line_has_exactly_the_documented_fields_and_correlation(captured: Captured) -> None:
    log = logging.getLogger("app.test")
    with (
        bind(RequestContext(request_id="req-1", transport="http")),
        tracer.start_as_current_span("op") as span,
    ):
        set_user("alice")
        log.info("hello %s", "world")
    (line,) = captured.lines()
    assert list(line) == DOC_FIELDS
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["request_id"] == "req-1"
    assert line["user"] == "alice"
    assert line["message"] == "hello world"
    assert (line["level"], line["logger"], line["service"], line["pid"]) == (
        "INFO",
        "app.test",
        "platform-api",
        os.getpid(),
    )
    assert RFC3339_MS.match(line["timestamp"]), line["timestamp"]

    (record,) = captured.otlp.get_finished_logs()
    assert record.log_record.trace_id == context.trace_id
    assert record.log_record.span_id == context.span_id
    assert record.log_record.body == "hello world"
    attributes = dict(record.log_record.attributes or {})
    assert attributes["request_id"] == "req-1" and attributes["user"] == "alice"
    assert not {"trace_id", "span_id", "service", "pid", "_platform_prepared"} & set(attributes)


def test_outside_a_span_and_a_request_the_ids_are_empty(captured: Captured) -> None:
    logging.getLogger("app.test").warning("idle")
    (line,) = captured.lines()
    assert (line["trace_id"], line["span_id"], line["request_id"], line["user"]) == ("", "", "", "")
    assert line["level"] == "WARNING"


def test_extras_and_exceptions_are_kept(captured: Captured) -> None:
    log = logging.getLogger("app.test")
    log.info("breaker opened", extra={"breaker": "quotes", "failures": 7})
    try:
        raise RuntimeError("upstream down")
    except RuntimeError:
        log.exception("call failed")
    first, second = captured.lines()
    assert first["breaker"] == "quotes" and first["failures"] == 7
    assert "RuntimeError: upstream down" in second["exc_info"]
    exported = captured.otlp.get_finished_logs()[1].log_record
    assert exported.attributes is not None
    assert exported.attributes["exception.type"] == "RuntimeError"


def test_rfc3339_timestamps() -> None:
    assert tlog.rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    assert tlog.rfc3339(1_700_000_000.0071) == "2023-11-14T22:13:20.007Z"
    assert tlog.rfc3339(1_700_000_001.999) == "2023-11-14T22:13:21.999Z"


# -- secrets ---------------------------------------------------------------------------------------

JWT = jwt.encode({"sub": "alice", "scope": "items:write"}, "s" * 32, algorithm="HS256")
KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()
PLAINTEXT = "attack at dawn, bring the launch codes"
CIPHERTEXT = base64.b64encode(os.urandom(48)).decode()
SIGNATURE = base64.b64encode(os.urandom(64)).decode()
PASSWORD = "hunter2-correct-horse"
BASIC = base64.b64encode(b"admin:" + PASSWORD.encode()).decode()
SECRETS = [JWT, JWT.split(".")[1], KEY, PLAINTEXT, CIPHERTEXT, SIGNATURE, PASSWORD, BASIC]


def _emit_every_kind_of_secret(log: logging.Logger) -> None:
    log.info("incoming request with Authorization: Bearer %s", JWT)
    log.info("headers %s", {"Authorization": f"Basic {BASIC}", "Accept": "*/*"})
    log.info("raw header authorization=%s", JWT)
    log.warning(
        "decrypt failed",
        extra={
            "key": KEY,
            "plaintext": PLAINTEXT,
            "ciphertext": CIPHERTEXT,
            "signature": SIGNATURE,
            "token": JWT,
            "password": PASSWORD,
            "signing_key": KEY,
        },
    )
    log.info(
        "nested",
        extra={
            "request": {"headers": {"authorization": f"Bearer {JWT}"}, "keyring": [{"kid": "k1", "key": KEY}]}
        },
    )
    log.info("request", extra={"request": {"plaintext": PLAINTEXT, "note": f"token={JWT}"}})
    log.info(f"login password={PASSWORD} token: {JWT}")
    log.info({"event": "login", "password": PASSWORD, "detail": f"Bearer {JWT}"})
    log.info("bad format %s %s", JWT)  # a broken call must not leak through its fallback text
    try:
        raise PermissionError(f"token {JWT} expired")
    except PermissionError:
        log.exception("auth failed")


def test_no_secret_reaches_stdout_or_otlp(captured: Captured) -> None:
    with tracer.start_as_current_span("request"):
        _emit_every_kind_of_secret(logging.getLogger("app.test"))
    stdout = captured.text()
    records = captured.otlp.get_finished_logs()
    assert len(captured.lines()) == len(records) == 10
    exported = json.dumps(
        [
            [str(r.log_record.body), {k: str(v) for k, v in (r.log_record.attributes or {}).items()}]
            for r in records
        ]
    )
    for secret in SECRETS:
        assert secret not in stdout
        assert secret not in exported
    assert REDACTED in stdout and REDACTED in exported
    assert "decrypt failed" in stdout and "PermissionError" in stdout  # the useful part stays


def test_redaction_rules() -> None:
    assert redact_text("plain text") == "plain text"
    assert redact_text(f"Bearer {JWT}") == f"Bearer {REDACTED}"
    assert redact_text(f"x {JWT} y") == f"x {REDACTED} y"
    assert redact_text('{"authorization": "Basic abc"}') == f'{{"authorization": {REDACTED}}}'
    assert redact_text("Authorization: Token abcdef") == f"Authorization: {REDACTED}"
    assert redact_text("api_key=abc123&x=1") == f"api_key={REDACTED}&x=1"
    original = {"a": 1, "b": ["x"]}
    assert redact_value(original) is original  # nothing to do: no copy
    assert redact_value({"Password": "p", "n": ("t", f"Bearer {JWT}")}) == {
        "Password": REDACTED,
        "n": ("t", f"Bearer {REDACTED}"),
    }


def test_the_sdks_own_records_stay_off_otlp_and_repeat_on_stdout_once_a_minute(captured: Captured) -> None:
    exporter_log = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")
    for _ in range(5):
        exporter_log.warning("Failed to export %s to %s", "spans", "collector:4317")
    exporter_log.warning("another message")
    assert [line["message"] for line in captured.lines()] == [
        "Failed to export spans to collector:4317",
        "another message",
    ]
    assert captured.otlp.get_finished_logs() == ()


def test_excluded_loggers_stay_on_stdout_only(captured: Captured) -> None:
    tlog.exclude_from_otlp("app.test.stdout-only")  # a name only this test uses
    logging.getLogger("app.test.stdout-only").info("local")
    logging.getLogger("app.test.everywhere").info("shared")
    assert [line["message"] for line in captured.lines()] == ["local", "shared"]
    assert [r.log_record.body for r in captured.otlp.get_finished_logs()] == ["shared"]
