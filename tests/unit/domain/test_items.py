from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from app.domain.chaos import ChaosControl
from app.domain.errors import Conflict, DependencyUnavailable, InvalidArgument, NotFound, PayloadTooLarge
from app.domain.items import CHANNEL, ITEM_PREFIX, MAX_VALUE_DEPTH, ItemStore
from app.domain.services import Services
from app.settings import Settings
from app.worker import build_services
from tests.conftest import PrivateRedis, wait_until
from tests.unit.conftest import Metrics

StoreFactory = Callable[..., ItemStore]


@pytest.fixture
def make_store(make_settings: Callable[..., Settings]) -> Iterator[StoreFactory]:
    made: list[tuple[ItemStore, redis.Redis]] = []

    def make(
        *, start: bool = True, url: str | None = None, chaos: bool = False, **overrides: Any
    ) -> ItemStore:
        settings = make_settings(**overrides)
        client = redis.Redis.from_url(
            url or settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        store = ItemStore(client, settings, ChaosControl(client) if chaos else None)
        made.append((store, client))
        if start:
            store.start()
            wait_until(lambda: store.listener_connected, timeout=5, message="listener subscribed")
        return store

    yield make
    for store, client in made:
        store.close()
        client.close()


def test_crud_and_versions(make_store: StoreFactory) -> None:
    store = make_store()
    first = store.put("greeting", {"text": "hello", "n": [1, 2]})
    assert (first.key, first.value, first.version, first.ttl_s) == (
        "greeting",
        {"text": "hello", "n": [1, 2]},
        1,
        None,
    )
    assert store.get("greeting") == first
    second = store.put("greeting", "bye")
    assert second.version == 2
    assert store.get("greeting").value == "bye"
    store.delete("greeting")
    with pytest.raises(NotFound) as info:
        store.get("greeting")
    assert info.value.field == "key"
    with pytest.raises(NotFound):
        store.delete("greeting")


def test_if_version_conflict_and_create_only(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.put("k", 1, if_version=0).version == 1  # 0: must not exist yet
    with pytest.raises(Conflict) as info:
        store.put("k", 2, if_version=0)
    assert info.value.field == "if_version"
    with pytest.raises(Conflict):
        store.put("k", 2, if_version=5)
    assert store.get("k").value == 1  # a refused write changed nothing
    assert store.put("k", 2, if_version=1).version == 2


def test_a_stale_fencing_token_cannot_overwrite_a_newer_writer(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.put("fenced", "from attempt 7", fence=7).version == 1
    with pytest.raises(Conflict) as info:
        store.put("fenced", "from attempt 5, paused past its lease", fence=5)
    assert info.value.field == "fence"
    assert store.get("fenced").value == "from attempt 7"  # the refused write changed nothing
    assert store.put("fenced", "attempt 7 again", fence=7).version == 2  # its own token still writes
    assert store.put("fenced", "from attempt 9", fence=9).version == 3
    with pytest.raises(Conflict):
        store.put("fenced", "attempt 7, now stale", fence=7)
    assert store.put("fenced", "an unfenced writer (the API)").version == 4


def test_ttl_is_set_reported_cleared_and_ends_the_item(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store()
    item = store.put("short", "x", ttl_s=100)
    assert item.ttl_s == 100
    assert 99_000 < int(redis_client.pttl(ITEM_PREFIX + "short")) <= 100_000  # type: ignore[arg-type]
    assert store.get("short").ttl_s in (99, 100)  # served from cache, TTL counted down locally
    assert store.put("short", "y").ttl_s is None  # a put without ttl_s clears the expiry
    assert int(redis_client.pttl(ITEM_PREFIX + "short")) == -1  # type: ignore[arg-type]

    store.put("gone", "soon", ttl_s=1)
    assert store.get("gone").value == "soon"  # cached now
    started = time.monotonic()
    wait_until(lambda: _missing(store, "gone"), timeout=3, message="item to expire")
    assert time.monotonic() - started < 2.5  # the cached copy did not live on for the 30 s cache TTL


def _missing(store: ItemStore, key: str) -> bool:
    try:
        store.get(key)
    except NotFound:
        return True
    return False


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.get("bad key"), "key"),
        (lambda s: s.get(""), "key"),
        (lambda s: s.put("x" * 129, 1), "key"),
        (lambda s: s.put("k/1", 1), "key"),
        (lambda s: s.put("k", 1, ttl_s=0), "ttl_s"),
        (lambda s: s.put("k", 1, ttl_s=31_536_001), "ttl_s"),
        (lambda s: s.put("k", 1, ttl_s=True), "ttl_s"),
        (lambda s: s.put("k", float("nan")), "value"),
        (lambda s: s.put("k", {"a": {1, 2}}), "value"),
        (lambda s: s.put("k", 1, if_version=-1), "if_version"),
        (lambda s: s.delete("a b"), "key"),
        (lambda s: s.get("k\n"), "key"),  # Python's $ matches before a final newline; fullmatch does not
        (lambda s: s.put("k", "\ud800"), "value"),  # JSON's escapes can carry a lone surrogate
        (lambda s: s.put("k", {"\udc00": 1}), "value"),
        (lambda s: s.put("k", nested(MAX_VALUE_DEPTH + 1)), "value"),
        (lambda s: s.put("k", nested(100_000)), "value"),  # checked without recursion
    ],
)
def test_bad_input_names_the_field(
    make_store: StoreFactory, call: Callable[[ItemStore], Any], field: str
) -> None:
    store = make_store(start=False)
    with pytest.raises(InvalidArgument) as info:
        call(store)
    assert info.value.field == field


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_values_nest_up_to_the_limit(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.put("deep", nested(MAX_VALUE_DEPTH)).value == nested(MAX_VALUE_DEPTH)
    assert store.get("deep").value == nested(MAX_VALUE_DEPTH)


def test_oversized_value_is_refused(make_store: StoreFactory) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        make_store(start=False).put("big", "x" * (1024 * 1024 + 1))
    assert info.value.field == "value"


def test_cached_value_equals_what_redis_returns(make_store: StoreFactory) -> None:
    writer, reader = make_store(), make_store()
    written = writer.put("shape", {1: (1, 2)})  # JSON turns int keys into strings, tuples into lists
    assert written.value == {"1": [1, 2]}
    assert writer.get("shape").value == reader.get("shape").value == {"1": [1, 2]}


def test_write_is_one_atomic_script_that_publishes(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store()
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(CHANNEL)
    wait_until(lambda: (m := pubsub.get_message(timeout=0.1)) and m["type"] == "subscribe", timeout=5)
    store.put("pub", 1)
    store.delete("pub")
    seen: list[bytes] = []

    def two_messages() -> bool:
        if message := pubsub.get_message(timeout=0.1):
            seen.append(message["data"])
        return len(seen) == 2

    wait_until(two_messages, timeout=5, message="two invalidation messages")
    assert seen == [b"1:pub", b"0:pub"]
    pubsub.close()
    raw = redis_client.hgetall("platform:item:pub")
    assert raw == {}


def test_cache_hits_and_redis_timings_are_measured(make_store: StoreFactory, metric_values: Metrics) -> None:
    store = make_store()
    hits = metric_values.value("platform.cache.requests", cache="items", result="hit")
    misses = metric_values.value("platform.cache.requests", cache="items", result="miss")
    ops = {
        op: metric_values.value(
            "db.client.operation.duration", **{"db.operation.name": op, "db.system.name": "redis"}
        )
        for op in ("EVALSHA", "HGETALL", "DEL")
    }
    store.put("m", 1)
    store.get("m")  # the writer's own copy, unless its echo raced the fill; then this refills
    store.get("m")
    store.delete("m")
    with pytest.raises(NotFound):
        store.get("m")
    new_hits = metric_values.value("platform.cache.requests", cache="items", result="hit") - hits
    new_misses = metric_values.value("platform.cache.requests", cache="items", result="miss") - misses
    assert new_hits + new_misses == 3
    assert new_hits >= 1
    for op, expected in (("EVALSHA", 1), ("DEL", 1)):
        value = metric_values.value(
            "db.client.operation.duration", **{"db.operation.name": op, "db.system.name": "redis"}
        )
        assert value - ops[op] == expected
    assert (
        metric_values.value("db.client.operation.duration", **{"db.operation.name": "HGETALL"})
        > ops["HGETALL"]
    )


def test_cache_size_gauge_counts_entries(make_store: StoreFactory, metric_values: Metrics) -> None:
    store = make_store()
    before = metric_values.value("platform.cache.size", cache="items")
    for i in range(3):
        store.put(f"s{i}", i)
        store.get(f"s{i}")
    wait_until(lambda: store.cache_len() == 3, timeout=5, message="three cached entries")
    assert metric_values.value("platform.cache.size", cache="items") - before == 3


def test_cache_is_bypassed_until_the_listener_subscribes(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(start=False)
    store.put("b", "v1")
    assert store.get("b").value == "v1"
    # A change that bypasses our publish: only a store that is not caching can see it at once.
    redis_client.hset(ITEM_PREFIX + "b", "value", json.dumps("v2"))
    assert store.get("b").value == "v2"
    assert store.cache_len() == 0

    store.start()
    wait_until(lambda: store.listener_connected, timeout=5, message="listener subscribed")
    assert store.get("b").value == "v2"
    redis_client.hset(ITEM_PREFIX + "b", "value", json.dumps("v3"))
    assert store.get("b").value == "v2"  # now served from the cache


def test_reconnect_clears_the_cache(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store()
    store.put("r", "old")
    wait_until(lambda: store.get("r") and store.cache_len() == 1, timeout=5, message="entry cached")
    redis_client.hset(ITEM_PREFIX + "r", "value", json.dumps("new"))  # no publish: a "missed" message
    assert store.get("r").value == "old"
    redis_client.client_kill_filter(_type="pubsub")
    wait_until(lambda: store.get("r").value == "new", timeout=5, message="cache cleared after reconnect")
    wait_until(lambda: store.listener_connected, timeout=5, message="listener back")


def test_redis_down_is_dependency_unavailable_and_cache_bypassed(
    make_store: StoreFactory, private_redis: PrivateRedis
) -> None:
    store = make_store(url=private_redis.url)
    store.put("d", 1)
    store.get("d")
    private_redis.stop()
    wait_until(lambda: not store.listener_connected, timeout=5, message="listener to notice")
    with pytest.raises(DependencyUnavailable) as info:
        store.get("d")  # never served from a cache nobody can invalidate
    assert info.value.retry_after_s == 1
    assert str(info.value) == "redis unavailable"
    with pytest.raises(DependencyUnavailable):
        store.put("d", 2)
    private_redis.start()
    wait_until(lambda: store.listener_connected, timeout=10, message="listener to reconnect")
    store.put("d", 3)
    assert store.get("d").value == 3


def test_chaos_error_rate_fails_redis_calls(make_store: StoreFactory) -> None:
    store = make_store(chaos=True)
    store.put("c", 1)
    chaos = store._chaos
    assert chaos is not None
    chaos.set({"redis_error_rate": 1.0, "ttl_s": 30})
    with pytest.raises(DependencyUnavailable):
        store.put("c", 2)
    with pytest.raises(DependencyUnavailable):
        store.delete("c")
    chaos.set({"reset": True})
    assert store.put("c", 3).version == 2


@pytest.fixture
def two_workers(make_settings: Callable[..., Settings]) -> Iterator[tuple[Services, Services]]:
    settings = make_settings(pool_processes=1)
    a, b = build_services(settings), build_services(settings)
    for services in (a, b):
        services.start()
    yield a, b
    for services in (a, b):
        services.close(timeout=5)


def test_write_in_one_worker_is_read_fresh_in_another(two_workers: tuple[Services, Services]) -> None:
    a, b = two_workers
    for services in (a, b):
        wait_until(lambda s=services: s.items.listener_connected, timeout=5, message="listeners subscribed")
    a.items.put("shared", "v1")
    assert b.items.get("shared").value == "v1"
    # A fill racing A's own message is refused; once that message is in, B caches the item.
    wait_until(lambda: b.items.get("shared") and b.items.cache_len() == 1, timeout=2, message="B to cache")
    a.items.put("shared", "v2")
    started = time.monotonic()
    wait_until(lambda: b.items.get("shared").value == "v2", timeout=5, interval=0.001, message="B to see v2")
    assert time.monotonic() - started < 2  # pub/sub, not the 30 s cache TTL
    a.items.delete("shared")
    wait_until(lambda: _missing(b.items, "shared"), timeout=5, interval=0.001, message="B to see the delete")


class SlowReadRedis(redis.Redis):
    """A client whose next pipelined read stops after Redis answered, until the test releases it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = False
        self.reached = threading.Event()
        self.release = threading.Event()

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def paused_execute(raise_on_error: bool = True) -> Any:
            result = execute(raise_on_error)
            if self.hold:
                self.hold = False
                self.reached.set()
                self.release.wait(5)
            return result

        pipe.execute = paused_execute  # type: ignore[method-assign]
        return pipe


def test_a_slow_read_cannot_cache_a_value_overwritten_meanwhile(
    make_store: StoreFactory, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    writer = make_store()
    client = SlowReadRedis.from_url(redis_url, socket_timeout=1)
    assert isinstance(client, SlowReadRedis)
    reader = ItemStore(client, make_settings())
    reader.start()
    try:
        wait_until(lambda: reader.listener_connected, timeout=5, message="listener subscribed")
        writer.put("race", "old")
        client.hold = True
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(reader.get("race").value))
        thread.start()
        assert client.reached.wait(5)  # the reader has "old" in hand and has not cached it yet
        seq = reader._seq
        writer.put("race", "new")
        wait_until(lambda: reader._seq > seq, timeout=5, message="reader to process the invalidation")
        client.release.set()
        thread.join(5)
        assert result == ["old"]  # that call returns what it read...
        assert reader.cache_len() == 0  # ...but does not cache it
        assert reader.get("race").value == "new"
    finally:
        reader.close()
        client.close()
