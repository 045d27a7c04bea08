"""Log lines that repeat (a system away, a client retrying every few milliseconds, a caller
sending bad requests) at most so many per interval, with how many were held back, so a log
stays readable in an outage and a flood cannot fill a disk. One limiter, `RateLimiter`,
behind every such log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WARNING_INTERVAL = 10.0  # seconds between repeated warnings of the same kind
MAX_CAUSES = 64  # kinds one RateLimitedWarnings tells apart; beyond, they share one


class RateLimiter:
    """At most `limit` events per window of `window` seconds; counts what it refuses and
    hands that count to the first event it allows afterwards."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._window_start = clock()
        self._allowed = 0
        self._suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """(whether this event may go out, how many were suppressed before it)."""
        now = self._clock()
        if now - self._window_start >= self.window:
            self._window_start = now
            self._allowed = 0
        if self._allowed >= self.limit:
            self._suppressed += 1
            return False, 0
        self._allowed += 1
        suppressed, self._suppressed = self._suppressed, 0
        return True, suppressed


class RateLimitedWarning:
    """Log lines of one kind at most once per interval, with the number held back.

    `log(level, message, *args)` also lets it stand in for a logging.Logger (librdkafka's
    `logger` setting), so a client that repeats an error every few milliseconds logs it
    once per interval.
    """

    def __init__(self, logger: logging.Logger, interval: float = WARNING_INTERVAL) -> None:
        self._logger = logger
        self._limiter = RateLimiter(1, interval)

    def warn(self, message: str, *args: object, exc_info: bool = False) -> None:
        self.log(logging.WARNING, message, *args, exc_info=exc_info)

    def log(self, level: int, message: str, *args: object, exc_info: bool = False) -> None:
        allowed, suppressed = self._limiter.allow()
        if not allowed:
            return
        if suppressed:
            message += f" ({suppressed} similar lines suppressed)"
        self._logger.log(level, message, *args, exc_info=exc_info)


class RateLimitedWarnings:
    """One RateLimitedWarning per cause (a short, bounded key such as an error's class and
    operation), so an outage of one system does not silence another's first line."""

    def __init__(self, logger: logging.Logger, interval: float = WARNING_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._by_cause: dict[str, RateLimitedWarning] = {}

    def log(
        self, cause: str, level: int, message: str, *args: object, exc_info: bool = False
    ) -> None:
        warning = self._by_cause.get(cause)
        if warning is None:
            if len(self._by_cause) >= MAX_CAUSES:
                cause = "(other)"
            warning = self._by_cause.setdefault(
                cause, RateLimitedWarning(self._logger, self._interval)
            )
        warning.log(level, message, *args, exc_info=exc_info)
