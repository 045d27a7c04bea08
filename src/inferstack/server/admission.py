"""Admission control: how many calls a worker executes at once, and what happens to the rest.

Every gRPC method, JSON route and console call passes through the worker's one `Gate`, held
by its call pipeline (server/pipeline.py). At most
`max_in_flight` calls execute at once; later calls wait in order in a queue of at most
`max_queue`. A call that cannot be served in time is answered at once, never late:

- RESOURCE_EXHAUSTED when the queue is full;
- DEADLINE_EXCEEDED on arrival when its deadline (gRPC: `context.time_remaining()`) is nearer
  than the expected wait plus the method's usual execution time, and while queued as soon as
  the time left no longer covers that execution time;
- RESOURCE_EXHAUSTED when a call without a deadline has waited `max_queue_wait`.

Health checks, reflection and /metrics do not pass through the gate, so they are never shed.
Metrics are written to Prometheus by `publish()` (periodically, and whenever a call queues or
is shed), not per call: in multi-process mode every write costs microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable

from inferstack import metrics
from inferstack.core.errors import DeadlineExceededError, InferstackError, ResourceExhaustedError

DEFAULT_MAX_IN_FLIGHT = 16
DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_QUEUE_WAIT = 1.0
PUBLISH_INTERVAL = 1.0  # seconds between metric updates while nothing queues
REPLY_MARGIN = 0.002  # seconds kept for the refusal itself to reach the caller in time
SMOOTHING = 0.2  # weight of the newest execution time in the running estimates

TimeRemaining = Callable[[], float | None]


def no_deadline() -> float | None:
    return None


class Gate:
    """One worker's limit on calls executing, with a bounded, deadline-aware wait queue.

    Single event loop only (no locks): `try_enter` admits at once when a slot is free and
    nobody waits; otherwise `wait` queues or refuses. Every admitted call ends with `leave`.
    """

    def __init__(
        self,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_wait: float = DEFAULT_MAX_QUEUE_WAIT,
    ) -> None:
        if max_in_flight < 1 or max_queue < 0 or max_queue_wait <= 0:
            raise ValueError(
                f"admission needs max_in_flight >= 1, max_queue >= 0 and max_queue_wait > 0, "
                f"got {max_in_flight}, {max_queue}, {max_queue_wait}"
            )
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_queue_wait = max_queue_wait
        self.running = 0
        self.admitted = 0  # calls admitted so far (published as the per-worker counter)
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._mean = 0.0  # execution seconds, over every method
        self._finished = False  # whether any call has finished (and set _mean)
        self._means: dict[str, float] = {}  # execution seconds, per method
        self._published = 0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> bool:
        """Take a slot if one is free and nobody is waiting for one (arrivals never overtake)."""
        if self.running < self.max_in_flight and not self._waiters:
            self.running += 1
            self.admitted += 1
            return True
        return False

    async def wait(self, method: str, time_remaining: TimeRemaining = no_deadline) -> float:
        """Queue for a slot after `try_enter` failed; returns `time.perf_counter()` when
        admitted, or raises the refusal (the call holds no slot then)."""
        if len(self._waiters) >= self.max_queue:
            raise self._shed(method, "queue_full", self._busy())
        remaining = time_remaining()
        own = self._means.get(method, 0.0)
        budget = self.max_queue_wait
        deadline_bound = False
        if remaining is not None:
            expected = (len(self._waiters) + 1) * self._mean / self.max_in_flight + own
            if remaining <= expected + REPLY_MARGIN:
                raise self._shed(method, "deadline", self._late(remaining, expected))
            if remaining - own - REPLY_MARGIN < budget:
                budget = remaining - own - REPLY_MARGIN
                deadline_bound = True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(budget, self._expire, waiter)
        queued_at = time.perf_counter()
        self.publish()
        try:
            admitted = await waiter
        except asyncio.CancelledError:  # the caller went away (cancelled, or its deadline)
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._release()  # a slot was handed over just as the call was cancelled
            else:
                self._forget(waiter)
            raise
        finally:
            timer.cancel()
        now = time.perf_counter()
        metrics.QUEUE_WAIT.observe(now - queued_at)
        if not admitted:
            if deadline_bound:
                raise self._shed(method, "deadline", self._expired(now - queued_at, own))
            raise self._shed(method, "queue_timeout", self._timed_out())
        self.admitted += 1
        return now

    def leave(self, method: str, seconds: float) -> None:
        """An admitted call finished after executing `seconds`: hand its slot on."""
        # Running averages; the first call (of a method, of any) sets its estimate outright.
        mean = self._means.get(method)
        self._means[method] = seconds if mean is None else mean + SMOOTHING * (seconds - mean)
        self._mean = self._mean + SMOOTHING * (seconds - self._mean) if self._finished else seconds
        self._finished = True
        self._release()

    def publish(self) -> None:
        """Write the gauges and the per-worker call count to Prometheus."""
        metrics.IN_FLIGHT.set(self.running)
        metrics.QUEUED.set(len(self._waiters))
        if self.admitted > self._published:
            metrics.WORKER_CALLS.labels(str(os.getpid())).inc(self.admitted - self._published)
            self._published = self.admitted

    async def publish_every(self, seconds: float = PUBLISH_INTERVAL) -> None:
        """Publish until cancelled (a worker runs this for its whole life)."""
        try:
            while True:
                self.publish()
                await asyncio.sleep(seconds)
        finally:
            self.publish()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot passes straight to the next in line
                return
        self.running -= 1

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            self._forget(waiter)
            waiter.set_result(False)

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):  # already handed a slot, or expired
            self._waiters.remove(waiter)

    def _shed(self, method: str, reason: str, message: str) -> InferstackError:
        metrics.SHED.labels(method, reason).inc()
        self.publish()
        if reason == "deadline":
            return DeadlineExceededError(message)
        return ResourceExhaustedError(message)

    def _limits(self) -> str:
        return (
            f"admission.max_in_flight = {self.max_in_flight}, "
            f"admission.max_queue = {self.max_queue}"
        )

    def _busy(self) -> str:
        return (
            f"server busy: {self.running} executing and {len(self._waiters)} waiting, "
            f"the most this worker takes ({self._limits()}); retry later or elsewhere"
        )

    def _late(self, remaining: float, expected: float) -> str:
        return (
            f"cannot finish before the deadline: {remaining * 1000:.0f} ms left, about "
            f"{expected * 1000:.0f} ms expected to wait and execute behind "
            f"{len(self._waiters)} queued calls ({self._limits()})"
        )

    def _expired(self, waited: float, own: float) -> str:
        return (
            f"cannot finish before the deadline: waited {waited * 1000:.0f} ms for a slot and "
            f"about {own * 1000:.0f} ms of execution would not fit in the time left "
            f"({self._limits()})"
        )

    def _timed_out(self) -> str:
        return (
            f"server busy: no slot freed within admission.max_queue_wait = "
            f"{self.max_queue_wait:g}s ({self._limits()}); retry later or elsewhere"
        )
