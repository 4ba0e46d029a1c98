"""JSON logs: the documented fields, trace and request correlation, secrets never written or exported."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
import pytest
from gunicorn.config import Config
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from app.domain.context import RequestContext, bind, set_user
from app.telemetry import logging as tlog
from app.telemetry.redaction import REDACTED, redact_text, redact_value
from tests.conftest import wait_until

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
ACCESS_FIELDS = ["method", "path", "status", "duration_ms", "remote_addr", "user_agent"]
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

tracer = TracerProvider().get_tracer("test")


@dataclass
class Captured:
    stream: io.StringIO
    otlp: InMemoryLogRecordExporter

    def text(self) -> str:
        """What reached the stream, once the handler wrote its pending (batched) lines."""
        for handler in logging.getLogger().handlers:
            handler.flush()
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        # Lines end at "\n" only, as for log shippers; splitlines() would also split inside a value at U+2028.
        return [json.loads(line) for line in self.text().split("\n") if line]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """Our stdout handler (into a buffer) and our OTLP handler (into memory) on the root logger."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    stdout_handler = tlog.configure_logging("platform-api", "DEBUG", stream=stream)
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    otlp_handler = tlog.attach_otlp_handler(provider)
    yield Captured(stream, exporter)
    tlog.detach_handler(otlp_handler)
    tlog.detach_handler(stdout_handler)
    root.setLevel(level)
    provider.shutdown()


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


def test_info_lines_are_batched_and_warnings_written_at_once() -> None:
    stream = io.StringIO()
    handler = tlog.configure_logging("platform-api", "INFO", stream=stream)
    try:
        log = logging.getLogger("app.test")
        log.info("queued")
        assert stream.getvalue() == ""  # written by the writer thread, not by the request thread
        log.warning("urgent")  # writes everything pending, in order
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
            "queued",
            "urgent",
        ]
        log.info("later")
        wait_until(lambda: "later" in stream.getvalue(), timeout=5, message="the writer thread to write")
    finally:
        tlog.detach_handler(handler)


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


# -- gunicorn --------------------------------------------------------------------------------------


@dataclass
class GunicornResponse:
    """The attributes gunicorn's Response gives the logger (status_code, status, headers)."""

    status_code: int
    headers: list[tuple[str, str]]

    @property
    def status(self) -> str:
        return f"{self.status_code} OK"


@pytest.fixture
def gunicorn_logger(captured: Captured) -> Iterator[tlog.GunicornJsonLogger]:
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("loglevel", "info")
    logger = tlog.GunicornJsonLogger(cfg)
    # setup() installed its own stdout handler; put the test's buffer back in its place
    tlog.configure_logging("platform-api", "INFO", stream=captured.stream)
    yield logger
    for name in ("gunicorn.error", "gunicorn.access"):
        logging.getLogger(name).propagate = False


def test_access_log_is_one_json_record_with_request_fields(
    captured: Captured, gunicorn_logger: tlog.GunicornJsonLogger
) -> None:
    with tracer.start_as_current_span("GET /v1/items/<key>") as span:
        context = RequestContext(request_id="rid-7", user="bob", transport="http")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/v1/items/abc",
            "QUERY_STRING": f"token={JWT}",
            "RAW_URI": f"/v1/items/abc?token={JWT}",
            "REMOTE_ADDR": "10.1.2.3",
            "HTTP_USER_AGENT": "curl/8",
            "HTTP_AUTHORIZATION": f"Bearer {JWT}",
        }
        with bind(context):
            tlog.stash_request_log_context(environ)
    response = GunicornResponse(200, [("X-Request-ID", "rid-7")])
    gunicorn_logger.access(response, None, environ, timedelta(microseconds=12_345))
    (line,) = captured.lines()
    assert list(line) == DOC_FIELDS + ACCESS_FIELDS
    assert line["logger"] == "gunicorn.access"
    assert line["message"] == "GET /v1/items/abc 200"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/items/abc", 200)
    assert line["duration_ms"] == pytest.approx(12.345)
    assert (line["remote_addr"], line["user_agent"]) == ("10.1.2.3", "curl/8")
    assert (line["request_id"], line["user"]) == ("rid-7", "bob")
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    (record,) = captured.otlp.get_finished_logs()
    assert record.log_record.trace_id == span.get_span_context().trace_id  # the OTLP copy is in the trace
    assert JWT not in captured.text()


@pytest.mark.parametrize(
    ("path", "agent", "user"),
    [
        (f"/v1/items/Bearer {JWT}", f"agent {JWT}", "carol"),
        ('/v1/items/"quoted"\\back\tslash', "ctl \x00\x1f\x7f end", "zoë ✓ 🚀"),
        ("/v1/items/line\nbreak\u2028sep", 'agent "with" quotes', 'o"brien\\'),
    ],
    ids=["secrets", "escapes", "newlines"],
)
def test_access_line_fast_path_writes_the_same_line(
    captured: Captured, gunicorn_logger: tlog.GunicornJsonLogger, path: str, agent: str, user: str
) -> None:
    """Without an OTLP handler taking access lines, access() skips logging's machinery: same output."""
    with tracer.start_as_current_span("GET /v1/items/<key>"):
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "REMOTE_ADDR": "10.1.2.3",
            "HTTP_USER_AGENT": agent,
        }
        with bind(RequestContext(request_id="rid-8", user=user, transport="http")):
            tlog.stash_request_log_context(environ)
    response = GunicornResponse(404, [])
    gunicorn_logger.access(response, None, environ, timedelta(microseconds=2_500))  # slow path (OTLP on)
    otlp = next(h for h in logging.getLogger().handlers if isinstance(h, tlog.OtlpLoggingHandler))
    tlog.detach_handler(otlp)
    try:
        gunicorn_logger.access(response, None, environ, timedelta(microseconds=2_500))  # fast path
    finally:  # put it back as the fixture left it (its teardown detaches it once more)
        logging.getLogger().addHandler(otlp)
        tlog._otlp_handlers += 1
    slow, fast = captured.lines()
    assert len(captured.otlp.get_finished_logs()) == 1, "the fast line did not go over OTLP"
    slow.pop("timestamp")
    assert RFC3339_MS.match(fast.pop("timestamp"))
    assert fast == slow
    assert list(fast) == [f for f in DOC_FIELDS + ACCESS_FIELDS if f != "timestamp"]
    assert JWT not in captured.text()


def test_access_log_without_a_stash_falls_back_to_the_response_header(
    captured: Captured, gunicorn_logger: tlog.GunicornJsonLogger
) -> None:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/crypto/encrypt", "REMOTE_ADDR": "127.0.0.1"}
    response = GunicornResponse(503, [("Content-Type", "text/plain"), ("x-request-id", "hdr-1")])
    gunicorn_logger.access(response, None, environ, timedelta(milliseconds=3))
    (line,) = captured.lines()
    assert (line["status"], line["request_id"], line["user"], line["trace_id"]) == (503, "hdr-1", "", "")
    assert line["user_agent"] == ""


def test_access_log_is_off_without_accesslog(captured: Captured) -> None:
    logger = tlog.GunicornJsonLogger(Config())
    tlog.configure_logging("platform-api", "INFO", stream=captured.stream)
    logger.access(GunicornResponse(200, []), None, {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, timedelta(0))
    assert captured.lines() == []


def test_gunicorn_error_log_is_json(captured: Captured, gunicorn_logger: tlog.GunicornJsonLogger) -> None:
    gunicorn_logger.info("Booting worker with pid: %s", 42)
    gunicorn_logger.debug("not at info level")
    (line,) = captured.lines()
    assert (line["logger"], line["level"], line["message"]) == (
        "gunicorn.error",
        "INFO",
        "Booting worker with pid: 42",
    )


def _log_in_child(path: str) -> None:
    from app.telemetry.line_writer import BufferedLineHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, BufferedLineHandler):
            logging.getLogger("app.child").info("from the child")
            handler.flush()


def test_a_forked_child_writes_only_its_own_lines(tmp_path: Any) -> None:
    import multiprocessing

    path = tmp_path / "out.jsonl"
    with path.open("a", buffering=1) as stream:
        handler = tlog.configure_logging("platform-api", "INFO", stream=stream)
        try:
            logging.getLogger("app.parent").info("pending in the parent")  # not yet written at fork
            child = multiprocessing.get_context("fork").Process(target=_log_in_child, args=(str(path),))
            child.start()
            child.join(10)
            assert child.exitcode == 0
            handler.flush()
        finally:
            tlog.detach_handler(handler)
    messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    assert sorted(messages) == ["from the child", "pending in the parent"]  # each line exactly once


@pytest.mark.parametrize("micros", [0, 1, 999, 1_000, 2_500, 12_345, 86_400_000_005])
def test_access_line_duration_is_the_rounded_milliseconds(micros: int) -> None:
    elapsed = timedelta(microseconds=micros)
    assert json.loads(tlog._milliseconds(elapsed)) == round(elapsed.total_seconds() * 1000.0, 3)
