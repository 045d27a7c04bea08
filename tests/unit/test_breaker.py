"""The circuit breaker's state machine, driven by a fake clock (pure logic, no sleeping)."""

from __future__ import annotations

import pytest

from inferstack.featurestore.cache.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, failures: int = 3, cooldown: float = 1.0) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=failures, cooldown=cooldown, clock=clock)


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property: mypy would otherwise keep the first comparison's narrowing.
    return breaker.state


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


def test_starts_closed_and_allows_calls(clock: FakeClock) -> None:
    breaker = make(clock)
    assert state(breaker) is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(100))


def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    breaker = make(clock, failures=3)
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.times_opened == 1
    assert not breaker.allow()


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = make(clock, failures=3)
    fail(breaker, 2)
    breaker.record_success()
    fail(breaker, 2)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 2


def test_refuses_calls_for_the_whole_cooldown(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=1.0)
    fail(breaker, 1)
    clock.advance(0.999)
    assert not breaker.allow()
    assert state(breaker) is BreakerState.OPEN


def test_after_cooldown_lets_exactly_one_probe_through(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=1.0)
    fail(breaker, 1)
    clock.advance(1.0)
    assert breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN
    # While the probe is in flight everybody else still bypasses the dependency.
    assert not breaker.allow()
    assert not breaker.allow()


def test_successful_probe_closes(clock: FakeClock) -> None:
    breaker = make(clock, failures=1)
    fail(breaker, 1)
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow() for _ in range(10))


def test_failed_probe_reopens_for_a_new_cooldown(clock: FakeClock) -> None:
    breaker = make(clock, failures=5, cooldown=2.0)
    fail(breaker, 5)
    clock.advance(2.0)
    assert breaker.allow()
    breaker.record_failure()  # a single failed probe is enough, not another 5
    assert state(breaker) is BreakerState.OPEN
    assert breaker.times_opened == 2
    clock.advance(1.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()


def test_probe_that_never_reports_back_is_replaced_after_cooldown(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=1.0)
    fail(breaker, 1)
    clock.advance(1.0)
    assert breaker.allow()  # this probe's caller gets cancelled and records nothing
    clock.advance(0.5)
    assert not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN


def test_late_results_while_open_change_nothing(clock: FakeClock) -> None:
    breaker = make(clock, failures=2, cooldown=1.0)
    fail(breaker, 2)
    clock.advance(0.8)
    # Calls that started before the breaker opened report back late.
    breaker.record_success()
    assert state(breaker) is BreakerState.OPEN
    breaker.record_failure()
    assert breaker.times_opened == 1
    clock.advance(0.2)  # the cool-down was not extended by the late failure
    assert breaker.allow()


def test_recovers_after_repeated_outages(clock: FakeClock) -> None:
    breaker = make(clock, failures=2, cooldown=1.0)
    for outage in range(1, 4):
        fail(breaker, 2)
        assert state(breaker) is BreakerState.OPEN
        assert breaker.times_opened == outage
        clock.advance(1.0)
        assert breaker.allow()
        breaker.record_success()
        assert state(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(("failures", "cooldown"), [(0, 1.0), (-1, 1.0), (3, -0.5)])
def test_rejects_nonsense_settings(failures: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=failures, cooldown=cooldown)
