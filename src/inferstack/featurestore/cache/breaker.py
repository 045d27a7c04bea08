"""A circuit breaker: stop calling a dependency that keeps failing, try it again later.

    CLOSED     calls go through; `failure_threshold` consecutive failures open the breaker.
    OPEN       calls are refused without touching the dependency until `cooldown` has passed.
    HALF_OPEN  one probe call is let through; its success closes the breaker, its failure
               opens it again for another cool-down.

Pure logic over an injectable clock, so the state machine is tested without sleeping. The
breaker is used from one event loop, so it needs no locking.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

Clock = Callable[[], float]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 1.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.consecutive_failures = 0
        self.times_opened = 0  # for tests and metrics: how often the dependency was cut off
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._since = clock()  # when OPEN: opened at; when HALF_OPEN: probe granted at

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """May a call go to the dependency now? A True in OPEN/HALF_OPEN is the probe."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._clock() - self._since < self.cooldown:
            return False
        # Cool-down over. In HALF_OPEN this means the last probe never reported back (its
        # caller was cancelled): without this the breaker would stay half-open forever.
        self._state = BreakerState.HALF_OPEN
        self._since = self._clock()
        return True

    def record_success(self) -> None:
        if self._state is BreakerState.OPEN:
            return  # a call that started before the breaker opened proves little
        self._state = BreakerState.CLOSED
        self.consecutive_failures = 0

    def record_failure(self) -> None:
        if self._state is BreakerState.OPEN:
            return  # late failures of calls started earlier must not extend the cool-down
        self.consecutive_failures += 1
        if (
            self._state is BreakerState.HALF_OPEN
            or self.consecutive_failures >= self.failure_threshold
        ):
            self._open()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._since = self._clock()
        self.times_opened += 1
