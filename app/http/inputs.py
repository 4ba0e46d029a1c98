"""Reading request bodies: a JSON object in, typed fields out, every failure a 400 naming the field."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest, HTTPException

from app.domain.errors import InvalidArgument

log = logging.getLogger(__name__)
_MISSING = object()


def json_body() -> dict[str, Any]:
    if not request.is_json:
        raise InvalidArgument("body must be JSON (Content-Type: application/json)", field="body")
    try:
        request.get_data(cache=True)
    except HTTPException:
        raise  # 413 past MAX_CONTENT_LENGTH, answered by problems.py
    except Exception as exc:
        # The body's framing broke while it was read: a bad chunk, a client gone or too slow. The WSGI
        # server raises its own types for these (gunicorn: its ParseException subclasses), which this
        # adapter does not name; whatever they are, the client sent a body that cannot be read.
        log.info("request body unreadable: %s", type(exc).__name__)
        raise InvalidArgument("the body could not be read (malformed or incomplete)", field="body") from None
    try:
        data = request.get_json()
    except BadRequest:  # not JSON: bad syntax, bad encoding, an integer beyond Python's 4300 digits
        raise InvalidArgument("body is not valid JSON", field="body") from None
    except RecursionError:  # the parser gives up around a thousand levels; values allow far fewer anyway
        raise InvalidArgument("body is nested too deeply", field="body") from None
    if not isinstance(data, dict):
        raise InvalidArgument("body must be a JSON object", field="body")
    return data


def b64_field(body: dict[str, Any], name: str, *, required: bool = True, default: bytes = b"") -> bytes:
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise InvalidArgument(f"'{name}' is required (base64)", field=name)
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"'{name}' must be a base64 string", field=name)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"'{name}' is not valid base64", field=name) from None


def int_field(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidArgument(f"'{name}' is required (integer)", field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"'{name}' must be an integer", field=name)
    return value


def str_field(body: dict[str, Any], name: str, *, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise InvalidArgument(f"'{name}' must be a string", field=name)
    return value


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
