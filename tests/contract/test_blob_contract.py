"""One contract for blob storage (model files) in every config store.

`inferstack apply` uploads a model file with `put_blob` and every server fetches it by digest,
so both adapters must round-trip any size, never show half a blob, and detect damage. Each
test runs against the embedded file store and a real ZooKeeper (a fresh root per test).
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from kazoo.client import KazooClient

from inferstack.configstore.base import (
    BlobNotFoundError,
    ConfigStore,
    CorruptBlobError,
    blob_digest,
)
from inferstack.configstore.files import FileConfigStore
from inferstack.configstore.zookeeper import BLOB_CHUNK_BYTES, ZooKeeperConfigStore
from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from tests.contract.test_configstore_contract import apply_once, delete_zookeeper_root

MiB = 1024 * 1024
ABSENT = blob_digest(b"never stored")


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


MODEL = random_bytes(3 * MiB)  # many ZooKeeper chunks, above its ~1 MiB node limit
assert len(MODEL) > 5 * BLOB_CHUNK_BYTES


class Location(Protocol):
    """Where one adapter keeps blobs, with the raw access tests need to damage them."""

    def open(self) -> ConfigStore: ...

    def stamp(self, digest: str) -> object:
        """Something that changes whenever the stored blob is written again."""
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
        return FileConfigStore(self.data_dir)

    def stamp(self, digest: str) -> object:
        stat = (self.blobs / digest).stat()
        return (stat.st_ino, stat.st_mtime_ns)

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
        return ZooKeeperConfigStore(self.hosts, self.root)

    def stamp(self, digest: str) -> object:
        path = f"{self.blobs}/{digest}"
        children = sorted(self.client.get_children(path))
        return [self.client.get(path)[1].mzxid] + [
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
    digest = store.put_blob(data)
    assert digest == blob_digest(data)
    assert store.get_blob(digest) == data
    assert store.has_blob(digest)


def test_digest_is_accepted_in_either_case(store: ConfigStore) -> None:
    digest = store.put_blob(b"model")
    assert store.get_blob(digest.upper()) == b"model"
    assert store.has_blob(digest.upper())


def test_putting_the_same_bytes_again_writes_nothing(
    store: ConfigStore, location: Location
) -> None:
    digest = store.put_blob(MODEL)
    before = location.stamp(digest)
    assert store.put_blob(MODEL) == digest
    assert location.stamp(digest) == before
    assert store.get_blob(digest) == MODEL


def test_different_bytes_are_different_blobs(store: ConfigStore) -> None:
    first, second = store.put_blob(b"model v1"), store.put_blob(b"model v2")
    assert first != second
    assert (store.get_blob(first), store.get_blob(second)) == (b"model v1", b"model v2")


def test_has_blob_only_for_stored_digests(store: ConfigStore) -> None:
    assert not store.has_blob(ABSENT)
    digest = store.put_blob(b"model")
    assert store.has_blob(digest)
    assert not store.has_blob(ABSENT)


def test_missing_digest_raises_not_found_naming_it(store: ConfigStore) -> None:
    store.put_blob(b"some other model")  # the blob area exists; this digest is not in it
    with pytest.raises(BlobNotFoundError, match=ABSENT) as raised:
        store.get_blob(ABSENT)
    assert isinstance(raised.value, NotFoundError)
    assert raised.value.status == "NOT_FOUND"


def test_missing_digest_in_an_empty_store_raises_not_found(store: ConfigStore) -> None:
    with pytest.raises(BlobNotFoundError, match=ABSENT):
        store.get_blob(ABSENT)


@pytest.mark.parametrize("bad", ["", "abc", "../registry.json", "g" * 64, ABSENT + "0"])
def test_malformed_digest_is_refused_naming_it(store: ConfigStore, bad: str) -> None:
    for call in (store.get_blob, store.has_blob):
        with pytest.raises(InvalidArgumentError) as raised:
            call(bad)
        assert repr(bad) in str(raised.value)


def test_corrupted_blob_is_detected_and_a_new_put_repairs_it(
    store: ConfigStore, location: Location
) -> None:
    digest = store.put_blob(MODEL)
    location.corrupt(digest)
    with pytest.raises(CorruptBlobError, match=digest) as raised:
        store.get_blob(digest)
    assert isinstance(raised.value, InferstackError)
    assert store.put_blob(MODEL) == digest
    assert store.get_blob(digest) == MODEL


def test_an_unfinished_write_is_invisible_and_the_next_put_completes_it(
    store: ConfigStore, location: Location
) -> None:
    digest = blob_digest(MODEL)
    location.leave_unfinished_write(MODEL)
    assert not store.has_blob(digest)
    with pytest.raises(BlobNotFoundError, match=digest):
        store.get_blob(digest)
    assert store.put_blob(MODEL) == digest
    assert store.get_blob(digest) == MODEL


def test_a_blob_written_by_one_store_is_read_by_another(location: Location) -> None:
    writer, reader = location.open(), location.open()
    try:
        digest = writer.put_blob(MODEL)
        assert reader.has_blob(digest)
        assert reader.get_blob(digest) == MODEL
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
            digests.append(store.put_blob(MODEL))
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
        assert stores[0].get_blob(digests[0]) == MODEL
    finally:
        for store in stores:
            store.close()


def test_blobs_and_the_registry_do_not_disturb_each_other(store: ConfigStore) -> None:
    digest = store.put_blob(MODEL)
    registry = apply_once(store)
    assert store.load() == registry
    assert store.get_blob(digest) == MODEL


@pytest.mark.services
def test_zookeeper_refuses_a_blob_above_its_limit_and_stores_nothing(
    zookeeper_endpoint: str,
) -> None:
    root = f"/inferstack-test/{uuid.uuid4().hex}"
    store = ZooKeeperConfigStore(zookeeper_endpoint, root, max_blob_bytes=MiB)
    try:
        too_big = random_bytes(MiB + 1)
        with pytest.raises(ResourceExhaustedError, match="max_blob_bytes"):
            store.put_blob(too_big)
        assert not store.has_blob(blob_digest(too_big))
        assert store.get_blob(store.put_blob(MODEL[:MiB])) == MODEL[:MiB]  # the limit itself
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
                    seen = reader.get_blob(digest)
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
            writer.put_blob(model)
    finally:
        written.set()
        thread.join(timeout=60)
        writer.close()
        reader.close()
    for digest, seen in outcomes.items():
        assert set(seen) <= {"absent", "whole"}, f"{digest}: {seen}"
        # Once whole, it stays whole; and after all writes, every blob is whole.
        assert "absent" not in seen[seen.index("whole") :], f"{digest}: {seen}"
