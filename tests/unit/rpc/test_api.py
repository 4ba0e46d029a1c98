"""Every PlatformService RPC round trip over a real socket, and its argument errors.

The server runs the real services (redis-server, worker pool, the quotes upstream on its own socket).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from app.domain.crypto import MAX_PLAINTEXT_BYTES
from app.domain.items import MAX_VALUE_BYTES
from app.rpc.client import call_metadata
from app.rpc.platform.v1 import platform_pb2 as pb
from tests.unit.rpc.support import INSTANCE_ID, RpcStack, bad_field, call_error, rpc_stack, trailers


@pytest.fixture(scope="module")
def stack(redis_server: str) -> Iterator[RpcStack]:
    # Transport limit above the domain's value limit, so that the domain's own check is reachable.
    with rpc_stack(redis_server, max_body_bytes=4 * MAX_VALUE_BYTES) as s:
        yield s


def unique_key() -> str:
    return f"rpc-{uuid.uuid4().hex}"


def value_of(obj: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if isinstance(obj, dict):
        value.struct_value.update(obj)
    elif isinstance(obj, list):
        value.list_value.extend(obj)
    else:
        value.string_value = obj
    return value


def test_item_put_get_delete_round_trip(stack: RpcStack) -> None:
    key, md = unique_key(), stack.md()
    doc = {
        "name": "widget",
        "count": 3,
        "ratio": 0.5,
        "tags": ["a", "b"],
        "none": None,
        "ok": True,
        "empty": {},
    }

    put = stack.stub.PutItem(
        pb.PutItemRequest(key=key, value=value_of(doc), ttl_s=60), metadata=md, timeout=5
    )
    assert (put.key, put.version) == (key, 1)
    assert 0 < put.ttl_s <= 60

    got = stack.stub.GetItem(pb.GetItemRequest(key=key), metadata=md, timeout=5)
    assert got.version == 1
    assert got.value.struct_value.fields["count"].number_value == 3
    assert got.value.struct_value.fields["none"].WhichOneof("kind") == "null_value"
    assert got.value.struct_value.fields["empty"].WhichOneof("kind") == "struct_value"
    assert got.value == value_of(doc)

    stack.stub.DeleteItem(pb.DeleteItemRequest(key=key), metadata=md, timeout=5)
    err = call_error(lambda: stack.stub.GetItem(pb.GetItemRequest(key=key), metadata=md, timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_item_without_ttl_has_no_ttl_field(stack: RpcStack) -> None:
    key, md = unique_key(), stack.md()
    stack.stub.PutItem(pb.PutItemRequest(key=key, value=value_of("v")), metadata=md, timeout=5)
    got = stack.stub.GetItem(pb.GetItemRequest(key=key), metadata=md, timeout=5)
    assert not got.HasField("ttl_s")
    assert got.value.string_value == "v"


def test_put_with_if_version_is_compare_and_set(stack: RpcStack) -> None:
    key, md = unique_key(), stack.md()
    stack.stub.PutItem(pb.PutItemRequest(key=key, value=value_of("v1"), if_version=0), metadata=md, timeout=5)
    second = stack.stub.PutItem(
        pb.PutItemRequest(key=key, value=value_of("v2"), if_version=1), metadata=md, timeout=5
    )
    assert second.version == 2
    err = call_error(
        lambda: stack.stub.PutItem(
            pb.PutItemRequest(key=key, value=value_of("v3"), if_version=1), metadata=md, timeout=5
        )
    )
    assert err.code() == grpc.StatusCode.ABORTED


def test_delete_of_a_missing_item_is_not_found(stack: RpcStack) -> None:
    err = call_error(
        lambda: stack.stub.DeleteItem(pb.DeleteItemRequest(key=unique_key()), metadata=stack.md(), timeout=5)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_encrypt_decrypt_round_trip_and_aad_binding(stack: RpcStack) -> None:
    md = stack.md()
    sealed = stack.stub.Encrypt(
        pb.EncryptRequest(plaintext=b"attack at dawn", aad=b"ctx"), metadata=md, timeout=5
    )
    assert sealed.key_id and len(sealed.nonce) == 12 and b"attack" not in sealed.ciphertext

    request = pb.DecryptRequest(
        key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext, aad=b"ctx"
    )
    assert stack.stub.Decrypt(request, metadata=md, timeout=5).plaintext == b"attack at dawn"

    request.aad = b"other"
    err = call_error(lambda: stack.stub.Decrypt(request, metadata=md, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(err) == "ciphertext"


def test_sign_verify_round_trip(stack: RpcStack) -> None:
    md = stack.md()
    sig = stack.stub.Sign(pb.SignRequest(message=b"hello"), metadata=md, timeout=5)
    assert len(sig.signature) == 64 and len(sig.public_key) == 32

    def verify(message: bytes, **kw: Any) -> bool:
        request = pb.VerifyRequest(message=message, signature=sig.signature, **kw)
        return bool(stack.stub.Verify(request, metadata=md, timeout=5).valid)

    assert verify(b"hello")
    assert verify(b"hello", public_key=sig.public_key)
    assert not verify(b"hellO")


def test_hash_pbkdf2_with_params_and_salt(stack: RpcStack) -> None:
    request = pb.HashRequest(
        algorithm="pbkdf2", password=b"pw", salt=b"0123456789abcdef", params={"iterations": 1000}
    )
    result = stack.stub.Hash(request, metadata=stack.md(), timeout=10)
    assert result.algorithm == "pbkdf2"
    assert result.salt == b"0123456789abcdef"
    assert dict(result.params) == {"iterations": 1000}
    assert result.digest == hashlib.pbkdf2_hmac(
        "sha256", b"pw", b"0123456789abcdef", 1000, len(result.digest)
    )


def test_hash_defaults_to_scrypt_with_a_generated_salt(stack: RpcStack) -> None:
    request = pb.HashRequest(password=b"pw", params={"n": 1024})
    result = stack.stub.Hash(request, metadata=stack.md(), timeout=10)
    assert result.algorithm == "scrypt"
    assert result.params["n"] == 1024 and result.salt
    p = result.params
    expected = hashlib.scrypt(b"pw", salt=result.salt, n=p["n"], r=p["r"], p=p["p"], dklen=len(result.digest))
    assert result.digest == expected


def struct_of(obj: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(obj)
    return struct


def test_submit_a_job_then_read_it_and_replay_with_the_admin_scope(stack: RpcStack) -> None:
    request = pb.SubmitJobRequest(
        kind="primes", params=struct_of({"limits": [10, 20]}), idempotency_key=unique_key()
    )
    job = stack.stub.SubmitJob(request, metadata=stack.md(), timeout=5)
    assert (job.kind, job.status, job.attempts, job.created) == ("primes", "queued", 0, True)
    assert dict(job.params) == {"limits": [10, 20]}
    again = stack.stub.SubmitJob(request, metadata=stack.md(), timeout=5)
    assert again.id == job.id and not again.created
    got = stack.stub.GetJob(pb.GetJobRequest(id=job.id), metadata=stack.md(), timeout=5)
    assert got.id == job.id and got.status == "queued" and not got.HasField("started_at")
    err = call_error(lambda: stack.stub.GetJob(pb.GetJobRequest(id="0" * 32), metadata=stack.md(), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = call_error(
        lambda: stack.stub.ReplayDeadJobs(pb.ReplayDeadJobsRequest(), metadata=stack.md(), timeout=5)
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = stack.md("read", "write", "admin")
    assert (
        list(stack.stub.ReplayDeadJobs(pb.ReplayDeadJobsRequest(limit=5), metadata=admin, timeout=5).ids)
        == []
    )


def test_count_primes(stack: RpcStack) -> None:
    result = stack.stub.CountPrimes(pb.CountPrimesRequest(limit=100), metadata=stack.md(), timeout=10)
    assert (result.limit, result.count) == (100, 25)


def test_get_quote_carries_the_request_id_to_the_upstream(stack: RpcStack) -> None:
    request_id = f"rid-{uuid.uuid4().hex}"
    quote, call = stack.stub.GetQuote.with_call(
        pb.GetQuoteRequest(symbol="ACME"), metadata=stack.md(request_id=request_id), timeout=5
    )
    assert quote.symbol == "ACME" and quote.currency == "USD" and quote.price > 0
    assert not quote.stale
    assert abs(quote.as_of.ToNanoseconds() / 1e9 - time.time()) < 60
    # The request context crossed from the interceptor into the handler thread and the outbound call.
    assert request_id in stack.upstream.request_ids
    headers = dict(call.initial_metadata())
    assert headers["x-request-id"] == request_id
    assert headers["x-instance-id"] == INSTANCE_ID


def test_malformed_request_id_is_replaced_by_a_generated_one(stack: RpcStack) -> None:
    _, call = stack.stub.GetQuote.with_call(
        pb.GetQuoteRequest(symbol="ACME"), metadata=stack.md(request_id="bad id/with spaces"), timeout=5
    )
    request_id = dict(call.initial_metadata())["x-request-id"]
    assert request_id != "bad id/with spaces"
    assert len(request_id) == 32 and int(request_id, 16) >= 0


def test_watch_quotes_streams_count_messages_at_the_interval(stack: RpcStack) -> None:
    start = time.monotonic()
    stream = stack.stub.WatchQuotes(
        pb.WatchQuotesRequest(symbol="ACME", count=3, interval_ms=100), metadata=stack.md(), timeout=10
    )
    quotes = list(stream)
    assert [q.symbol for q in quotes] == ["ACME"] * 3
    assert time.monotonic() - start >= 0.2  # two intervals between three quotes
    assert stream.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("request_msg", "field"),
    [
        (pb.WatchQuotesRequest(symbol="ACME", count=0), "count"),
        (pb.WatchQuotesRequest(symbol="ACME", count=101), "count"),
        (pb.WatchQuotesRequest(symbol="ACME", interval_ms=99), "interval_ms"),
        (pb.WatchQuotesRequest(symbol="ACME", interval_ms=10_001), "interval_ms"),
        (pb.WatchQuotesRequest(symbol="acme"), "symbol"),
    ],
)
def test_watch_quotes_rejects_bad_arguments(
    stack: RpcStack, request_msg: pb.WatchQuotesRequest, field: str
) -> None:
    err = call_error(lambda: list(stack.stub.WatchQuotes(request_msg, metadata=stack.md(), timeout=5)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(err) == field


INVALID = [
    ("GetItem", pb.GetItemRequest(key="bad key!"), "key"),
    ("GetItem", pb.GetItemRequest(key=""), "key"),
    ("PutItem", pb.PutItemRequest(key="k"), "value"),
    ("PutItem", pb.PutItemRequest(key="k", value=struct_pb2.Value(number_value=float("nan"))), "value"),
    ("PutItem", pb.PutItemRequest(key="k", value=value_of("v"), ttl_s=0), "ttl_s"),
    ("PutItem", pb.PutItemRequest(key="k", value=value_of("v"), if_version=-1), "if_version"),
    ("DeleteItem", pb.DeleteItemRequest(key="x" * 129), "key"),
    ("Encrypt", pb.EncryptRequest(plaintext=b"x" * (MAX_PLAINTEXT_BYTES + 1)), "plaintext"),
    ("Decrypt", pb.DecryptRequest(key_id="dev1", nonce=b"short", ciphertext=b"x" * 32), "nonce"),
    ("Verify", pb.VerifyRequest(message=b"m", signature=b"short"), "signature"),
    ("Verify", pb.VerifyRequest(message=b"m", signature=b"s" * 64, public_key=b"k"), "public_key"),
    ("Hash", pb.HashRequest(password=b"pw", params={"n": 1000}), "params.n"),
    ("Hash", pb.HashRequest(password=b"pw", params={"bogus": 1}), "params.bogus"),
    ("Hash", pb.HashRequest(password=b"pw", algorithm="md5"), "algorithm"),
    ("Hash", pb.HashRequest(password=b""), "password"),
    ("CountPrimes", pb.CountPrimesRequest(limit=10**12), "limit"),
    ("GetQuote", pb.GetQuoteRequest(symbol="lower"), "symbol"),
    ("SubmitJob", pb.SubmitJobRequest(kind="nope"), "kind"),
    ("SubmitJob", pb.SubmitJobRequest(kind="primes", params=struct_of({"limits": [1]})), "params.limits[0]"),
    ("SubmitJob", pb.SubmitJobRequest(kind="primes", idempotency_key=""), "idempotency_key"),
]


@pytest.mark.parametrize(("method", "request_msg", "field"), INVALID, ids=[f"{m}-{f}" for m, _, f in INVALID])
def test_invalid_arguments_name_the_field(stack: RpcStack, method: str, request_msg: Any, field: str) -> None:
    err = call_error(lambda: getattr(stack.stub, method)(request_msg, metadata=stack.md(), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad_field(err) == field


def test_oversize_item_value_is_rejected_naming_the_field(stack: RpcStack) -> None:
    big = value_of("x" * (MAX_VALUE_BYTES + 1))
    err = call_error(
        lambda: stack.stub.PutItem(
            pb.PutItemRequest(key=unique_key(), value=big), metadata=stack.md(), timeout=5
        )
    )
    # PayloadTooLarge: 413 over HTTP, RESOURCE_EXHAUSTED over gRPC (app/domain/errors.py).
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert bad_field(err) == "value"
    assert "retry-after" not in trailers(err)


def test_message_over_the_transport_limit_is_refused_before_the_handler(stack: RpcStack) -> None:
    huge = pb.EncryptRequest(plaintext=b"x" * (stack.settings.max_body_bytes + 1))
    err = call_error(lambda: stack.stub.Encrypt(huge, metadata=stack.md(), timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_client_helper_metadata_and_example_call(stack: RpcStack) -> None:
    from app.rpc.client import connect, get_quote

    token = stack.token("read")
    assert call_metadata(token, request_id="r-1") == (
        ("authorization", f"Bearer {token}"),
        ("x-request-id", "r-1"),
    )
    with connect(stack.target, ready_timeout_s=5) as stub:
        assert (
            stub.GetQuote(pb.GetQuoteRequest(symbol="ACME"), metadata=call_metadata(token), timeout=5).price
            > 0
        )
    quote = get_quote(stack.target, token, "ACME")
    assert quote["symbol"] == "ACME" and quote["instance_id"] == INSTANCE_ID and quote["request_id"]


def raw_call(stack: RpcStack, method: str, payload: bytes, metadata: Any) -> grpc.RpcError:
    """`payload` sent as the request message's bytes, whatever they are."""
    call = stack.channel.unary_unary(
        f"/platform.v1.PlatformService/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return call_error(lambda: call(payload, metadata=metadata, timeout=5))


def nested_list_value(depth: int) -> bytes:
    """A google.protobuf.Value of `depth` nested lists, serialized by hand past protobuf's own limit."""
    value: bytes = struct_pb2.Value(bool_value=True).SerializeToString()
    for _ in range(depth):
        inner = b"\x0a" + _varint(len(value)) + value  # ListValue.values (field 1)
        value = b"\x32" + _varint(len(inner)) + inner  # Value.list_value (field 6)
    return value


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


UNDECODABLE = [
    ("GetItem", b"\x0a\x02\xff\xfe", "not valid UTF-8"),  # key = invalid UTF-8
    ("Hash", b"\x0a\x01\xc3\x12\x02pw", "not valid UTF-8"),  # algorithm = a truncated UTF-8 sequence
    ("GetQuote", b"\xff\xff\xff\xff", "corrupt"),
    ("WatchQuotes", b"\x0a\x05AC", "corrupt"),  # a string longer than the message
    ("PutItem", b"\x12" + _varint(len(v := nested_list_value(60))) + v, "nested"),
]


@pytest.mark.parametrize(("method", "payload", "why"), UNDECODABLE, ids=[u[0] for u in UNDECODABLE])
def test_a_request_that_does_not_parse_is_invalid_argument_after_admission(
    stack: RpcStack, method: str, payload: bytes, why: str
) -> None:
    err = raw_call(stack, method, payload, stack.md())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad_field(err) == "request" and why in err.details()
    assert "DecodeError" not in err.details()  # protobuf's exception stays inside
    # Admission comes first: without a token, a caller learns nothing about what it sent.
    assert raw_call(stack, method, payload, ()).code() == grpc.StatusCode.UNAUTHENTICATED
