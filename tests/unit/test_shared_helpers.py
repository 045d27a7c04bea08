"""Helpers every part shares: Redis addresses as messages may show them, one-line messages."""

from __future__ import annotations

import pytest

from inferstack.core.text import one_line
from inferstack.kv.redis import redacted, redis_url


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("rediss://user:s3cret@cache.example:6380", "rediss://***@cache.example:6380"),
        ("user:s3cret@127.0.0.1:6379", "***@127.0.0.1:6379"),
    ],
)
def test_redis_addresses_are_shown_without_their_password(address: str, shown: str) -> None:
    assert redacted(address) == shown


def test_a_host_and_port_is_a_redis_url() -> None:
    assert redis_url("127.0.0.1:6379") == "redis://127.0.0.1:6379"
    assert redis_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


def test_one_line_of_an_exception() -> None:
    assert one_line(ValueError("first\nsecond")) == "first | second"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(ValueError("x" * 1000), 500) == "x" * 497 + "..."
