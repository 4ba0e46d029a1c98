"""Durable jobs on the platform's Redis: a stream with a consumer group, retries, dead letters, fencing.

Layout (one Redis, every key under `platform:jobs`):
- `platform:jobs:job:<id>`: the job, a hash (kind, params, status, attempts, timings, result or error, the
  trace context of its submit, its current fencing token);
- `platform:jobs:stream`: one entry per delivery still to be acknowledged, `{job: <id>}` plus the trace
  context; consumer group `workers`. An acknowledged entry is deleted, so the stream holds exactly the
  queued and in-flight deliveries and its first entry is the oldest unacknowledged one;
- `platform:jobs:retry`: a sorted set of jobs waiting for their next attempt, scored by when it is due;
- `platform:jobs:dead`: the dead-letter stream, `{job: <id>, error: <last error>}`;
- `platform:jobs:idempotency:<key>`: the job a key created, for a day;
- `platform:jobs:fence`: the fencing-token counter.

Delivery is at least once: a consumer that dies leaves its entries pending, and after the visibility timeout
another consumer claims them (XAUTOCLAIM). Effects are effectively once: every attempt takes a new fencing
token, and only the holder of the job's current token can complete or fail it, so a consumer that was paused
past its lease finds its result refused. Work with side effects hands the token on (the item store refuses
writes older than the newest token it has seen). Every transition is one Lua script: atomic, one round trip.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from app.domain.errors import DependencyUnavailable, InvalidArgument, NotFound, Overloaded
from app.domain.models import JSON

PREFIX = "platform:jobs"
STREAM = f"{PREFIX}:stream"
RETRY = f"{PREFIX}:retry"
DEAD = f"{PREFIX}:dead"
FENCE = f"{PREFIX}:fence"
GROUP = "workers"
IDEMPOTENCY_TTL_S = 86_400
RETENTION_S = 7 * 86_400  # a finished job's record, then it expires
DEAD_LETTERS_MAX = 10_000  # approximate: the oldest dead letters go first beyond it
ID_LENGTH = 32  # uuid4().hex
ID_RE = re.compile(f"[0-9a-f]{{{ID_LENGTH}}}")
IDEMPOTENCY_KEY_MAX = 128
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting in the stream, or for its next attempt after a failure (see `error`)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # an attempt failed; the next one is scheduled
    DEAD = "dead"  # out of attempts: in the dead-letter stream until replayed


FINISHED = (JobStatus.SUCCEEDED, JobStatus.DEAD)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    params: JSON
    status: JobStatus
    attempts: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: JSON = None
    error: str | None = None
    carrier: Mapping[str, str] | None = None  # the submit's trace context (W3C headers)
    consumer: str | None = None  # of the latest attempt


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to a consumer."""

    entry_id: str
    job_id: str
    carrier: Mapping[str, str]
    reclaimed: bool  # taken over from a consumer that did not acknowledge it in time


@dataclass(frozen=True)
class Attempt:
    """A delivery this consumer has started: only the holder of `fence` may finish the job."""

    delivery: Delivery
    job: Job
    number: int  # 1 for the first attempt
    fence: int


@dataclass(frozen=True)
class Outcome:
    """What finishing an attempt did: `stale` if another attempt had taken the job over."""

    status: JobStatus | None
    stale: bool = False
    retry_in_s: float | None = None


@dataclass(frozen=True)
class QueueDepth:
    queued: int  # in the stream, not yet delivered
    pending: int  # delivered, not yet acknowledged
    retrying: int
    dead: int
    oldest_age_s: float  # of the oldest unacknowledged entry, 0 when there is none


_SUBMIT = """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {existing, 0} end
end
if tonumber(ARGV[5]) > 0 and redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[5]) then
  return {'', -1}
end
redis.call('HSET', KEYS[1], 'kind', ARGV[2], 'params', ARGV[3], 'status', 'queued', 'attempts', 0,
  'submitted_at', ARGV[4], 'carrier', ARGV[6])
redis.call('XADD', KEYS[2], '*', 'job', ARGV[1], 'carrier', ARGV[6])
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[7]) end
return {ARGV[1], 1}
"""

# A delivery of a finished job (a duplicate after a reclaim) is acknowledged and skipped.
_BEGIN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'dead' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return {-1, 0}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local fence = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3], 'fence', fence, 'consumer', ARGV[4])
return {attempts, fence}
"""

_SUCCEED = """
if tonumber(redis.call('HGET', KEYS[1], 'fence') or '-1') ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'succeeded', 'result', ARGV[4], 'finished_at', ARGV[5])
redis.call('HDEL', KEYS[1], 'error')
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 1
"""

# ARGV[6]: seconds until the next attempt, or '' for none (dead letter).
_FAIL = """
if tonumber(redis.call('HGET', KEYS[1], 'fence') or '-1') ~= tonumber(ARGV[3]) then return 0 end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if ARGV[6] == '' then
  redis.call('HSET', KEYS[1], 'status', 'dead', 'error', ARGV[4], 'finished_at', ARGV[5])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'job', ARGV[7], 'error', ARGV[4])
  return 2
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[4])
redis.call('ZADD', KEYS[3], tonumber(ARGV[5]) + tonumber(ARGV[6]), ARGV[7])
return 1
"""

# Jobs whose next attempt is due go back to the stream, with the trace context of their submit.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'status') == 'failed' then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('XADD', KEYS[2], '*', 'job', id, 'carrier', redis.call('HGET', key, 'carrier') or '{}')
  end
end
return #due
"""

_REPLAY = """
local letters = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))
local replayed = {}
for _, letter in ipairs(letters) do
  redis.call('XDEL', KEYS[1], letter[1])
  local fields = letter[2]
  local id
  for i = 1, #fields, 2 do if fields[i] == 'job' then id = fields[i + 1] end end
  local key = ARGV[2] .. id
  if id and redis.call('HGET', key, 'status') == 'dead' then
    redis.call('HSET', key, 'status', 'queued', 'attempts', 0)
    redis.call('HDEL', key, 'finished_at')
    redis.call('PERSIST', key)
    redis.call('XADD', KEYS[2], '*', 'job', id, 'carrier', redis.call('HGET', key, 'carrier') or '{}')
    table.insert(replayed, id)
  end
end
return replayed
"""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(cap, base * 2**(n-1)))."""

    base_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling: float = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return rand() * ceiling


class JobQueue:
    def __init__(
        self,
        client: redis.Redis,
        *,
        max_attempts: int = 5,
        visibility_timeout_s: float = 30.0,
        max_queued: int = 100_000,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self.max_attempts = max_attempts
        self.visibility_timeout_s = visibility_timeout_s
        self._max_queued = max_queued
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._submit = client.register_script(_SUBMIT)
        self._begin = client.register_script(_BEGIN)
        self._succeed = client.register_script(_SUCCEED)
        self._fail = client.register_script(_FAIL)
        self._promote = client.register_script(_PROMOTE)
        self._replay = client.register_script(_REPLAY)

    # -- producers -----------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        params: JSON,
        *,
        idempotency_key: str | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; with a key seen in the last day, return that key's job instead (and False)."""
        check_idempotency_key(idempotency_key)
        job_id, submitted_at, carried = uuid.uuid4().hex, self._clock(), dict(carrier or {})
        idem_key = f"{PREFIX}:idempotency:{idempotency_key}" if idempotency_key is not None else ""
        args = [
            *(job_id, kind, json.dumps(params, separators=(",", ":")), repr(submitted_at)),
            *(self._max_queued, json.dumps(carried), IDEMPOTENCY_TTL_S),
        ]
        got_id, created = self._call(self._submit, [_job_key(job_id), STREAM, idem_key], args)
        if created == -1:
            raise Overloaded(f"the job queue holds {self._max_queued} jobs already; try again later")
        if created == 1:  # what the script wrote, without reading it back
            return Job(job_id, kind, params, JobStatus.QUEUED, 0, submitted_at, carrier=carried), True
        return self.get(_text(got_id)), False

    def get(self, job_id: str) -> Job:
        if not ID_RE.fullmatch(job_id):
            raise NotFound(f"no job {job_id!r}", field="id")
        fields = self._call(lambda: self._redis.hgetall(_job_key(job_id)))
        if not fields:
            raise NotFound(f"no job {job_id!r}", field="id")
        return _job(job_id, {_text(k): _text(v) for k, v in fields.items()})

    # -- consumers -----------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing (from the start: nothing queued is skipped)."""
        try:
            self._call(lambda: self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True))
        except redis.exceptions.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def fetch(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        """Deliveries for `consumer`: due retries requeued first, then entries whose consumer missed the
        visibility timeout, then new entries (waiting up to `block_s` for one)."""
        try:
            return self._fetch(consumer, count, block_s)
        except redis.exceptions.ResponseError as err:
            if "NOGROUP" not in str(err):
                raise
            self.ensure_group()  # Redis lost its data (a restart without persistence): start afresh
            return self._fetch(consumer, count, block_s)

    def _fetch(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        now = self._clock()
        self._call(self._promote, [RETRY, STREAM], [repr(now), 100, f"{PREFIX}:job:"])
        claimed = self._call(
            lambda: self._redis.xautoclaim(
                STREAM, GROUP, consumer, min_idle_time=int(self.visibility_timeout_s * 1000), count=count
            )
        )
        deliveries = [
            _delivery(entry_id, fields, reclaimed=True) for entry_id, fields in claimed[1] if fields
        ]
        if len(deliveries) < count:
            block_ms = max(1, int(block_s * 1000)) if not deliveries else None
            read = self._call(
                lambda: self._redis.xreadgroup(
                    GROUP, consumer, {STREAM: ">"}, count=count - len(deliveries), block=block_ms
                )
            )
            for _stream, entries in read or []:
                deliveries += [_delivery(entry_id, fields, reclaimed=False) for entry_id, fields in entries]
        return deliveries

    def begin(self, delivery: Delivery, consumer: str = "") -> Attempt | None:
        """Start an attempt; None for a job that is already finished (a duplicate delivery, now dropped)."""
        number, fence = self._call(
            self._begin,
            [_job_key(delivery.job_id), STREAM, FENCE],
            [GROUP, delivery.entry_id, repr(self._clock()), consumer],
        )
        if number == -1:
            return None
        return Attempt(delivery, self.get(delivery.job_id), int(number), int(fence))

    def keep(self, attempt: Attempt, consumer: str) -> None:
        """Reset the visibility timeout of a long attempt, so that no other consumer claims it meanwhile."""
        entry = attempt.delivery.entry_id
        self._call(lambda: self._redis.xclaim(STREAM, GROUP, consumer, 0, [entry], justid=True))

    def succeed(self, attempt: Attempt, result: JSON) -> Outcome:
        done = self._call(
            self._succeed,
            [_job_key(attempt.job.id), STREAM],
            [
                *(GROUP, attempt.delivery.entry_id, attempt.fence),
                *(json.dumps(result, separators=(",", ":")), repr(self._clock()), RETENTION_S),
            ],
        )
        return Outcome(JobStatus.SUCCEEDED) if done else Outcome(None, stale=True)

    def fail(self, attempt: Attempt, error: str, *, retryable: bool = True) -> Outcome:
        """Schedule the next attempt with backoff; out of attempts, or not worth another, dead-letter it."""
        retry_in = (
            self._backoff.delay(attempt.number) if retryable and attempt.number < self.max_attempts else None
        )
        done = self._call(
            self._fail,
            [_job_key(attempt.job.id), STREAM, RETRY, DEAD],
            [
                *(GROUP, attempt.delivery.entry_id, attempt.fence, error[:1000], repr(self._clock())),
                *("" if retry_in is None else repr(retry_in), attempt.job.id, DEAD_LETTERS_MAX),
            ],
        )
        if not done:
            return Outcome(None, stale=True)
        if retry_in is None:
            return Outcome(JobStatus.DEAD)
        return Outcome(JobStatus.FAILED, retry_in_s=retry_in)

    # -- operators -----------------------------------------------------------------------------------

    def replay_dead(self, limit: int = 100) -> list[str]:
        """Queue up to `limit` dead letters again, oldest first, with their attempts reset."""
        if not 1 <= limit <= 10_000:
            raise InvalidArgument("limit must be 1 to 10000", field="limit")
        replayed = self._call(self._replay, [DEAD, STREAM], [limit, f"{PREFIX}:job:"])
        return [_text(job_id) for job_id in replayed]

    def depth(self) -> QueueDepth:
        def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(STREAM)
            pipe.xpending(STREAM, GROUP)
            pipe.zcard(RETRY)
            pipe.xlen(DEAD)
            pipe.xrange(STREAM, count=1)
            return list(pipe.execute(raise_on_error=False))

        length, pending, retrying, dead, first = self._call(read)
        # Before any consumer made the group (NOGROUP), nothing is in flight.
        in_flight = 0 if isinstance(pending, redis.exceptions.ResponseError) else int(pending["pending"])
        oldest = (self._clock() - _entry_time(first[0][0])) if first else 0.0
        return QueueDepth(int(length) - in_flight, in_flight, int(retrying), int(dead), max(0.0, oldest))

    # -- Redis ---------------------------------------------------------------------------------------

    def _call(
        self, fn: Callable[..., Any], keys: list[str] | None = None, args: list[Any] | None = None
    ) -> Any:
        try:
            return fn() if keys is None else fn(keys=keys, args=args)
        except REDIS_DOWN as err:
            raise DependencyUnavailable("the job queue (Redis) is unavailable") from err


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
        raise InvalidArgument(f"must be 1 to {IDEMPOTENCY_KEY_MAX} characters", field="idempotency_key")


def _job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_time(entry_id: bytes | str) -> float:
    """A stream entry's id starts with the milliseconds at which Redis added it."""
    return int(_text(entry_id).split("-", 1)[0]) / 1000


def _delivery(entry_id: bytes | str, raw: Mapping[bytes | str, bytes | str], *, reclaimed: bool) -> Delivery:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return Delivery(_text(entry_id), fields["job"], json.loads(fields.get("carrier", "{}")), reclaimed)


def _job(job_id: str, f: Mapping[str, str]) -> Job:
    def number(name: str) -> float | None:
        return float(f[name]) if name in f else None

    return Job(
        id=job_id,
        kind=f["kind"],
        params=json.loads(f["params"]),
        status=JobStatus(f["status"]),
        attempts=int(f.get("attempts", "0")),
        submitted_at=float(f["submitted_at"]),
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        result=json.loads(f["result"]) if "result" in f else None,
        error=f.get("error"),
        carrier=json.loads(f.get("carrier", "{}")),
        consumer=f.get("consumer") or None,
    )
