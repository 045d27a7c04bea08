"""Admission control as pure logic on one event loop: slots, the bounded queue, deadlines.

The real server's behaviour under load is in tests/integration/test_overload.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from inferstack.core.errors import DeadlineExceededError, DefinitionError, ResourceExhaustedError
from inferstack.server.admission import Gate
from inferstack.server.settings import load_settings


def shed_count(method: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("inferstack_shed_total", {"method": method, "reason": reason})
    return value or 0.0


def deadline_in(seconds: float | None) -> Callable[[], float | None]:
    return lambda: seconds


async def test_calls_beyond_the_limit_wait_and_get_slots_in_arrival_order() -> None:
    gate = Gate(max_in_flight=2, max_queue=4, max_queue_wait=30)
    assert gate.try_enter() and gate.try_enter()
    assert not gate.try_enter()
    order: list[str] = []

    async def queued(name: str) -> None:
        await gate.wait("M")
        order.append(name)

    first = asyncio.create_task(queued("first"))
    second = asyncio.create_task(queued("second"))
    await asyncio.sleep(0)
    assert gate.queued == 2 and gate.running == 2
    assert not gate.try_enter()  # a slot freed while others wait goes to them, not to arrivals
    gate.leave("M", 0.001)
    await first
    assert order == ["first"] and gate.running == 2 and gate.queued == 1
    gate.leave("M", 0.001)
    await second
    assert order == ["first", "second"]
    for _ in range(2):
        gate.leave("M", 0.001)
    assert gate.running == 0 and gate.try_enter()


async def test_a_full_queue_refuses_at_once_naming_the_limits() -> None:
    gate = Gate(max_in_flight=1, max_queue=1, max_queue_wait=30)
    assert gate.try_enter()
    waiting = asyncio.create_task(gate.wait("Retrieve"))
    await asyncio.sleep(0)
    before = shed_count("Retrieve", "queue_full")
    with pytest.raises(ResourceExhaustedError) as refused:
        await gate.wait("Retrieve")
    message = str(refused.value)
    assert "admission.max_in_flight = 1" in message and "admission.max_queue = 1" in message
    assert shed_count("Retrieve", "queue_full") == before + 1
    gate.leave("Retrieve", 0.01)
    await waiting
    gate.leave("Retrieve", 0.01)
    assert gate.running == 0 and gate.queued == 0


async def test_no_queue_at_all_refuses_every_call_beyond_the_limit() -> None:
    gate = Gate(max_in_flight=1, max_queue=0, max_queue_wait=30)
    assert gate.try_enter()
    with pytest.raises(ResourceExhaustedError, match=r"admission\.max_queue = 0"):
        await gate.wait("Persist")


async def test_a_deadline_shorter_than_the_expected_wait_is_refused_on_arrival() -> None:
    gate = Gate(max_in_flight=1, max_queue=8, max_queue_wait=30)
    assert gate.try_enter()
    gate.leave("Slow", 2.0)  # the gate learns that calls take about 2 s
    assert gate.try_enter()
    before = shed_count("Slow", "deadline")
    with pytest.raises(DeadlineExceededError) as refused:
        await gate.wait("Slow", deadline_in(0.5))
    assert "500 ms left" in str(refused.value) and "admission.max_in_flight = 1" in str(
        refused.value
    )
    assert shed_count("Slow", "deadline") == before + 1
    assert gate.queued == 0  # refused without ever queueing


async def test_a_queued_call_is_refused_when_its_deadline_comes_near() -> None:
    gate = Gate(max_in_flight=1, max_queue=8, max_queue_wait=30)
    assert gate.try_enter()
    with pytest.raises(DeadlineExceededError, match=r"waited \d+ ms for a slot"):
        await gate.wait("Fast", deadline_in(0.05))  # nothing learnt yet: it queues, then expires
    assert gate.queued == 0 and gate.running == 1


async def test_a_call_without_deadline_waits_at_most_max_queue_wait() -> None:
    gate = Gate(max_in_flight=1, max_queue=8, max_queue_wait=0.05)
    assert gate.try_enter()
    before = shed_count("NoDeadline", "queue_timeout")
    with pytest.raises(ResourceExhaustedError, match=r"admission\.max_queue_wait = 0\.05s"):
        await gate.wait("NoDeadline", deadline_in(None))
    assert shed_count("NoDeadline", "queue_timeout") == before + 1
    assert gate.queued == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    gate = Gate(max_in_flight=1, max_queue=8, max_queue_wait=30)
    assert gate.try_enter()
    waiter = asyncio.create_task(gate.wait("M"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.queued == 0
    gate.leave("M", 0.001)
    assert gate.running == 0


async def test_a_slot_handed_to_a_call_cancelled_meanwhile_is_passed_on() -> None:
    gate = Gate(max_in_flight=1, max_queue=8, max_queue_wait=30)
    assert gate.try_enter()
    cancelled = asyncio.create_task(gate.wait("M"))
    after = asyncio.create_task(gate.wait("M"))
    await asyncio.sleep(0)
    gate.leave("M", 0.001)  # the slot goes to `cancelled`...
    cancelled.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await after  # so the slot went on to the next in line
    assert gate.running == 1 and gate.queued == 0
    gate.leave("M", 0.001)
    assert gate.running == 0


async def test_publish_writes_the_gauges_and_this_workers_call_count() -> None:
    gate = Gate(max_in_flight=3, max_queue=8, max_queue_wait=30)
    worker = {"worker": str(os.getpid())}
    before = REGISTRY.get_sample_value("inferstack_worker_calls_total", worker) or 0.0
    assert gate.try_enter() and gate.try_enter()
    gate.publish()
    assert REGISTRY.get_sample_value("inferstack_calls_in_flight") == 2
    assert REGISTRY.get_sample_value("inferstack_calls_queued") == 0
    assert REGISTRY.get_sample_value("inferstack_worker_calls_total", worker) == before + 2
    gate.leave("M", 0.001)
    gate.leave("M", 0.001)
    gate.publish()
    assert REGISTRY.get_sample_value("inferstack_calls_in_flight") == 0


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError, match="max_in_flight >= 1"):
        Gate(max_in_flight=0)


def test_settings_default_and_override(tmp_path: Path) -> None:
    default = load_settings(None, environ={}).admission
    assert (default.max_in_flight, default.max_queue, default.max_queue_wait) == (16, 64, 1.0)
    changed = load_settings(
        None,
        environ={
            "INFERSTACK_ADMISSION__MAX_IN_FLIGHT": "4",
            "INFERSTACK_ADMISSION__MAX_QUEUE_WAIT": "250ms",
        },
    ).admission
    assert (changed.max_in_flight, changed.max_queue_wait) == (4, 0.25)
    path = tmp_path / "deploy.yaml"
    path.write_text("admission:\n  max_queue: -1\n")
    with pytest.raises(DefinitionError, match=r"deploy.yaml:2: admission.max_queue"):
        load_settings(path, environ={})
