"""Log lines that repeat (a system away, a client retrying every few milliseconds) at most
once per interval each, with how many were held back, so a log stays readable in an outage."""

from __future__ import annotations

import logging
import math
import time

WARNING_INTERVAL = 10.0  # seconds between repeated warnings of the same kind
MAX_CAUSES = 64  # kinds one RateLimitedWarnings tells apart; beyond, they share one


class RateLimitedWarning:
    """Log lines of one kind at most once per interval, with the number held back.

    `log(level, message, *args)` also lets it stand in for a logging.Logger (librdkafka's
    `logger` setting), so a client that repeats an error every few milliseconds logs it
    once per interval.
    """

    def __init__(self, logger: logging.Logger, interval: float = WARNING_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._last = -math.inf
        self._suppressed = 0

    def warn(self, message: str, *args: object, exc_info: bool = False) -> None:
        self.log(logging.WARNING, message, *args, exc_info=exc_info)

    def log(self, level: int, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar lines suppressed)"
        self._last, self._suppressed = now, 0
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
