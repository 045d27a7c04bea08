"""ONNX Runtime in process: one session per model version, warmed when it is loaded."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import InvalidArgumentError, UnavailableError

try:
    import onnxruntime as ort
except ModuleNotFoundError as missing:  # an extra: say which, not a traceback
    raise UnavailableError(
        "ONNX models need onnxruntime: pip install 'inferstack[onnx]'"
    ) from missing

_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
}


class OnnxModelError(InvalidArgumentError):
    """A model file that cannot serve as a model step (not ONNX, wrong input shape...)."""


class OnnxRuntime:
    """Scores a (rows, width) matrix with one ONNX file's single 2-D float input."""

    def __init__(
        self, name: str, model: bytes, *, threads: int = 1, input_name: str | None = None
    ) -> None:
        self.name = name
        options = ort.SessionOptions()
        # Requests already run concurrently across workers; one model call should not
        # fan out over every core and fight them.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise OnnxModelError(f"model '{name}': not a loadable ONNX file: {exc}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        if input_name is None and len(inputs) != 1:
            raise OnnxModelError(
                f"model '{name}' has inputs {', '.join(inputs)}; set input_name to one of them"
            )
        chosen = inputs.get(input_name) if input_name else next(iter(inputs.values()))
        if chosen is None:
            raise OnnxModelError(
                f"model '{name}' has no input '{input_name}' (inputs: {', '.join(inputs)})"
            )
        if chosen.type not in _DTYPES or len(chosen.shape) != 2:
            raise OnnxModelError(
                f"model '{name}': input '{chosen.name}' is {chosen.type} of shape {chosen.shape}; "
                "inferflow feeds one 2-D float or double matrix"
            )
        self.input_name: str = chosen.name
        self.input_dtype: np.dtype[Any] = _DTYPES[chosen.type]
        width = chosen.shape[1]
        self.input_width: int | None = width if isinstance(width, int) else None
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    @property
    def description(self) -> str:
        return f"onnx {self.name} ({self.input_name}: {self.input_width or '?'} columns)"

    def warm(self) -> None:
        """One call at load time, so the first request does not pay for lazy set-up."""
        self._run(np.zeros((1, self.input_width or 1), dtype=self.input_dtype))

    def for_request(self) -> OnnxRuntime:
        return self

    async def infer(self, matrix: npt.NDArray[np.floating[Any]]) -> dict[str, npt.NDArray[Any]]:
        # Small models run in microseconds: a thread hop would cost more than it frees.
        return self._run(matrix)

    def _run(self, matrix: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        if matrix.dtype != self.input_dtype or not matrix.flags.c_contiguous:
            matrix = np.ascontiguousarray(matrix, dtype=self.input_dtype)
        try:
            outputs = self.session.run(self.output_names, {self.input_name: matrix})
        except Exception as exc:
            raise InvalidArgumentError(f"model '{self.name}' refused the matrix: {exc}") from exc
        return dict(zip(self.output_names, outputs, strict=True))

    async def close(self) -> None:
        pass  # the session is freed with the object
