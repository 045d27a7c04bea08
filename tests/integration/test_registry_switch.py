"""A worker's services move to newer registry revisions only, whatever order the switches
finish in: revision N's Cassandra `prepare` is made to finish after N+1's arrived, on a real
Cassandra, and no service (feature store, inferflow, interaction store) is ever seen going
back from N+1 to N."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inferstack.core.registry import Registry
from inferstack.server.components import Components, build
from inferstack.server.registryswitch import RegistrySwitch
from inferstack.server.settings import load_settings
from tests.helpers import drop_keyspace, registry_from

pytestmark = pytest.mark.services
HELD = 3.0  # seconds revision 2's prepare waits for revision 3's (which never comes: locked)


def spec(*groups: str) -> dict[str, Any]:
    return {
        "entities": [{"name": "user", "keys": [{"name": "user_id", "type": "int64"}]}],
        "feature_groups": [
            {"name": name, "entity": "user", "features": [{"name": "x", "type": "int32"}]}
            for name in groups
        ],
    }


class PrepareInOrder:
    """The storage, but revision 2's prepare finishes only after revision 3's has (or after
    HELD seconds): the order a slow network gives."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.third_prepared = asyncio.Event()

    async def prepare(self, registry: Registry) -> None:
        if registry.revision == 2:
            await self.inner.prepare(registry)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.third_prepared.wait(), HELD)
            return
        await self.inner.prepare(registry)
        if registry.revision == 3:
            self.third_prepared.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def components(cassandra_endpoint: str, tmp_path: Path) -> AsyncIterator[Components]:
    keyspace = f"test_sw_{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "storage": {
                "type": "cassandra",
                "contact_points": [cassandra_endpoint],
                "keyspace": keyspace,
            },
        },
    )
    built = await build(settings, watch=False)
    try:
        yield built
    finally:
        await built.close()
        await asyncio.to_thread(drop_keyspace, cassandra_endpoint, keyspace)


async def test_no_service_moves_back_when_switches_finish_out_of_order(
    components: Components,
) -> None:
    first = registry_from(spec("a"), base=Registry())  # revision 1
    second = registry_from(spec("a", "b"), base=first)
    third = registry_from(spec("a", "b", "c"), base=second)
    assert (second.revision, third.revision) == (2, 3)
    storage = PrepareInOrder(components.service.rows.storage)
    switch = RegistrySwitch(
        storage, components.service, components.inferflow, components.interactions
    )
    assert await switch.to(first)

    seen: list[tuple[int, int, int]] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(
                (
                    components.service.catalog.revision,
                    components.inferflow.revision,
                    components.interactions.catalog.revision,
                )
            )
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    # As the watch thread delivers them: N, then N+1 while N is still preparing.
    older = asyncio.create_task(switch.to(second))
    await asyncio.sleep(0.2)
    newer = asyncio.create_task(switch.to(third))
    await asyncio.gather(older, newer)
    await asyncio.sleep(0.05)
    done.set()
    await watcher

    names = ("feature store", "inferflow", "interactions")
    for service, history in zip(names, zip(*seen, strict=True), strict=True):
        assert list(history) == sorted(history), f"{service} went back: {history}"
    assert seen[-1] == (3, 3, 3)
    assert set(components.service.catalog.registry.feature_groups) == {"a", "b", "c"}
    assert not await switch.to(second)  # a late delivery of an old revision changes nothing
    assert components.service.catalog.revision == 3
