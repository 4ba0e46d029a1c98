"""Property-based fuzzing of every RPC of the real service, from field values down to raw message bytes.

Requests are built from each method's message descriptor: every field gets values in and out of range,
empty and huge (strings up to 20 KB, bytes past the 1 MiB message limit, the full int64 range, deep JSON
values); some are then serialized by hand with a string field that is not valid UTF-8, or cut short, or
replaced by random bytes. Metadata varies too: no token, malformed or huge authorization, two of them,
odd keys, big values. Whatever comes in: never INTERNAL, UNKNOWN, DATA_LOSS or UNIMPLEMENTED, and both
workers stay alive and ready. Examples are derandomized and bounded.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.rpc.convert import python_to_value
from app.rpc.platform.v1 import platform_pb2 as pb
from tests.e2e.hostile.conftest import SERVER_FAULTS, Hostile

pytestmark = pytest.mark.e2e

FUZZ = settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
METHODS = list(pb.DESCRIPTOR.services_by_name["PlatformService"].methods)
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)

strings = st.one_of(
    st.sampled_from(["", "k1", "ACME", "scrypt", "pbkdf2", "h1", "n", "iterations", "k\n", "..", "é" * 3]),
    st.text(max_size=40),
    st.integers(min_value=129, max_value=20_000).map(lambda n: "x" * n),
)
blobs = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"", b"\x00" * 12, b"s" * 64, b"k" * 32]),
    st.integers(min_value=60_000, max_value=70_000).map(lambda n: b"p" * n),  # around the 64 KiB bounds
    st.just(b"x" * (1024 * 1024 + 1)),  # past the transport's message limit
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


def deep_list(depth: int) -> Any:
    value: Any = True
    for _ in range(depth):
        value = [value]
    return value


def fill(message: Message, draw: st.DrawFn) -> None:
    for field in message.DESCRIPTOR.fields:
        if not draw(st.integers(0, 4)):
            continue  # unset
        name, kind = field.name, field.type
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = draw(st.dictionaries(strings, st.integers(*INT64), max_size=4))
            getattr(message, name).update(entries)
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Value":
            target = getattr(message, name)
            value = draw(json_values | st.integers(20, 48).map(deep_list))
            python_to_value(value, target)
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            target = getattr(message, name)
            python_to_value(draw(st.dictionaries(strings, json_values, max_size=4)), holder := Value())
            target.CopyFrom(holder.struct_value)
        elif kind == FieldDescriptor.TYPE_STRING:
            setattr(message, name, draw(strings))
        elif kind == FieldDescriptor.TYPE_BYTES:
            setattr(message, name, draw(blobs))
        elif kind == FieldDescriptor.TYPE_INT64:
            setattr(message, name, draw(st.integers(*INT64) | st.sampled_from([0, 1, 2, 5_000_001, -1])))
        elif kind == FieldDescriptor.TYPE_INT32:
            setattr(message, name, draw(st.integers(*INT32) | st.sampled_from([0, 1, 100, 101])))
        else:  # pragma: no cover - a new field type needs a strategy here
            raise AssertionError(f"no strategy for {message.DESCRIPTOR.name}.{name}")


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def bad_utf8_field(message: Message, draw: st.DrawFn) -> bytes:
    """The message's bytes plus one of its string fields holding bytes that are not UTF-8."""
    fields = [f for f in list(message.DESCRIPTOR.fields) if f.type == FieldDescriptor.TYPE_STRING]
    if not fields:
        return b""
    field = draw(st.sampled_from(fields))
    junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"ok\xfe", b"\xf4\x90\x80\x80"]))
    return bytes([field.number << 3 | 2]) + _varint(len(junk)) + junk


@st.composite
def calls(draw: st.DrawFn, token: str) -> tuple[str, bytes, list[tuple[str, str]]]:
    method = draw(st.sampled_from(METHODS))
    message = getattr(pb, method.input_type.name)()
    fill(message, draw)
    payload = message.SerializeToString()
    mangle = draw(st.integers(0, 7))
    if mangle == 0:
        payload += bad_utf8_field(message, draw)
    elif mangle == 1 and payload:
        payload = payload[: draw(st.integers(0, len(payload) - 1))]  # cut short
    elif mangle == 2:
        payload = draw(st.binary(max_size=40))
    metadata: list[tuple[str, str]] = []
    auth = draw(
        st.sampled_from(
            [f"Bearer {token}"] * 4
            + [None, "Bearer", "Bearer not.a.jwt", f"bearer  {token}", f"Bearer {token}x", "Basic eDp5"]
        )
        | st.integers(8000, 20_000).map(lambda n: "Bearer " + "a" * n)
    )
    if auth is not None:
        metadata.append(("authorization", auth))
    if draw(st.integers(0, 5)) == 0:
        metadata.append(("authorization", "Bearer second"))
    printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
    keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=30)
    for key, value in draw(st.dictionaries(keys, printable, max_size=3)).items():
        if not key.startswith("grpc-") and not key.endswith("-bin") and key not in ("te", "content-type"):
            metadata.append((key, value))
    if draw(st.booleans()):
        metadata.append(("x-request-id", draw(printable)))
    return method.name, payload, metadata


def test_fuzz_every_rpc_fields_bytes_and_metadata(hostile: Hostile) -> None:
    seen: dict[str, set[Any]] = {}

    @FUZZ
    @given(calls(hostile.token))
    def one(call: tuple[str, bytes, list[tuple[str, str]]]) -> None:
        method, payload, metadata = call
        code, details = hostile.rpc(method, payload, metadata)
        assert code not in SERVER_FAULTS, (method, payload[:200], metadata, code, details[:300])
        seen.setdefault(method, set()).add(code)

    one()
    assert set(seen) == {m.name for m in METHODS}, "every RPC was called"
    hostile.assert_still_ready()


@pytest.mark.parametrize(
    ("method", "payload", "code"),
    [
        ("Sign", pb.SignRequest(message=b"x" * (1024 * 1024 + 1)).SerializeToString(), "RESOURCE_EXHAUSTED"),
        ("GetItem", b"\x0a\x02\xff\xfe", "INVALID_ARGUMENT"),
        ("GetQuote", b"\xff\xff\xff\xff", "INVALID_ARGUMENT"),
        ("CountPrimes", pb.CountPrimesRequest(limit=-(2**63)).SerializeToString(), "INVALID_ARGUMENT"),
        ("WatchQuotes", pb.WatchQuotesRequest(count=2**31 - 1).SerializeToString(), "INVALID_ARGUMENT"),
    ],
)
def test_pinned_hostile_messages(hostile: Hostile, method: str, payload: bytes, code: str) -> None:
    got, details = hostile.rpc(method, payload, [("authorization", f"Bearer {hostile.token}")])
    assert got == getattr(grpc.StatusCode, code), details
