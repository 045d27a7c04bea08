"""One contract for every config store: what `inferstack apply` and the servers rely on.

Each test runs against the embedded file store and against a real ZooKeeper (a fresh root
path per test), so both adapters keep the same behaviour.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from inferstack.configstore.base import ConfigConflictError, ConfigStore
from inferstack.configstore.cachefeed import SLOTS
from inferstack.configstore.files import open_files
from inferstack.configstore.zookeeper import open_zookeeper
from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.registry import Registry, plan

OpenStore = Callable[[], ConfigStore]
WATCH_LATENCY = 1.0  # every server must see an apply within a second

USER = Entity.model_validate({"name": "user", "keys": [{"name": "user_id", "type": "int64"}]})
PRODUCT = Entity.model_validate(
    {"name": "product", "keys": [{"name": "product_id", "type": "int64"}]}
)


def user_profile(feature_count: int) -> FeatureGroup:
    """A feature group whose layout changes with `feature_count`, so each apply is a change."""
    features = [{"name": f"f{i}", "type": "float32", "default": i} for i in range(feature_count)]
    features.append({"name": "embedding", "type": "float32[8]"})
    features.append({"name": "region", "type": "string", "default": "unknown"})
    return FeatureGroup.model_validate(
        {"name": "user_profile", "entity": "user", "ttl": "30d", "features": features}
    )


PRODUCT_STATS = FeatureGroup.model_validate(
    {
        "name": "product_stats",
        "entity": "product",
        "cache": {"ttl": "5m"},
        "features": [
            {"name": "price", "type": "float64", "default": 0},
            {"name": "in_stock", "type": "bool", "default": True},
        ],
    }
)


def next_registry(current: Registry) -> Registry:
    """What one more `inferstack apply` makes: the user group gains a feature."""
    stored = current.feature_groups.get("user_profile")
    count = len(stored.definition.features) - 1 if stored else 1
    result = plan(current, [USER, PRODUCT], [user_profile(count), PRODUCT_STATS])
    assert not result.empty
    return result.registry


def apply_once(store: ConfigStore) -> Registry:
    current = store.registry.load()
    registry = next_registry(current)
    store.registry.save(registry, current.revision)
    return registry


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until it holds; return how long that took, or fail after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:g}s")
        time.sleep(0.005)
    return time.monotonic() - start


class Recorder:
    """An on_change callback that keeps what it was given (it runs on the watch's thread)."""

    def __init__(self) -> None:
        self.registries: list[Registry] = []

    def __call__(self, registry: Registry) -> None:
        self.registries.append(registry)

    @property
    def revisions(self) -> list[int]:
        return [r.revision for r in self.registries]

    def saw(self, revision: int) -> Callable[[], bool]:
        return lambda: revision in self.revisions


def delete_zookeeper_root(hosts: str, root: str) -> None:
    client = KazooClient(hosts=hosts)
    client.start(timeout=10)
    try:
        client.delete(root, recursive=True)
    finally:
        client.stop()
        client.close()


@pytest.fixture(params=["files", pytest.param("zookeeper", marks=pytest.mark.services)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores that share one location (a directory, a ZooKeeper root); closes them all."""
    opened: list[ConfigStore] = []
    if request.param == "zookeeper":
        hosts: str = request.getfixturevalue("zookeeper_endpoint")
        root = f"/inferstack-test/{uuid.uuid4().hex}"

        def make() -> ConfigStore:
            return open_zookeeper(hosts, root)
    else:

        def make() -> ConfigStore:
            return open_files(tmp_path)

    def open_one() -> ConfigStore:
        store = make()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
    if request.param == "zookeeper":
        delete_zookeeper_root(hosts, root)


def test_empty_store_loads_an_empty_registry(open_store: OpenStore) -> None:
    registry = open_store().registry.load()
    assert registry == Registry()
    assert registry.revision == 0


def test_save_then_load_round_trips(open_store: OpenStore) -> None:
    store = open_store()
    first = apply_once(store)
    assert first.revision == 1
    assert store.registry.load() == first
    second = apply_once(store)
    assert second.revision == 2
    loaded = store.registry.load()
    assert loaded == second
    # Every schema version survives, not only the current one: old rows must stay readable.
    assert [v.version for v in loaded.feature_groups["user_profile"].versions] == [1, 2]


def test_large_registry_round_trips(open_store: OpenStore) -> None:
    """Thousands of features: more than ZooKeeper takes in one node, even compressed."""
    groups = [
        FeatureGroup.model_validate(
            {
                "name": f"group_{g}",
                "entity": "user",
                "features": [
                    {"name": f"f{i}", "type": "float32", "description": secrets.token_hex(160)}
                    for i in range(1000)
                ],
            }
        )
        for g in range(4)
    ]
    registry = plan(Registry(), [USER], groups).registry
    assert len(registry.model_dump_json()) > 1_300_000
    store = open_store()
    store.registry.save(registry, 0)
    assert open_store().registry.load() == registry


def test_stale_expected_revision_conflicts_and_changes_nothing(open_store: OpenStore) -> None:
    store = open_store()
    saved = apply_once(store)
    other = next_registry(saved)
    for stale in (0, 5):
        with pytest.raises(ConfigConflictError):
            store.registry.save(other, stale)
    assert store.registry.load() == saved


def test_concurrent_applies_from_one_revision_let_exactly_one_win(open_store: OpenStore) -> None:
    stores = [open_store() for _ in range(4)]
    base = apply_once(stores[0])
    outcomes: list[str] = []
    start = threading.Barrier(len(stores))

    def apply(store: ConfigStore) -> None:
        registry = next_registry(base)
        start.wait()
        try:
            store.registry.save(registry, base.revision)
            outcomes.append("saved")
        except ConfigConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=apply, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict"] * 3 + ["saved"]
    assert stores[0].registry.load().revision == base.revision + 1


def test_two_stores_on_one_location_see_each_others_writes(open_store: OpenStore) -> None:
    first, second = open_store(), open_store()
    written_by_first = apply_once(first)
    assert second.registry.load() == written_by_first
    written_by_second = apply_once(second)
    assert first.registry.load() == written_by_second
    with pytest.raises(ConfigConflictError):  # first's view is stale now
        first.registry.save(next_registry(written_by_first), written_by_first.revision)


def test_watch_sees_each_change_within_a_second_in_order_and_complete(
    open_store: OpenStore,
) -> None:
    watcher, writer = open_store(), open_store()
    watcher.registry.load()
    seen = Recorder()
    watch = watcher.registry.watch(seen)
    try:
        saved = []
        for _ in range(3):
            registry = apply_once(writer)
            saved.append(registry)
            wait_until(seen.saw(registry.revision), WATCH_LATENCY, f"revision {registry.revision}")
        assert seen.registries == saved  # complete registries, each once, in order
    finally:
        watch.stop()


def test_watch_after_a_burst_of_changes_ends_on_the_newest(open_store: OpenStore) -> None:
    """A watch may skip revisions that were replaced quickly, but never goes backwards."""
    watcher, writer = open_store(), open_store()
    watcher.registry.load()
    seen = Recorder()
    watch = watcher.registry.watch(seen)
    try:
        saved = {r.revision: r for r in (apply_once(writer) for _ in range(5))}
        newest = max(saved)
        wait_until(seen.saw(newest), WATCH_LATENCY, f"revision {newest}")
        assert seen.revisions == sorted(set(seen.revisions))
        assert all(registry == saved[registry.revision] for registry in seen.registries)
    finally:
        watch.stop()


def test_watch_does_not_replay_what_was_already_loaded(open_store: OpenStore) -> None:
    writer, watcher = open_store(), open_store()
    apply_once(writer)
    watcher.registry.load()
    seen = Recorder()
    watch = watcher.registry.watch(seen)
    try:
        newer = apply_once(writer)
        wait_until(seen.saw(newer.revision), WATCH_LATENCY, "the newer revision")
        assert seen.registries == [newer]
    finally:
        watch.stop()


def test_stopped_watch_gets_no_more_changes(open_store: OpenStore) -> None:
    watcher, writer = open_store(), open_store()
    watcher.registry.load()
    seen = Recorder()
    watch = watcher.registry.watch(seen)
    first = apply_once(writer)
    wait_until(seen.saw(first.revision), WATCH_LATENCY, "the first revision")
    watch.stop()

    control = Recorder()  # proves the next change did reach watchers
    control_watch = open_store().registry.watch(control)
    try:
        second = apply_once(writer)
        wait_until(control.saw(second.revision), WATCH_LATENCY, "the control watch")
        # The control saw it; give the stopped watch as long again to (wrongly) see it too.
        time.sleep(WATCH_LATENCY / 2)
        assert seen.registries == [first]
    finally:
        control_watch.stop()


# -- the cache feed: generations and invalidated keys (configstore/cachefeed.py) ------------


class FeedRecorder:
    """A CacheListener that keeps what it was told (it runs on the watch's thread)."""

    def __init__(self) -> None:
        self.generations: list[dict[str, int]] = []
        self.batches: list[dict[str, list[bytes]]] = []
        self.lost = 0
        self.connection: list[bool] = []

    def generations_changed(self, generations: Mapping[str, int]) -> None:
        self.generations.append(dict(generations))

    def keys_invalidated(self, batch: Mapping[str, Sequence[bytes]]) -> None:
        self.batches.append({group: list(keys) for group, keys in batch.items()})

    def messages_lost(self) -> None:
        self.lost += 1

    def connection_changed(self, live: bool) -> None:
        self.connection.append(live)

    def keys(self, group: str) -> list[bytes]:
        return [key for batch in list(self.batches) for key in batch.get(group, [])]

    def generation(self, group: str) -> int:
        return self.generations[-1].get(group, 0) if self.generations else 0


def test_cache_state_starts_empty(open_store: OpenStore) -> None:
    state = open_store().cache_feed.load_state()
    assert state.generations == {} and state.sequence == 0


def test_generation_bumps_only_move_forward_and_every_store_sees_them(
    open_store: OpenStore,
) -> None:
    first, second = open_store(), open_store()
    bumped = first.cache_feed.bump_generations(["user_profile"])
    assert bumped["user_profile"] >= int(time.time() * 1000) - 60_000  # not reused after a wipe
    again = second.cache_feed.bump_generations(["user_profile", "product_stats"])
    assert again["user_profile"] > bumped["user_profile"]
    assert first.cache_feed.load_state().generations == again


def test_concurrent_bumps_from_many_stores_each_get_their_own_generation(
    open_store: OpenStore,
) -> None:
    stores = [open_store() for _ in range(4)]
    results: list[int] = []
    lock = threading.Lock()

    def bump(store: ConfigStore) -> None:
        for _ in range(10):
            generation = store.cache_feed.bump_generations(["g"])["g"]
            with lock:
                results.append(generation)

    threads = [threading.Thread(target=bump, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 40, "two bumps handed out the same generation"
    assert stores[0].cache_feed.load_state().generations["g"] == max(results)


def test_watch_delivers_generations_and_keys_within_a_second(open_store: OpenStore) -> None:
    writer, reader = open_store(), open_store()
    reader.cache_feed.load_state()
    recorder = FeedRecorder()
    watch = reader.cache_feed.watch(recorder)
    try:
        keys = [b"\x00", b"", b"user:\xff\xfe", secrets.token_bytes(300)]
        writer.cache_feed.invalidate_keys({"user_profile": keys, "product_stats": [b"p1"]})
        wait_until(lambda: recorder.keys("user_profile") == keys, WATCH_LATENCY, "keys")
        assert recorder.keys("product_stats") == [b"p1"]
        generation = writer.cache_feed.bump_generations(["product_stats"])["product_stats"]
        wait_until(
            lambda: recorder.generation("product_stats") == generation, WATCH_LATENCY, "bump"
        )
        assert recorder.lost == 0
    finally:
        watch.stop()


def test_concurrent_publishers_lose_no_batch(open_store: OpenStore) -> None:
    writers = [open_store() for _ in range(3)]
    reader = open_store()
    reader.cache_feed.load_state()
    recorder = FeedRecorder()
    watch = reader.cache_feed.watch(recorder)

    def publish(index: int, store: ConfigStore) -> None:
        for n in range(15):
            store.cache_feed.invalidate_keys({"g": [f"{index}-{n}".encode()]})

    threads = [threading.Thread(target=publish, args=(i, s)) for i, s in enumerate(writers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        expected = {f"{i}-{n}".encode() for i in range(3) for n in range(15)}
        wait_until(lambda: set(recorder.keys("g")) == expected, 5.0, "every published key")
        assert len(recorder.keys("g")) == 45 and recorder.lost == 0
    finally:
        watch.stop()


def test_a_batch_too_large_for_the_feed_bumps_its_groups_instead(open_store: OpenStore) -> None:
    store = open_store()
    before = store.cache_feed.load_state()
    huge = [secrets.token_bytes(64) for _ in range(3000)]  # ~190 KiB, incompressible
    bumped = store.cache_feed.invalidate_keys({"user_profile": huge})
    after = store.cache_feed.load_state()
    assert set(bumped) == {"user_profile"}
    assert after.generations["user_profile"] == bumped["user_profile"]
    assert after.sequence == before.sequence  # nothing went into the ring


def test_a_reader_that_fell_behind_the_ring_is_told_it_lost_messages(
    open_store: OpenStore,
) -> None:
    writer, reader = open_store(), open_store()
    reader.cache_feed.load_state()
    for n in range(SLOTS + 3):  # more than the ring holds, before the reader watches
        writer.cache_feed.invalidate_keys({"g": [str(n).encode()]})
    recorder = FeedRecorder()
    watch = reader.cache_feed.watch(recorder)
    try:
        wait_until(lambda: recorder.lost > 0, WATCH_LATENCY, "messages lost")
        writer.cache_feed.invalidate_keys({"g": [b"after"]})  # and it follows the feed again
        wait_until(lambda: b"after" in recorder.keys("g"), WATCH_LATENCY, "the next batch")
    finally:
        watch.stop()
