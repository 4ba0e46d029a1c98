"""gunicorn's gthread worker, hardened against slow and malformed clients.

**Slow clients.** Plain gthread hands every new connection to a request thread at once; the thread waits
up to 5 s for a first byte and, once one arrives, blocks until the whole request head is in. A client
that sends its head a byte at a time (slowloris) therefore holds a thread for as long as it likes:
measured on this service (8 threads a worker, 2 workers), 40 such connections left /healthz unanswered
for as long as they lasted, and 40 idle ones delayed it by up to 5 s. Here the worker's own event loop
reads the head, without blocking and for every connection at once, and a thread gets the connection only
when the head is complete (ends in an empty line). A head must be complete within HEAD_TIMEOUT_S of the
connection's first byte being awaited (408 otherwise) and fit in HEAD_MAX_BYTES (431 otherwise). Bodies
are read by the request thread as before; see docs/reliability.md, "Limits", for what that leaves open.

**Malformed requests.** What gunicorn's parser refuses (a bad request line or header, a request line or
header field over its limits, an unsupported transfer coding, an unmet Expect) is answered with an RFC
9457 problem+json body like every other error of the API, never gunicorn's HTML page, and the body never
echoes what the client sent. gunicorn answers an unsupported transfer coding with 501; this is the
client's doing and gets 400 (a client must not be able to produce server errors).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import selectors
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0
HEAD_MAX_BYTES = 32 * 1024
_READ_BYTES = 16 * 1024
_END_OF_HEAD = b"\r\n\r\n"
PROBLEM_JSON = "application/problem+json"

# (exception class, status, title, detail): the first match wins, so subclasses come first. Details
# describe the problem without echoing the client's bytes (they may carry credentials).
_PARSE_ERRORS: tuple[tuple[type[Exception], int, str, str], ...] = (
    (http_errors.LimitRequestLine, 414, "URI Too Long", "the request line is longer than allowed"),
    (
        http_errors.LimitRequestHeaders,
        431,
        "Request Header Fields Too Large",
        "too many header fields, or one longer than allowed",
    ),
    (http_errors.InvalidRequestLine, 400, "Bad Request", "the request line is malformed"),
    (http_errors.InvalidRequestMethod, 400, "Bad Request", "the request method is malformed"),
    (http_errors.InvalidHTTPVersion, 400, "Bad Request", "the HTTP version is not supported"),
    (http_errors.ObsoleteFolding, 400, "Bad Request", "header fields must not be folded"),
    (http_errors.InvalidHeaderName, 400, "Bad Request", "a header field name is malformed"),
    (http_errors.InvalidHeader, 400, "Bad Request", "a header field is malformed or repeated"),
    (http_errors.UnsupportedTransferCoding, 400, "Bad Request", "the transfer coding is not supported"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "only 'Expect: 100-continue' is supported"),
    (http_errors.InvalidChunkSize, 400, "Bad Request", "the chunked body is malformed"),
    (http_errors.ChunkMissingTerminator, 400, "Bad Request", "the chunked body is malformed"),
    (http_errors.InvalidChunkExtension, 400, "Bad Request", "the chunked body is malformed"),
    (http_errors.InvalidSchemeHeaders, 400, "Bad Request", "the scheme headers contradict each other"),
    (http_errors.InvalidProxyLine, 400, "Bad Request", "the PROXY line is malformed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "proxy requests are not allowed from here"),
    (http_errors.InvalidH2CPreface, 400, "Bad Request", "expected the HTTP/2 connection preface"),
)
# What the application, not the client, got wrong (they subclass InvalidHeader and InvalidHeaderName).
_SERVER_FAULTS = (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)


def problem_response(status: int, title: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response with an RFC 9457 body, closing the connection."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def classify(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, title, detail) for a request gunicorn's parser refused; None for anything else."""
    if isinstance(exc, _SERVER_FAULTS):
        return None
    for cls, status, title, detail in _PARSE_ERRORS:
        if isinstance(exc, cls):
            return status, title, detail
    return None


def _head_size(buffered: bytes | bytearray) -> int | None:
    """Bytes up to the end of the first request head in `buffered`; None while it is incomplete."""
    # Empty lines before the request line are allowed (RFC 9112 section 2.2) and are not its end.
    start = len(buffered) - len(buffered.lstrip(b"\r\n"))
    end = buffered.find(_END_OF_HEAD, start)
    return None if end < 0 else end + len(_END_OF_HEAD)


class _Head:
    """A connection whose request head is being read by the event loop."""

    __slots__ = ("buffer", "conn", "deadline")

    def __init__(self, conn: Any, buffered: bytes, deadline: float) -> None:
        self.conn = conn
        self.buffer = bytearray(buffered)
        self.deadline = deadline


class HeadFirstThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread that gives a connection to a thread only once its request head is in (module docstring)."""

    head_timeout_s = HEAD_TIMEOUT_S
    head_max_bytes = HEAD_MAX_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heads: deque[_Head] = deque()  # in deadline order: every entry gets the same timeout

    def enqueue_req(self, conn: Any) -> None:
        if not self._plain_http1(conn):
            super().enqueue_req(conn)  # the bytes on the wire are not an HTTP/1 head: gthread as it is
            return
        # A kept-alive connection may hold bytes the last request read ahead (pipelining).
        buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        size = _head_size(buffered)
        if size is not None and size <= self.head_max_bytes:
            self._dispatch(conn, buffered)
            return
        conn.sock.setblocking(False)
        head = _Head(conn, buffered, time.monotonic() + self.head_timeout_s)
        self._heads.append(head)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, head))

    def _plain_http1(self, conn: Any) -> bool:
        cfg = self.cfg
        return not (
            cfg.is_ssl
            or conn.is_http2
            or getattr(cfg, "protocol", "http") != "http"
            or getattr(cfg, "http2_cleartext", "off") in ("prior-knowledge", "both")
        )

    def _on_head_readable(self, head: _Head, _sock: Any) -> None:
        try:
            data = head.conn.sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(head)
            return
        head.buffer += data
        size = _head_size(head.buffer)
        if size is not None and size <= self.head_max_bytes:
            self._forget(head)
            self._dispatch(head.conn, bytes(head.buffer))
        elif len(head.buffer) > self.head_max_bytes:
            self._refuse(
                head,
                431,
                "Request Header Fields Too Large",
                f"the request head must be at most {self.head_max_bytes} bytes",
            )

    def _dispatch(self, conn: Any, buffered: bytes) -> None:
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        if buffered:
            conn.parser.unreader.unread(buffered)
        conn.data_ready = True  # gthread's thread must not wait for more
        super().enqueue_req(conn)

    def murder_pending(self) -> None:
        """gthread calls this once per loop turn (at least once a second): expire slow heads too."""
        super().murder_pending()
        now = time.monotonic()
        while self._heads and self._heads[0].deadline <= now:
            self._refuse(
                self._heads[0],
                408,
                "Request Timeout",
                f"the request head did not arrive within {self.head_timeout_s:g} s",
            )

    def _forget(self, head: _Head) -> None:
        self._heads.remove(head)
        with contextlib.suppress(KeyError, ValueError, OSError):  # already unregistered
            self.poller.unregister(head.conn.sock)

    def _drop(self, head: _Head) -> None:
        self._forget(head)
        self.nr_conns -= 1
        head.conn.close()

    def _refuse(self, head: _Head, status: int, title: str, detail: str) -> None:
        with contextlib.suppress(OSError):  # best effort: the socket is non-blocking, never wait
            head.conn.sock.send(problem_response(status, title, detail))
        self._drop(head)

    def handle_request(self, req: Any, conn: Any) -> Any:
        keepalive = super().handle_request(req, conn)
        req.platform_answered = True  # a response went out: see handle_error
        return keepalive

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Parse errors as problem+json (module docstring); anything else is gunicorn's bare 500."""
        if getattr(req, "platform_answered", False):
            # The app answered without reading the whole body, and draining the rest for keep-alive
            # found it malformed (a bad chunk): gunicorn would write a second response after the first.
            # The connection is closed instead, which is all a client can be told now.
            self.log.debug("malformed body after the response; closing (%s)", type(exc).__name__)
            return
        known = classify(exc)
        if known is None:
            super().handle_error(req, client, addr, exc)
            return
        status, title, detail = known
        ip = addr[0] if addr else ""
        self.log.warning("invalid request from ip=%s: %s (%s)", ip, detail, type(exc).__name__)
        try:
            util.write_nonblock(client, problem_response(status, title, detail))
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.debug("failed to send the error response: %s", err)
