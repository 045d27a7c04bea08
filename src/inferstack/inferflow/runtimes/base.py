"""The interface every model runtime implements; the executor owns batching and deadlines."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class ModelRuntime(Protocol):
    """One loaded model version that scores a 2-D matrix (rows = candidates).

    `infer` receives at most the model's max rows per call (the executor splits larger
    batches and runs the parts concurrently) and returns every output tensor by name, each
    with one row per input row. A model that cannot be reached or fails raises
    `inferstack.core.errors.UnavailableError` (or `InvalidArgumentError` for a matrix the
    model refuses) with a message naming the model and the endpoint.
    """

    @property
    def description(self) -> str:
        """For errors and `models show`: e.g. "onnx pctr.onnx" or "kserve pcvr@127.0.0.1:8081"."""
        ...

    def for_request(self) -> ModelRuntime:
        """The runtime that scores every part of one request: itself, or the arm an A/B split
        picks for this request, so one response never mixes arms."""
        ...

    async def infer(self, matrix: npt.NDArray[np.floating[Any]]) -> dict[str, npt.NDArray[Any]]: ...

    async def close(self) -> None: ...
