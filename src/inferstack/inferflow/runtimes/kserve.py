"""Remote models over the Open Inference Protocol (KServe v2) gRPC API.

`KServeRuntime` scores a matrix on any compliant server (MLServer, Triton, KServe model
servers) with `inference.GRPCInferenceService/ModelInfer`. The matrix travels as one tensor
in `raw_input_contents` (little-endian bytes: no protobuf field per value, so encoding costs
one copy); outputs are decoded from `raw_output_contents` when the server sends them, else
from the typed contents fields. `build_request` and `decode_outputs` are pure functions.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt

from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from inferstack.proto.kserve.v2 import grpc_service_pb2 as pb
from inferstack.proto.kserve.v2 import grpc_service_pb2_grpc as pb_grpc

ChannelOptions = Sequence[tuple[str, Any]]

DEFAULT_CHANNEL_OPTIONS: ChannelOptions = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # gRPC's reconnect backoff grows to 120 s by default: a restarted model server would be
    # refused for minutes. Retry the connection within at most 2 s instead.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

# Protocol datatype -> numpy dtype of its raw (little-endian) encoding.
RAW_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "|b1"),
        ("UINT8", "|u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "|i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    )
}

# Protocol datatype -> the InferTensorContents field that carries it when not sent raw.
# Narrow integers travel widened; FP16 has no typed field.
TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

FLOAT_DATATYPES = ("FP16", "FP32", "FP64")

_LENGTH_PREFIX = struct.Struct("<I")


class MalformedResponseError(Exception):
    """A response that breaks the protocol; the runtime reports it as UNAVAILABLE."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model as its metadata declares it (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def build_request(
    matrix: npt.NDArray[Any],
    model_name: str,
    model_version: str = "",
    input_name: str = "input-0",
    output_names: Iterable[str] = (),
    datatype: str | None = None,
) -> pb.ModelInferRequest:
    """One ModelInferRequest carrying `matrix` (2-D, floating) as one raw tensor.

    The tensor is `datatype` (FP16, FP32 or FP64) if given, else FP64 for a float64 matrix
    and FP32 for any other floating dtype. `output_names` selects outputs (none: the
    model's defaults).
    """
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
        shape = getattr(matrix, "shape", None)
        raise InvalidArgumentError(f"model {model_name}: the matrix must be 2-D, got shape {shape}")
    if not np.issubdtype(matrix.dtype, np.floating):
        raise InvalidArgumentError(
            f"model {model_name}: the matrix must hold floating-point values, got {matrix.dtype}"
        )
    if matrix.shape[0] == 0:
        raise InvalidArgumentError(f"model {model_name}: the matrix has no rows")
    if datatype is None:
        datatype = "FP64" if matrix.dtype == np.float64 else "FP32"
    elif datatype not in FLOAT_DATATYPES:
        raise InvalidArgumentError(f"model {model_name}: cannot send a matrix as {datatype}")
    raw = np.ascontiguousarray(matrix, dtype=RAW_DTYPES[datatype]).tobytes()
    return pb.ModelInferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=input_name, datatype=datatype, shape=list(matrix.shape)
            )
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in output_names],
        raw_input_contents=[raw],
    )


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, npt.NDArray[Any]]:
    """Every output tensor of a response by name, shaped as the response says.

    Numeric and BOOL outputs decoded from raw contents are read-only views of the response
    bytes; BYTES outputs are object arrays of `bytes`. Raises MalformedResponseError.
    """
    raws = list(response.raw_output_contents)
    if raws and len(raws) != len(response.outputs):
        raise MalformedResponseError(
            f"{len(raws)} raw_output_contents for {len(response.outputs)} outputs"
        )
    decoded: dict[str, npt.NDArray[Any]] = {}
    for index, output in enumerate(response.outputs):
        try:
            decoded[output.name] = decode_tensor(
                output.datatype,
                tuple(output.shape),
                raws[index] if raws else None,
                output.contents,
            )
        except MalformedResponseError as exc:
            raise MalformedResponseError(f"output {output.name!r}: {exc}") from None
    return decoded


def decode_tensor(
    datatype: str,
    shape: tuple[int, ...],
    raw: bytes | None,
    contents: pb.InferTensorContents,
) -> npt.NDArray[Any]:
    """One tensor from its raw bytes, or from its typed contents when `raw` is None."""
    if any(size < 0 for size in shape):
        raise MalformedResponseError(f"negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _split_bytes(raw, count) if raw is not None else list(contents.bytes_contents)
        array = np.empty(len(items), dtype=object)
        array[:] = items
    elif datatype not in RAW_DTYPES:
        raise MalformedResponseError(f"unsupported datatype {datatype!r}")
    elif raw is not None:
        dtype = RAW_DTYPES[datatype]
        if len(raw) != count * dtype.itemsize:
            raise MalformedResponseError(
                f"{len(raw)} raw bytes for {count} {datatype} values of shape {list(shape)}"
            )
        array = np.frombuffer(raw, dtype=dtype)
    elif datatype in TYPED_FIELDS:
        values = getattr(contents, TYPED_FIELDS[datatype])
        array = np.asarray(values, dtype=RAW_DTYPES[datatype].newbyteorder("="))
    else:
        raise MalformedResponseError(f"{datatype} values can only be sent raw")
    if array.size != count:
        raise MalformedResponseError(f"{array.size} values for shape {list(shape)}")
    return array.reshape(shape)


def _split_bytes(raw: bytes, count: int) -> list[bytes]:
    """Raw BYTES: each element is a little-endian u32 length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH_PREFIX.size > len(raw):
            raise MalformedResponseError("truncated BYTES length prefix")
        (size,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += _LENGTH_PREFIX.size
        if offset + size > len(raw):
            raise MalformedResponseError("truncated BYTES element")
        items.append(raw[offset : offset + size])
        offset += size
    if len(items) != count:
        raise MalformedResponseError(f"{len(items)} BYTES elements, expected {count}")
    return items


def declared_width(spec: TensorSpec | None) -> int | None:
    """The column count a declared [rows, width] input fixes, if it fixes one."""
    if spec is None or len(spec.shape) != 2 or spec.shape[1] < 0:
        return None
    return spec.shape[1]


def metadata_from_proto(response: pb.ModelMetadataResponse) -> ModelMetadata:
    def specs(tensors: Iterable[Any]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors)

    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=specs(response.inputs),
        outputs=specs(response.outputs),
    )


class KServeRuntime:
    """A model on an Open Inference Protocol server, called over gRPC.

    One channel per runtime, created on first use on the running event loop (grpc.aio
    channels belong to one loop) and closed by `close()`. Each call has `timeout` seconds.
    Errors name the model and the address: an unreachable server or a deadline ->
    UnavailableError, an unknown model or version -> NotFoundError, an input the server
    refuses -> InvalidArgumentError with the server's message.

    `check_ready()` (for start-up) also reads the model's metadata: when it declares the
    input, later calls send the declared datatype and refuse a matrix of another width
    before it leaves the process, since servers answer that with errors of their own kinds.
    """

    def __init__(
        self,
        address: str,
        model_name: str,
        model_version: str = "",
        *,
        input_name: str = "input-0",
        output_names: Sequence[str] = (),
        timeout: float = 1.0,
        channel_options: ChannelOptions = (),
    ) -> None:
        if not address or not model_name:
            raise InvalidArgumentError("a KServe runtime needs an address and a model name")
        if not timeout > 0:
            raise InvalidArgumentError(f"model {model_name}: timeout must be > 0, got {timeout}")
        self.address = address
        self.model_name = model_name
        self.model_version = model_version
        self.input_name = input_name
        self.output_names = tuple(output_names)
        self.timeout = timeout
        # Caller's options override the defaults of the same name.
        options = {**dict(DEFAULT_CHANNEL_OPTIONS), **dict(channel_options)}
        self.channel_options = list(options.items())
        self.declared_input: TensorSpec | None = None  # set by check_ready()
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._closed = False

    @property
    def description(self) -> str:
        version = f"/{self.model_version}" if self.model_version else ""
        return f"kserve {self.model_name}{version}@{self.address}"

    def _connected_stub(self) -> Any:
        if self._closed:
            raise UnavailableError(f"{self.description}: the runtime is closed")
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=self.channel_options)
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    def for_request(self) -> KServeRuntime:
        return self

    async def infer(self, matrix: npt.NDArray[np.floating[Any]]) -> dict[str, npt.NDArray[Any]]:
        declared = self.declared_input
        width = declared_width(declared)
        if width is not None and matrix.ndim == 2 and matrix.shape[1] != width:
            raise InvalidArgumentError(
                f"{self.description}: the matrix has {matrix.shape[1]} columns, "
                f"the model's input {self.input_name!r} takes {width}"
            )
        request = build_request(
            matrix,
            self.model_name,
            self.model_version,
            self.input_name,
            self.output_names,
            declared.datatype if declared is not None else None,
        )
        try:
            response = await self._connected_stub().ModelInfer(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            self._raise_for(exc, "ModelInfer")
        try:
            outputs = decode_outputs(response)
        except MalformedResponseError as exc:
            raise UnavailableError(f"{self.description}: malformed response: {exc}") from None
        rows = matrix.shape[0]
        for name, values in outputs.items():
            if values.ndim == 0 or values.shape[0] != rows:
                raise UnavailableError(
                    f"{self.description}: output {name!r} has shape {list(values.shape)} "
                    f"for {rows} input rows"
                )
        return outputs

    async def server_ready(self) -> bool:
        """ServerReady: False (not an error) when the server answers that it is not ready."""
        try:
            response = await self._connected_stub().ServerReady(
                pb.ServerReadyRequest(), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            self._raise_for(exc, "ServerReady")
        return bool(response.ready)

    async def model_ready(self) -> bool:
        """ModelReady for this model and version."""
        request = pb.ModelReadyRequest(name=self.model_name, version=self.model_version)
        try:
            response = await self._connected_stub().ModelReady(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            self._raise_for(exc, "ModelReady")
        return bool(response.ready)

    async def model_metadata(self) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=self.model_name, version=self.model_version)
        try:
            response = await self._connected_stub().ModelMetadata(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            self._raise_for(exc, "ModelMetadata")
        return metadata_from_proto(response)

    async def check_ready(self) -> ModelMetadata:
        """For start-up: the model's metadata if it is ready, else an error naming it.

        Metadata first: servers answer it NOT_FOUND for an unknown model, while some
        (MLServer) fail ModelReady with UNKNOWN. A declared input this runtime cannot feed
        (another name, a non-floating datatype) is an InvalidArgumentError.
        """
        metadata = await self.model_metadata()
        if not await self.model_ready():
            raise UnavailableError(f"{self.description}: the model is not ready")
        self.declared_input = self._usable_input(metadata)
        return metadata

    def _usable_input(self, metadata: ModelMetadata) -> TensorSpec | None:
        if not metadata.inputs:
            return None  # nothing declared: send as the matrix is
        spec = next((t for t in metadata.inputs if t.name == self.input_name), None)
        if spec is None:
            names = ", ".join(repr(t.name) for t in metadata.inputs)
            raise InvalidArgumentError(
                f"{self.description}: the model has no input {self.input_name!r} "
                f"(it declares {names})"
            )
        if spec.datatype not in FLOAT_DATATYPES:
            raise InvalidArgumentError(
                f"{self.description}: input {spec.name!r} is {spec.datatype}; "
                f"a feature matrix can be sent as {', '.join(FLOAT_DATATYPES)}"
            )
        return spec

    async def close(self) -> None:
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    def _raise_for(self, exc: grpc.aio.AioRpcError, call: str) -> NoReturn:
        raise self._error_for(exc.code(), exc.details() or "", call) from None

    def _error_for(self, code: grpc.StatusCode, details: str, call: str) -> InferstackError:
        where = f"{self.description}: {call}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return UnavailableError(f"{where}: no answer within {self.timeout:g}s")
        if code == grpc.StatusCode.UNAVAILABLE:
            return UnavailableError(f"{where}: server unavailable: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFoundError(f"{where}: not found: {details}")
        if code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.OUT_OF_RANGE,
        ):
            return InvalidArgumentError(f"{where}: refused: {details}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhaustedError(f"{where}: resource exhausted: {details}")
        return UnavailableError(f"{where}: failed with {code.name}: {details}")
