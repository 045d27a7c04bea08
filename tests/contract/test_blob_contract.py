"""One contract for blob storage (model files) in every config store.

`inferstack apply` uploads a model file with `blobs.put` and every server fetches it by digest,
so both adapters must round-trip any size, never show half a blob, and detect damage.
`inferstack models prune` lists blobs and deletes old ones, so both must report what is
stored, delete atomically for readers, and never delete a blob stored again after it was
listed. Each test runs against the embedded file store and a real ZooKeeper (a fresh root
per test).
"""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from kazoo.client import KazooClient

from inferstack.configstore.base import (
    BlobInfo,
    BlobNotFoundError,
    ConfigStore,
    CorruptBlobError,
    blob_digest,
)
from inferstack.configstore.files import open_files
from inferstack.configstore.zookeeper import BLOB_CHUNK_BYTES, open_zookeeper
from inferstack.configstore.zookeeper import blobs as zookeeper_blobs
from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from tests.contract.test_configstore_contract import (
    apply_once,
    delete_zookeeper_root,
    wait_until,
)

MiB = 1024 * 1024
ABSENT = blob_digest(b"never stored")


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


MODEL = random_bytes(3 * MiB)  # many ZooKeeper chunks, above its ~1 MiB node limit
assert len(MODEL) > 5 * BLOB_CHUNK_BYTES
SMALL_MODEL = random_bytes(5 * BLOB_CHUNK_BYTES // 2, seed=11)  # a few chunks: quick rounds


def after_clock_moves(stored_at: float) -> None:
    """Wait until the clock is past `stored_at`, so storing again gives a later stored_at
    (file mtimes and ZooKeeper's milliseconds could otherwise tie within one tick)."""
    wait_until(lambda: time.time() > stored_at + 0.01, 5, "the clock to move on")


def listed(store: ConfigStore) -> dict[str, BlobInfo]:
    return {blob.digest: blob for blob in store.blobs.list()}


def run_together(*calls: Callable[[], object]) -> list[BaseException]:
    """Run each call on its own thread, all released at once; what they raised."""
    start = threading.Barrier(len(calls))
    failures: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        start.wait()
        try:
            call()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return failures


class Location(Protocol):
    """Where one adapter keeps blobs, with the raw access tests need to damage them."""

    def open(self) -> ConfigStore: ...

    def stamp(self, digest: str) -> object:
        """Something that changes whenever the stored blob's bytes are written again."""
        ...

    def corrupt(self, digest: str) -> None:
        """Change one stored byte behind the store's back."""
        ...

    def leave_unfinished_write(self, data: bytes) -> None:
        """What a writer of `data` that died halfway leaves behind."""
        ...


class FileLocation:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blobs = data_dir / "config" / "blobs"

    def open(self) -> ConfigStore:
        return open_files(self.data_dir)

    def stamp(self, digest: str) -> object:
        return (self.blobs / digest).stat().st_ino  # every write renames a new file in

    def corrupt(self, digest: str) -> None:
        path = self.blobs / digest
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    def leave_unfinished_write(self, data: bytes) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        (self.blobs / ".blob-died").write_bytes(data[: len(data) // 2])


class ZooKeeperLocation:
    def __init__(self, hosts: str, root: str) -> None:
        self.hosts = hosts
        self.root = root
        self.blobs = f"{root}/blobs"
        self.client = KazooClient(hosts=hosts)
        self.client.start(timeout=10)

    def open(self) -> ConfigStore:
        return open_zookeeper(self.hosts, self.root)

    def stamp(self, digest: str) -> object:
        # The node's creation and each chunk's last write (a re-put sets the header only).
        path = f"{self.blobs}/{digest}"
        children = sorted(self.client.get_children(path))
        return [self.client.get(path)[1].czxid] + [
            self.client.get(f"{path}/{child}")[1].mzxid for child in children
        ]

    def corrupt(self, digest: str) -> None:
        chunk = f"{self.blobs}/{digest}/c-00000"
        data = bytearray(self.client.get(chunk)[0])
        data[len(data) // 2] ^= 0x01
        self.client.set(chunk, bytes(data))

    def leave_unfinished_write(self, data: bytes) -> None:
        # The blob node (empty until committed) and some chunks, one of them wrong.
        path = f"{self.blobs}/{blob_digest(data)}"
        self.client.create(path, b"", makepath=True)
        self.client.create(f"{path}/c-00000", b"garbage from an older write")
        self.client.create(f"{path}/c-00001", data[BLOB_CHUNK_BYTES : 2 * BLOB_CHUNK_BYTES])

    def close(self) -> None:
        self.client.stop()
        self.client.close()


@pytest.fixture(params=["files", pytest.param("zookeeper", marks=pytest.mark.services)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Location]:
    if request.param == "files":
        yield FileLocation(tmp_path)
        return
    hosts: str = request.getfixturevalue("zookeeper_endpoint")
    root = f"/inferstack-test/{uuid.uuid4().hex}"
    zookeeper = ZooKeeperLocation(hosts, root)
    try:
        yield zookeeper
    finally:
        zookeeper.close()
        delete_zookeeper_root(hosts, root)


@pytest.fixture
def store(location: Location) -> Iterator[ConfigStore]:
    opened = location.open()
    yield opened
    opened.close()


@pytest.mark.parametrize("data", [b"", b"a small model", MODEL], ids=["empty", "small", "3MiB"])
def test_put_then_get_round_trips(store: ConfigStore, data: bytes) -> None:
    digest = store.blobs.put(data)
    assert digest == blob_digest(data)
    assert store.blobs.get(digest) == data
    assert store.blobs.has(digest)


def test_digest_is_accepted_in_either_case(store: ConfigStore) -> None:
    digest = store.blobs.put(b"model")
    assert store.blobs.get(digest.upper()) == b"model"
    assert store.blobs.has(digest.upper())


def test_putting_the_same_bytes_again_rewrites_nothing_but_refreshes_stored_at(
    store: ConfigStore, location: Location
) -> None:
    digest = store.blobs.put(MODEL)
    before = location.stamp(digest)
    [first] = store.blobs.list()
    after_clock_moves(first.stored_at)
    assert store.blobs.put(MODEL) == digest
    assert location.stamp(digest) == before
    assert store.blobs.get(digest) == MODEL
    [again] = store.blobs.list()
    assert again.stored_at > first.stored_at  # an apply re-using a file makes it young


def test_different_bytes_are_different_blobs(store: ConfigStore) -> None:
    first, second = store.blobs.put(b"model v1"), store.blobs.put(b"model v2")
    assert first != second
    assert (store.blobs.get(first), store.blobs.get(second)) == (b"model v1", b"model v2")


def test_has_blob_only_for_stored_digests(store: ConfigStore) -> None:
    assert not store.blobs.has(ABSENT)
    digest = store.blobs.put(b"model")
    assert store.blobs.has(digest)
    assert not store.blobs.has(ABSENT)


def test_missing_digest_raises_not_found_naming_it(store: ConfigStore) -> None:
    store.blobs.put(b"some other model")  # the blob area exists; this digest is not in it
    with pytest.raises(BlobNotFoundError, match=ABSENT) as raised:
        store.blobs.get(ABSENT)
    assert isinstance(raised.value, NotFoundError)
    assert raised.value.status == "NOT_FOUND"


def test_missing_digest_in_an_empty_store_raises_not_found(store: ConfigStore) -> None:
    with pytest.raises(BlobNotFoundError, match=ABSENT):
        store.blobs.get(ABSENT)


@pytest.mark.parametrize("bad", ["", "abc", "../registry.json", "g" * 64, ABSENT + "0"])
def test_malformed_digest_is_refused_naming_it(store: ConfigStore, bad: str) -> None:
    calls: list[Callable[[str], object]] = [store.blobs.get, store.blobs.has, store.blobs.delete]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as raised:
            call(bad)
        assert repr(bad) in str(raised.value)


def test_corrupted_blob_is_detected_and_a_new_put_repairs_it(
    store: ConfigStore, location: Location
) -> None:
    digest = store.blobs.put(MODEL)
    location.corrupt(digest)
    with pytest.raises(CorruptBlobError, match=digest) as raised:
        store.blobs.get(digest)
    assert isinstance(raised.value, InferstackError)
    assert store.blobs.put(MODEL) == digest
    assert store.blobs.get(digest) == MODEL


def test_an_unfinished_write_is_invisible_and_the_next_put_completes_it(
    store: ConfigStore, location: Location
) -> None:
    digest = blob_digest(MODEL)
    location.leave_unfinished_write(MODEL)
    assert not store.blobs.has(digest)
    with pytest.raises(BlobNotFoundError, match=digest):
        store.blobs.get(digest)
    assert store.blobs.put(MODEL) == digest
    assert store.blobs.get(digest) == MODEL


def test_a_blob_written_by_one_store_is_read_by_another(location: Location) -> None:
    writer, reader = location.open(), location.open()
    try:
        digest = writer.blobs.put(MODEL)
        assert reader.blobs.has(digest)
        assert reader.blobs.get(digest) == MODEL
    finally:
        writer.close()
        reader.close()


def test_concurrent_writers_of_one_blob_all_succeed(location: Location) -> None:
    stores = [location.open() for _ in range(4)]
    start = threading.Barrier(len(stores))
    digests: list[str] = []
    failures: list[BaseException] = []

    def put(store: ConfigStore) -> None:
        start.wait()
        try:
            digests.append(store.blobs.put(MODEL))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=put, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []
        assert digests == [blob_digest(MODEL)] * len(stores)
        assert stores[0].blobs.get(digests[0]) == MODEL
    finally:
        for store in stores:
            store.close()


def test_blobs_and_the_registry_do_not_disturb_each_other(store: ConfigStore) -> None:
    digest = store.blobs.put(MODEL)
    registry = apply_once(store)
    assert store.registry.load() == registry
    assert store.blobs.get(digest) == MODEL


@pytest.mark.services
def test_zookeeper_refuses_a_blob_above_its_limit_and_stores_nothing(
    zookeeper_endpoint: str,
) -> None:
    root = f"/inferstack-test/{uuid.uuid4().hex}"
    store = open_zookeeper(zookeeper_endpoint, root, max_blob_bytes=MiB)
    try:
        too_big = random_bytes(MiB + 1)
        with pytest.raises(ResourceExhaustedError, match="max_blob_bytes"):
            store.blobs.put(too_big)
        assert not store.blobs.has(blob_digest(too_big))
        assert store.blobs.get(store.blobs.put(MODEL[:MiB])) == MODEL[:MiB]  # the limit itself
    finally:
        store.close()
        delete_zookeeper_root(zookeeper_endpoint, root)


def test_a_reader_during_a_write_sees_no_blob_or_all_of_it(location: Location) -> None:
    writer, reader = location.open(), location.open()
    models = [random_bytes(3 * MiB, seed) for seed in range(4)]
    wanted = {blob_digest(model): model for model in models}
    outcomes: dict[str, list[str]] = {digest: [] for digest in wanted}
    written = threading.Event()

    def read_while_writing() -> None:
        while True:
            done = written.is_set()  # read once more after the last write finished
            for digest, model in wanted.items():
                try:
                    seen = reader.blobs.get(digest)
                    outcomes[digest].append("whole" if seen == model else "wrong bytes")
                except BlobNotFoundError:
                    outcomes[digest].append("absent")
                except Exception as exc:
                    outcomes[digest].append(f"{type(exc).__name__}: {exc}")
            if done:
                return

    thread = threading.Thread(target=read_while_writing)
    thread.start()
    try:
        for model in models:
            writer.blobs.put(model)
    finally:
        written.set()
        thread.join(timeout=60)
        writer.close()
        reader.close()
    for digest, seen in outcomes.items():
        assert set(seen) <= {"absent", "whole"}, f"{digest}: {seen}"
        # Once whole, it stays whole; and after all writes, every blob is whole.
        assert "absent" not in seen[seen.index("whole") :], f"{digest}: {seen}"


# -- listing and deleting (inferstack models prune) -------------------------------------------


def test_an_empty_store_lists_no_blobs_and_deletes_nothing(store: ConfigStore) -> None:
    assert store.blobs.list() == []
    assert store.blobs.delete(ABSENT) is False


def test_list_reports_every_blob_with_its_size_and_when_it_was_stored(
    store: ConfigStore,
) -> None:
    before = time.time()
    digests = [store.blobs.put(data) for data in (b"", b"a small model", MODEL)]
    after = time.time()
    store.blobs.put(b"x")
    apply_once(store)  # the registry and other nodes are not blobs
    blobs = listed(store)
    assert set(blobs) == {*digests, blob_digest(b"x")}
    assert [blobs[d].size for d in digests] == [0, len(b"a small model"), len(MODEL)]
    for digest in digests:
        # Unix seconds (not ms), from the file's mtime or the znode's (1 s for clock ticks).
        assert before - 1 <= blobs[digest].stored_at <= after + 1


def test_a_deleted_blob_is_gone_for_every_reader_and_others_stay(location: Location) -> None:
    store, other = location.open(), location.open()
    try:
        doomed, kept = store.blobs.put(MODEL), store.blobs.put(b"another model")
        assert other.blobs.get(doomed) == MODEL  # a reader that had it before
        assert store.blobs.delete(doomed) is True
        for reader in (store, other):
            assert not reader.blobs.has(doomed)
            with pytest.raises(BlobNotFoundError, match=doomed):
                reader.blobs.get(doomed)
            assert set(listed(reader)) == {kept}
            assert reader.blobs.get(kept) == b"another model"
        assert store.blobs.delete(doomed) is False  # already gone: not an error
    finally:
        store.close()
        other.close()


def test_a_digest_in_either_case_deletes_the_blob(store: ConfigStore) -> None:
    digest = store.blobs.put(b"model")
    assert store.blobs.delete(digest.upper()) is True
    assert not store.blobs.has(digest)


def test_a_deleted_blob_can_be_stored_again(store: ConfigStore) -> None:
    digest = store.blobs.put(MODEL)
    assert store.blobs.delete(digest)
    assert store.blobs.put(MODEL) == digest
    assert store.blobs.get(digest) == MODEL
    assert set(listed(store)) == {digest}


def test_a_conditional_delete_removes_the_blob_as_it_was_listed(store: ConfigStore) -> None:
    digest = store.blobs.put(MODEL)
    [blob] = store.blobs.list()
    assert store.blobs.delete(digest, if_stored_at=blob.stored_at) is True
    assert not store.blobs.has(digest)


def test_a_blob_stored_again_after_it_was_listed_is_not_deleted(store: ConfigStore) -> None:
    """What protects an apply that re-uses an old model file from a prune running meanwhile."""
    digest = store.blobs.put(MODEL)
    [blob] = store.blobs.list()
    after_clock_moves(blob.stored_at)
    store.blobs.put(MODEL)  # the apply
    assert store.blobs.delete(digest, if_stored_at=blob.stored_at) is False
    assert store.blobs.get(digest) == MODEL


def test_a_put_racing_a_conditional_delete_always_leaves_the_blob_whole(
    location: Location,
) -> None:
    """Whichever wins, a put that returned means the blob is there for the registry it is
    about to save: kept if the put came first, stored anew if the delete did."""
    putter, pruner = location.open(), location.open()
    digest = blob_digest(SMALL_MODEL)
    try:
        for _ in range(8):
            putter.blobs.put(SMALL_MODEL)
            stored_at = listed(pruner)[digest].stored_at
            after_clock_moves(stored_at)
            failures = run_together(
                lambda: putter.blobs.put(SMALL_MODEL),
                functools.partial(pruner.blobs.delete, digest, if_stored_at=stored_at),
            )
            assert failures == []
            assert pruner.blobs.get(digest) == SMALL_MODEL
    finally:
        putter.close()
        pruner.close()


def test_a_reader_during_deletes_sees_no_blob_or_all_of_it(location: Location) -> None:
    writer, reader = location.open(), location.open()
    digest = blob_digest(MODEL)
    outcomes: list[str] = []
    done = threading.Event()

    def read_while_deleting() -> None:
        while not done.is_set():
            try:
                outcomes.append("whole" if reader.blobs.get(digest) == MODEL else "wrong bytes")
            except BlobNotFoundError:
                outcomes.append("absent")
            except Exception as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=read_while_deleting)
    thread.start()
    try:
        for _ in range(6):
            writer.blobs.put(MODEL)
            wait_until(lambda: "whole" in outcomes, 30, "a reader to see the blob")
            assert writer.blobs.delete(digest) is True
            outcomes.append("deleted")
    finally:
        done.set()
        thread.join(timeout=60)
        writer.close()
        reader.close()
    assert set(outcomes) <= {"absent", "whole", "deleted"}, outcomes


@pytest.mark.services
def test_zookeeper_lists_and_deletes_what_a_dead_writer_left(zookeeper_endpoint: str) -> None:
    root = f"/inferstack-test/{uuid.uuid4().hex}"
    location = ZooKeeperLocation(zookeeper_endpoint, root)
    store = location.open()
    try:
        digest = blob_digest(MODEL)
        location.leave_unfinished_write(MODEL)
        [blob] = store.blobs.list()
        left = len(b"garbage from an older write") + BLOB_CHUNK_BYTES
        assert (blob.digest, blob.size) == (digest, left)  # what deleting it frees
        assert store.blobs.delete(digest, if_stored_at=blob.stored_at) is True
        assert location.client.exists(f"{location.blobs}/{digest}") is None
    finally:
        store.close()
        location.close()
        delete_zookeeper_root(zookeeper_endpoint, root)


@pytest.mark.services
def test_zookeeper_deletes_a_blob_too_large_for_one_request_in_steps(
    zookeeper_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete in several transactions: readers see the whole blob or none throughout, and
    it ends with the node and every chunk gone."""
    monkeypatch.setattr(zookeeper_blobs, "MAX_DELETE_REQUEST_BYTES", 1200)  # ~8 chunks a step
    root = f"/inferstack-test/{uuid.uuid4().hex}"
    location = ZooKeeperLocation(zookeeper_endpoint, root)
    store = location.open()
    try:
        digest = store.blobs.put(MODEL)
        path = f"{location.blobs}/{digest}"
        assert len(zookeeper_blobs._delete_batches(path, location.client.get_children(path))) > 3
        test_a_reader_during_deletes_sees_no_blob_or_all_of_it(location)
        assert location.client.exists(path) is None
        assert store.blobs.list() == []
    finally:
        store.close()
        location.close()
        delete_zookeeper_root(zookeeper_endpoint, root)
