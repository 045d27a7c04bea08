"""The cache feed when ZooKeeper goes away: a worker that cannot hear invalidations stops
trusting its caches at once, and after reconnecting starts from an empty in-process cache.

Runs against a private ZooKeeper (the fixture of test_zookeeper_faults), since it stops it.
"""

from __future__ import annotations

import uuid

import pytest

from inferstack.configstore.zookeeper import open_zookeeper
from tests.contract.test_configstore_contract import FeedRecorder, wait_until
from tests.integration.test_zookeeper_faults import (  # noqa: F401  (the fixture)
    CATCH_UP,
    SESSION_TIMEOUT,
    PrivateZooKeeper,
    zookeeper,
)

pytestmark = pytest.mark.services


def test_cache_watch_reports_the_outage_and_what_may_have_been_lost(
    zookeeper: PrivateZooKeeper,  # noqa: F811
) -> None:
    root = f"/cache-feed-{uuid.uuid4().hex}"
    reader = open_zookeeper(
        zookeeper.endpoint, root, session_timeout=SESSION_TIMEOUT, request_timeout=2.0
    )
    recorder = FeedRecorder()
    reader.cache_feed.load_state()
    watch = reader.cache_feed.watch(recorder)
    try:
        zookeeper.stop()
        wait_until(lambda: recorder.connection == [False], CATCH_UP, "the outage reported")
        assert recorder.lost == 0
        zookeeper.start()
        writer = open_zookeeper(zookeeper.endpoint, root)
        try:
            wait_until(lambda: recorder.connection == [False, True], CATCH_UP, "reconnected")
            assert recorder.lost >= 1  # whatever was published meanwhile is unknowable
            writer.cache_feed.invalidate_keys({"g": [b"after"]})
            wait_until(lambda: recorder.keys("g") == [b"after"], CATCH_UP, "the feed again")
        finally:
            writer.close()
    finally:
        watch.stop()
        reader.close()
