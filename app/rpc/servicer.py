"""PlatformService: parse the request, run the synchronous domain call off the event loop, map back.

Each RPC is one function from request message to response message, run whole (parsing included) on
the bounded handler executor under a copy of the caller's contextvars, so the OpenTelemetry span and
the request context follow the call into the thread. Errors are not handled here: a `DomainError`
propagates to the interceptor, which maps it onto a status for every RPC the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from app.domain.errors import InvalidArgument
from app.domain.jobs import Job
from app.domain.models import Item, Quote, Sealed
from app.rpc.convert import python_to_value, value_to_python
from app.rpc.platform.v1 import platform_pb2 as pb
from app.rpc.platform.v1 import platform_pb2_grpc as pb_grpc
from app.rpc.ports import RpcServices

Req = TypeVar("Req")
Resp = TypeVar("Resp")

WATCH_COUNT_RANGE = (1, 100)
WATCH_INTERVAL_MS_RANGE = (100, 10_000)
WATCH_DEFAULT_COUNT = 10
WATCH_DEFAULT_INTERVAL_MS = 1000
REPLAY_DEFAULT = 100


def item_to_pb(item: Item) -> pb.Item:
    msg = pb.Item(key=item.key, version=item.version)
    python_to_value(item.value, msg.value)
    if item.ttl_s is not None:
        msg.ttl_s = item.ttl_s
    return msg


def quote_to_pb(quote: Quote) -> pb.Quote:
    seconds = int(quote.as_of // 1)
    nanos = min(int((quote.as_of - seconds) * 1e9), 999_999_999)
    return pb.Quote(
        symbol=quote.symbol,
        price=quote.price,
        currency=quote.currency,
        as_of=Timestamp(seconds=seconds, nanos=nanos),
        stale=quote.stale,
    )


def job_to_pb(job: Job, *, created: bool = False) -> pb.Job:
    msg = pb.Job(
        id=job.id,
        kind=job.kind,
        status=str(job.status),
        attempts=job.attempts,
        submitted_at=job.submitted_at,
        created=created,
    )
    msg.params.update(job.params)  # a JSON object, checked when submitted
    python_to_value(job.result, msg.result)
    if job.started_at is not None:
        msg.started_at = job.started_at
    if job.finished_at is not None:
        msg.finished_at = job.finished_at
    if job.error is not None:
        msg.error = job.error
    return msg


def _in_range(value: int, bounds: tuple[int, int], field: str) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(f"must be between {low} and {high}, got {value}", field=field)
    return value


class PlatformServicer(pb_grpc.PlatformServiceServicer):
    def __init__(self, services: RpcServices, executor: Executor) -> None:
        self._services = services
        self._executor = executor

    async def _offload(self, fn: Callable[[Req], Resp], request: Req) -> Resp:
        # If the RPC is cancelled while queued, the executor never starts the call.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, ctx.run, fn, request)

    # --- items -----------------------------------------------------------------------------------------

    async def GetItem(self, request: pb.GetItemRequest, context: grpc.aio.ServicerContext) -> pb.Item:
        return await self._offload(self._get_item, request)

    def _get_item(self, request: pb.GetItemRequest) -> pb.Item:
        return item_to_pb(self._services.items.get(request.key))

    async def PutItem(self, request: pb.PutItemRequest, context: grpc.aio.ServicerContext) -> pb.Item:
        return await self._offload(self._put_item, request)

    def _put_item(self, request: pb.PutItemRequest) -> pb.Item:
        if not request.HasField("value"):
            raise InvalidArgument("is required (any JSON value)", field="value")
        item = self._services.items.put(
            request.key,
            value_to_python(request.value),
            ttl_s=request.ttl_s if request.HasField("ttl_s") else None,
            if_version=request.if_version if request.HasField("if_version") else None,
        )
        return item_to_pb(item)

    async def DeleteItem(
        self, request: pb.DeleteItemRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteItemResponse:
        return await self._offload(self._delete_item, request)

    def _delete_item(self, request: pb.DeleteItemRequest) -> pb.DeleteItemResponse:
        self._services.items.delete(request.key)
        return pb.DeleteItemResponse()

    # --- crypto ----------------------------------------------------------------------------------------

    async def Encrypt(
        self, request: pb.EncryptRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncryptResponse:
        return await self._offload(self._encrypt, request)

    def _encrypt(self, request: pb.EncryptRequest) -> pb.EncryptResponse:
        sealed = self._services.crypto.encrypt(request.plaintext, request.aad)
        return pb.EncryptResponse(key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext)

    async def Decrypt(
        self, request: pb.DecryptRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecryptResponse:
        return await self._offload(self._decrypt, request)

    def _decrypt(self, request: pb.DecryptRequest) -> pb.DecryptResponse:
        sealed = Sealed(key_id=request.key_id, nonce=request.nonce, ciphertext=request.ciphertext)
        return pb.DecryptResponse(plaintext=self._services.crypto.decrypt(sealed, request.aad))

    async def Sign(self, request: pb.SignRequest, context: grpc.aio.ServicerContext) -> pb.SignResponse:
        return await self._offload(self._sign, request)

    def _sign(self, request: pb.SignRequest) -> pb.SignResponse:
        sig = self._services.crypto.sign(request.message)
        return pb.SignResponse(signature=sig.signature, public_key=sig.public_key)

    async def Verify(self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext) -> pb.VerifyResponse:
        return await self._offload(self._verify, request)

    def _verify(self, request: pb.VerifyRequest) -> pb.VerifyResponse:
        public_key = request.public_key if request.HasField("public_key") else None
        return pb.VerifyResponse(
            valid=self._services.crypto.verify(request.message, request.signature, public_key)
        )

    # --- compute ---------------------------------------------------------------------------------------

    async def Hash(self, request: pb.HashRequest, context: grpc.aio.ServicerContext) -> pb.HashResponse:
        return await self._offload(self._hash, request)

    def _hash(self, request: pb.HashRequest) -> pb.HashResponse:
        kwargs: dict[str, Any] = {}
        if request.algorithm:  # empty means "the domain's default"
            kwargs["algorithm"] = request.algorithm
        if request.HasField("salt"):
            kwargs["salt"] = request.salt
        if request.params:
            kwargs["params"] = dict(request.params)
        result = self._services.compute.hash(request.password, **kwargs)
        return pb.HashResponse(
            algorithm=result.algorithm, salt=result.salt, digest=result.digest, params=result.params
        )

    async def CountPrimes(
        self, request: pb.CountPrimesRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountPrimesResponse:
        return await self._offload(self._count_primes, request)

    def _count_primes(self, request: pb.CountPrimesRequest) -> pb.CountPrimesResponse:
        result = self._services.compute.primes(request.limit)
        return pb.CountPrimesResponse(limit=result.limit, count=result.count)

    # --- jobs ------------------------------------------------------------------------------------------

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return await self._offload(self._submit_job, request)

    def _submit_job(self, request: pb.SubmitJobRequest) -> pb.Job:
        params = {k: value_to_python(v, field="params") for k, v in request.params.fields.items()}
        key = request.idempotency_key if request.HasField("idempotency_key") else None
        job, created = self._services.jobs.submit(request.kind, params, idempotency_key=key)
        return job_to_pb(job, created=created)

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return await self._offload(self._get_job, request)

    def _get_job(self, request: pb.GetJobRequest) -> pb.Job:
        return job_to_pb(self._services.jobs.get(request.id))

    async def ReplayDeadJobs(
        self, request: pb.ReplayDeadJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReplayDeadJobsResponse:
        return await self._offload(self._replay_dead_jobs, request)

    def _replay_dead_jobs(self, request: pb.ReplayDeadJobsRequest) -> pb.ReplayDeadJobsResponse:
        limit = request.limit if request.HasField("limit") else REPLAY_DEFAULT
        return pb.ReplayDeadJobsResponse(ids=self._services.jobs.replay_dead(limit))

    # --- quotes ----------------------------------------------------------------------------------------

    async def GetQuote(self, request: pb.GetQuoteRequest, context: grpc.aio.ServicerContext) -> pb.Quote:
        # The client's deadline bounds the upstream call too: no work continues after the client gave up.
        return await self._offload(self._get_quote, (request.symbol, context.time_remaining()))

    def _get_quote(self, call: tuple[str, float | None]) -> pb.Quote:
        symbol, deadline_s = call
        return quote_to_pb(self._services.quotes.get(symbol, deadline_s=deadline_s))

    async def WatchQuotes(
        self, request: pb.WatchQuotesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Quote]:
        count = request.count if request.HasField("count") else WATCH_DEFAULT_COUNT
        interval_ms = request.interval_ms if request.HasField("interval_ms") else WATCH_DEFAULT_INTERVAL_MS
        _in_range(count, WATCH_COUNT_RANGE, "count")
        _in_range(interval_ms, WATCH_INTERVAL_MS_RANGE, "interval_ms")
        loop = asyncio.get_running_loop()
        # Fixed rate, not fixed delay: a slow upstream call does not stretch the schedule. A client that
        # cancels raises CancelledError in the sleep or the await, which ends the generator.
        next_at = loop.time()
        for i in range(count):
            if i:
                next_at += interval_ms / 1000
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            yield await self._offload(self._get_quote, (request.symbol, context.time_remaining()))
