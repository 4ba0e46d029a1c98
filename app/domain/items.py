"""JSON items in Redis (the source of truth) with an in-process TTL cache in front.

Layout: one hash per item, `platform:item:<key>` = {value: <json>, version: <int>, fence: <int>}, the fence
only once a fenced writer (a job) has written it. A put is one Lua script (one round trip, atomic): it
checks `if_version` (0 means "must not exist") and the writer's fencing token, bumps the version, sets or
clears the expiry and PUBLISHes `<version>:<key>` on `platform:items:invalidate`. A delete is DEL +
PUBLISH in one MULTI/EXEC.

Cache coherence across workers (and instances):
- every worker runs a listener thread subscribed to the channel; a message evicts the key unless the
  cached copy already has that message's version (the writer's own fresh entry survives its own echo);
- while the listener is not subscribed the cache is bypassed entirely (neither read nor filled), and on
  every (re)subscription the whole cache is cleared, so a message missed while disconnected cannot
  leave stale data behind once the listener is back;
- a fill (after a read or a write) only lands if no invalidation of that key (and no reconnect) was
  processed since its Redis call began, so a slow reader cannot put back a value that a concurrent
  write already invalidated. The per-key record of recent invalidations is bounded; keys that fall
  out of it raise a floor below which every fill is refused, which errs on the side of a miss.
Staleness bound: another worker sees a write as soon as the pub/sub message reaches it, typically well
under a few milliseconds on a LAN; if the listener is wedged without noticing, its heartbeat (a PING
every second, reconnect after 3 s of silence) bounds that case; `cache_ttl_s` is the final backstop.
An item's own Redis TTL also caps its cached life, so a cached item never outlives its expiry.

Values handed out are shared with the cache: treat them as read-only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from cachetools import TTLCache
from opentelemetry import metrics

from app.domain.chaos import ChaosControl
from app.domain.errors import Conflict, DependencyUnavailable, InvalidArgument, NotFound, PayloadTooLarge
from app.domain.models import JSON, Item
from app.settings import Settings
from app.telemetry.buckets import DURATION_BUCKETS_S
from app.telemetry.gauges import Reading, shared_gauge

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PATTERN = r"[A-Za-z0-9._:-]{1,128}"  # also the OpenAPI pattern (anchored there)
KEY_RE = re.compile(KEY_PATTERN)  # fullmatch: Python's $ also matches before a trailing newline
ITEM_PREFIX = "platform:item:"
CHANNEL = "platform:items:invalidate"
MAX_TTL_S = 31_536_000
MAX_VALUE_BYTES = 1024 * 1024
# Containers (arrays, objects) nested in a value, at most. Deep enough for any real document, shallow
# enough that every value round-trips over gRPC too: protobuf parses at most 100 nested messages, and a
# JSON object costs 3 of them (Value -> Struct -> map entry), so 32 levels fit with room for the envelope.
MAX_VALUE_DEPTH = 32
CACHEABLE_MAX_BYTES = 64 * 1024  # bigger values are served from Redis only, to bound the cache's memory
RECENT_INVALIDATIONS = 4096
LISTEN_POLL_S = 0.25
HEARTBEAT_S = 1.0
SILENCE_LIMIT_S = 3.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.05, 2.0
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)

_PUT_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then
  return {-1, current}
end
if ARGV[6] ~= '' then
  local newest = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
  if tonumber(ARGV[6]) < newest then return {-2, newest} end
  redis.call('HSET', KEYS[1], 'fence', ARGV[6])
end
local version = current + 1
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', version)
if ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], version .. ':' .. ARGV[5])
return {version, current}
"""


@dataclass(frozen=True, slots=True)
class _Entry:
    item: Item  # ttl_s left None; computed from expires_at when served
    expires_at: float | None  # monotonic time the Redis TTL ends, if any


class ItemStore:
    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        chaos: ChaosControl | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._chaos = chaos
        self._clock = clock
        self._put_script = client.register_script(_PUT_SCRIPT)
        self._lock = threading.Lock()
        self._cache: TTLCache[str, _Entry] = TTLCache(
            maxsize=settings.cache_max_items, ttl=settings.cache_ttl_s, timer=clock
        )
        self._seq = 0  # bumped by every invalidation event the listener processes
        self._floor = 0  # fills whose Redis call began before this are refused for every key
        self._invalidated_at: OrderedDict[str, int] = OrderedDict()  # key -> seq of its last message
        self._connected = False
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._rng = random.Random()

        meter = metrics.get_meter("app.domain.items")
        self._duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of Redis operations",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._requests = meter.create_counter(
            "platform.cache.requests", unit="{request}", description="In-process cache lookups"
        )
        for result in ("hit", "miss"):  # both series from the start, at 0
            self._requests.add(0, {"cache": "items", "result": result})
        self._unregister_gauge = shared_gauge(
            "app.domain.items", "platform.cache.size", unit="{entry}", description="Entries in a cache"
        ).add(self._size_readings)

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the invalidation listener (a daemon thread); the cache is used once it is subscribed."""
        if self._listener is not None:
            return
        self._stop.clear()
        self._listener = threading.Thread(target=self._listen, name="items-invalidation", daemon=True)
        self._listener.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout)
            self._listener = None
        self._unregister_gauge()

    @property
    def listener_connected(self) -> bool:
        return self._connected

    def cache_len(self) -> int:
        with self._lock:
            return len(self._cache)

    # -- operations -------------------------------------------------------------------------------------

    def get(self, key: str) -> Item:
        _check_key(key)
        if self._connected:
            with self._lock:
                entry = self._cache.get(key)
            if entry is not None:
                ttl_s = self._remaining_ttl(entry)
                if ttl_s is None or ttl_s > 0:
                    self._requests.add(1, {"cache": "items", "result": "hit"})
                    return Item(key, entry.item.value, entry.item.version, ttl_s)
        self._requests.add(1, {"cache": "items", "result": "miss"})
        generation = self._seq

        def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(ITEM_PREFIX + key)
            pipe.pttl(ITEM_PREFIX + key)
            return pipe.execute()

        fields, pttl_ms = self._call("HGETALL", read)
        if not fields or b"value" not in fields:
            raise NotFound(f"no item with key {key!r}", field="key")
        value_raw: bytes = fields[b"value"]
        item = Item(key, json.loads(value_raw), int(fields[b"version"]))
        ttl_ms = pttl_ms if isinstance(pttl_ms, int) and pttl_ms > 0 else None
        self._fill(key, item, ttl_ms, generation, len(value_raw))
        return Item(key, item.value, item.version, _ceil_s(ttl_ms))

    def put(
        self,
        key: str,
        value: JSON,
        *,
        ttl_s: int | None = None,
        if_version: int | None = None,
        fence: int | None = None,
    ) -> Item:
        """Write an item. `fence`: the writer's fencing token (a job attempt's, app.domain.jobs); a write
        with a token older than the newest this item has seen is refused, so a writer paused past its
        lease cannot overwrite what a newer one wrote."""
        _check_key(key)
        if ttl_s is not None and (
            isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S
        ):
            raise InvalidArgument(f"must be an integer from 1 to {MAX_TTL_S}", field="ttl_s")
        if if_version is not None and (
            isinstance(if_version, bool) or not isinstance(if_version, int) or if_version < 0
        ):
            raise InvalidArgument(
                "must be a non-negative integer (0: the item must not exist)", field="if_version"
            )
        _check_depth(value)
        try:
            encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise InvalidArgument("must be a JSON value (no NaN or Infinity)", field="value") from None
        try:
            size = len(encoded.encode())
        except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes can carry
            raise InvalidArgument(
                "strings must be valid Unicode (no lone surrogates)", field="value"
            ) from None
        if size > MAX_VALUE_BYTES:
            raise PayloadTooLarge(f"must be at most {MAX_VALUE_BYTES} bytes as JSON", field="value")
        generation = self._seq
        ttl_arg = "" if ttl_s is None else str(ttl_s * 1000)
        version_arg = "" if if_version is None else str(if_version)
        result = self._call(
            "EVALSHA",
            lambda: self._put_script(
                keys=[ITEM_PREFIX + key],
                args=[encoded, ttl_arg, version_arg, CHANNEL, key, "" if fence is None else str(fence)],
            ),
        )
        version, current = int(result[0]), int(result[1])
        if version == -2:
            raise Conflict(
                f"a newer writer (fencing token {current}) has written this item; token {fence} is stale",
                field="fence",
            )
        if version < 0:
            raise Conflict(f"item is at version {current}, not {if_version}", field="if_version")
        # Decode what was stored, so this worker's copy equals what any other worker reads from Redis.
        item = Item(key, json.loads(encoded), version)
        self._fill(key, item, None if ttl_s is None else ttl_s * 1000, generation, size)
        return Item(key, item.value, version, ttl_s)

    def delete(self, key: str) -> None:
        _check_key(key)

        def remove() -> list[Any]:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(ITEM_PREFIX + key)
            pipe.publish(CHANNEL, f"0:{key}")
            return pipe.execute()

        with self._lock:
            self._cache.pop(key, None)
        deleted, _receivers = self._call("DEL", remove)
        if not deleted:
            raise NotFound(f"no item with key {key!r}", field="key")

    # -- redis and cache helpers ------------------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        if self._chaos is not None:
            self._chaos.maybe_fail_redis()
        start = time.perf_counter()
        try:
            return fn()
        except REDIS_DOWN as exc:
            raise DependencyUnavailable("redis unavailable", retry_after_s=1) from exc
        finally:
            self._duration.record(
                time.perf_counter() - start, {"db.system.name": "redis", "db.operation.name": operation}
            )

    def _fill(self, key: str, item: Item, ttl_ms: int | None, generation: int, size: int) -> None:
        expires_at = None if ttl_ms is None else self._clock() + ttl_ms / 1000
        with self._lock:
            if (
                self._connected
                and generation >= self._floor
                and self._invalidated_at.get(key, 0) <= generation
                and size <= CACHEABLE_MAX_BYTES
            ):
                self._cache[key] = _Entry(item, expires_at)
            else:
                self._cache.pop(key, None)

    def _remaining_ttl(self, entry: _Entry) -> int | None:
        if entry.expires_at is None:
            return None
        return math.ceil(entry.expires_at - self._clock())

    def _size_readings(self) -> Iterable[Reading]:
        return [(float(self.cache_len()), {"cache": "items"})]

    # -- invalidation listener --------------------------------------------------------------------------

    def _listen(self) -> None:
        backoff = RECONNECT_MIN_S
        warned = False
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(CHANNEL)
                last_heard = last_ping = self._clock()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_POLL_S)
                    now = self._clock()
                    if message is not None:
                        last_heard = now
                        if message["type"] == "message":
                            self._invalidate(message["data"])
                        elif message["type"] == "subscribe":
                            self._set_connected(True)
                            backoff, warned = RECONNECT_MIN_S, False
                    if now - last_ping >= HEARTBEAT_S:
                        pubsub.ping()
                        last_ping = now
                    if now - last_heard > SILENCE_LIMIT_S:
                        raise redis.exceptions.ConnectionError("no answer to heartbeats")
            except Exception as exc:  # any failure: drop the connection, bypass the cache, reconnect
                if self._connected or not warned:  # once per outage, not once per retry
                    warned = True
                    log.warning("cache invalidation listener has no redis (%s); bypassing the cache", exc)
            finally:
                self._set_connected(False)
                with contextlib.suppress(Exception):  # the connection is being discarded anyway
                    pubsub.close()
            self._stop.wait(self._rng.uniform(backoff / 2, backoff))
            backoff = min(RECONNECT_MAX_S, backoff * 2)

    def _set_connected(self, connected: bool) -> None:
        with self._lock:
            # Clear on every change: on connect because messages may have been missed, on disconnect
            # because the entries can no longer be trusted (and free their memory meanwhile).
            self._cache.clear()
            self._seq += 1
            self._floor = self._seq
            self._invalidated_at.clear()
            was, self._connected = self._connected, connected
        if connected and not was:
            log.info("cache invalidation listener subscribed; cache enabled")

    def _invalidate(self, data: bytes) -> None:
        version_text, _, key = data.decode(errors="replace").partition(":")
        try:
            version = int(version_text)
        except ValueError:
            version = -1
        with self._lock:
            self._seq += 1
            self._invalidated_at[key] = self._seq
            self._invalidated_at.move_to_end(key)
            if len(self._invalidated_at) > RECENT_INVALIDATIONS:
                _, forgotten = self._invalidated_at.popitem(last=False)
                self._floor = max(self._floor, forgotten)
            entry = self._cache.get(key)
            if entry is None or entry.item.version != version:
                self._cache.pop(key, None)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise InvalidArgument("must be 1 to 128 of A-Z a-z 0-9 . _ : -", field="key")


def _check_depth(value: JSON) -> None:
    """InvalidArgument past MAX_VALUE_DEPTH nested containers; iterative, so any depth is safe to check."""
    stack: list[tuple[JSON, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            if depth >= MAX_VALUE_DEPTH:
                raise InvalidArgument(f"must nest at most {MAX_VALUE_DEPTH} arrays or objects", field="value")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def _ceil_s(ttl_ms: int | None) -> int | None:
    return None if ttl_ms is None else math.ceil(ttl_ms / 1000)
