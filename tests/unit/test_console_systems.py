"""The console's Health page names every system it probes, never with a password in it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from inferstack.console.systems import SystemProbe
from inferstack.server.settings import load_settings


class _HotTier:
    async def scheduled(self, user: bytes) -> None:
        return None


async def test_the_redis_hot_tier_is_shown_without_its_password() -> None:
    # It used to show interactions.hot.address as written, password and all.
    settings = load_settings(
        None,
        {"interactions": {"hot": {"type": "redis", "address": "redis://ops:s3cret@cache:6379/2"}}},
    )
    components: Any = SimpleNamespace(interactions=SimpleNamespace(hot=_HotTier()))
    state = await SystemProbe(components, settings)._hot_tier()
    assert state.role == "interactions hot tier" and state.state == "up"
    assert "s3cret" not in state.where and "cache:6379" in state.where
