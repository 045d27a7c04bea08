"""A/B splits: one model runtime that sends each call to one of several, chosen by weight.

Each call goes to exactly one endpoint, picked at random with probability weight / total.
A failed call is not retried on another endpoint: that would move traffic between the arms
of an experiment exactly when one of them misbehaves, and hide it. A weight of 0 keeps an
endpoint configured but sends it nothing (e.g. while draining it).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import InvalidArgumentError
from inferstack.inferflow.runtimes.base import ModelRuntime


class WeightedRuntime:
    """A ModelRuntime over `(runtime, weight)` pairs; `rng` makes the choices reproducible."""

    def __init__(
        self,
        endpoints: Sequence[tuple[ModelRuntime, float]],
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise InvalidArgumentError("a weighted runtime needs at least one endpoint")
        for runtime, weight in endpoints:
            if not (math.isfinite(weight) and weight >= 0):
                raise InvalidArgumentError(
                    f"weight of {runtime.description} must be a finite number >= 0, got {weight}"
                )
        total = math.fsum(weight for _, weight in endpoints)
        if total <= 0:
            raise InvalidArgumentError("a weighted runtime needs at least one weight above 0")
        self.endpoints = [(runtime, float(weight)) for runtime, weight in endpoints]
        self._total = total
        # Cumulative weights: a uniform draw in [0, total) falls into one endpoint's interval.
        self._bounds = list(itertools.accumulate(weight for _, weight in self.endpoints))
        self._rng = rng if rng is not None else random.Random()

    @property
    def description(self) -> str:
        parts = ", ".join(
            f"{runtime.description} weight {weight:g} ({weight / self._total:.1%})"
            for runtime, weight in self.endpoints
        )
        return f"weighted [{parts}]"

    def choose(self) -> ModelRuntime:
        """The endpoint for the next call."""
        draw = self._rng.random() * self._total
        index = bisect.bisect_right(self._bounds, draw)
        # bisect_right never lands on a zero-weight endpoint (its bound equals the one
        # before it); a draw rounded up to the total lands past the end: step back to the
        # last endpoint that has weight.
        while index >= len(self.endpoints) or self.endpoints[index][1] == 0:
            index -= 1
        return self.endpoints[index][0]

    def for_request(self) -> ModelRuntime:
        return self.choose().for_request()

    async def infer(self, matrix: npt.NDArray[np.floating[Any]]) -> dict[str, npt.NDArray[Any]]:
        return await self.choose().infer(matrix)

    async def close(self) -> None:
        """Close every endpoint, even if closing one of them fails (the first error is raised)."""
        results = await asyncio.gather(
            *(runtime.close() for runtime, _ in self.endpoints), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
