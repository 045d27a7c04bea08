"""Open Inference Protocol messages: the request a matrix becomes, outputs decoded from both
raw and typed contents, and responses that break the protocol."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from inferstack.core.errors import InvalidArgumentError
from inferstack.inferflow.runtimes.kserve import (
    MalformedResponseError,
    TensorSpec,
    build_request,
    declared_width,
    decode_outputs,
)
from inferstack.proto.kserve.v2 import grpc_service_pb2 as pb

Output = pb.ModelInferResponse.InferOutputTensor


def test_float64_matrix_travels_raw_as_fp64() -> None:
    matrix = np.arange(6, dtype=np.float64).reshape(2, 3)
    request = build_request(matrix, "pcvr", "2", "features", ["predict_proba"])
    assert request.model_name == "pcvr" and request.model_version == "2"
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("features", "FP64", [2, 3])
    # Raw only: no typed values in the tensor itself.
    assert not tensor.HasField("contents")
    assert request.raw_input_contents == [struct.pack("<6d", 0, 1, 2, 3, 4, 5)]
    assert [o.name for o in request.outputs] == ["predict_proba"]


def test_float32_and_non_contiguous_matrices_travel_as_fp32_row_major() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2).T  # a transposed view
    request = build_request(matrix, "m")
    assert request.inputs[0].datatype == "FP32"
    assert list(request.inputs[0].shape) == [2, 3]
    assert request.raw_input_contents[0] == struct.pack("<6f", 0, 2, 4, 1, 3, 5)
    assert not request.outputs


def test_declared_datatype_overrides_the_matrix_dtype() -> None:
    request = build_request(np.ones((1, 2), dtype=np.float32), "m", datatype="FP64")
    assert request.inputs[0].datatype == "FP64"
    assert request.raw_input_contents[0] == struct.pack("<2d", 1, 1)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.ones(3), r"model m: the matrix must be 2-D, got shape \(3,\)"),
        (np.ones((2, 2), dtype=np.int64), "model m: the matrix must hold floating-point values"),
        (np.ones((0, 4)), "model m: the matrix has no rows"),
    ],
)
def test_bad_matrices_are_refused(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        build_request(matrix, "m")


def test_raw_outputs_decode_by_datatype_and_shape() -> None:
    response = pb.ModelInferResponse(
        outputs=[
            Output(name="p", datatype="FP32", shape=[2, 1]),
            Output(name="q", datatype="FP64", shape=[2]),
            Output(name="ids", datatype="INT64", shape=[2, 2]),
            Output(name="small", datatype="INT32", shape=[1, 2]),
            Output(name="flag", datatype="BOOL", shape=[2]),
            Output(name="tag", datatype="BYTES", shape=[2]),
        ],
        raw_output_contents=[
            struct.pack("<2f", 0.25, 0.5),
            struct.pack("<2d", 0.125, 1e-300),
            struct.pack("<4q", 1, -2, 2**40, 4),
            struct.pack("<2i", -7, 7),
            bytes([1, 0]),
            struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0),
        ],
    )
    out = decode_outputs(response)
    assert out["p"].dtype == np.float32 and out["p"].tolist() == [[0.25], [0.5]]
    assert out["q"].dtype == np.float64 and out["q"].tolist() == [0.125, 1e-300]
    assert out["ids"].dtype == np.int64 and out["ids"].tolist() == [[1, -2], [2**40, 4]]
    assert out["small"].dtype == np.int32 and out["small"].tolist() == [[-7, 7]]
    assert out["flag"].dtype == np.bool_ and out["flag"].tolist() == [True, False]
    assert out["tag"].tolist() == [b"ab", b""]


def test_typed_outputs_decode_when_nothing_is_raw() -> None:
    contents = pb.InferTensorContents
    response = pb.ModelInferResponse(
        outputs=[
            Output(name="p", datatype="FP32", shape=[2], contents=contents(fp32_contents=[1, 2])),
            Output(name="q", datatype="FP64", shape=[1, 1], contents=contents(fp64_contents=[3])),
            Output(name="i", datatype="INT64", shape=[2], contents=contents(int64_contents=[5, 6])),
            Output(name="j", datatype="INT32", shape=[2], contents=contents(int_contents=[-1, 1])),
            Output(
                name="b", datatype="BOOL", shape=[2], contents=contents(bool_contents=[False, True])
            ),
            Output(name="s", datatype="BYTES", shape=[1], contents=contents(bytes_contents=[b"x"])),
        ]
    )
    out = decode_outputs(response)
    assert out["p"].dtype == np.float32 and out["p"].tolist() == [1, 2]
    assert out["q"].dtype == np.float64 and out["q"].shape == (1, 1)
    assert out["i"].dtype == np.int64 and out["i"].tolist() == [5, 6]
    assert out["j"].dtype == np.int32 and out["j"].tolist() == [-1, 1]
    assert out["b"].tolist() == [False, True]
    assert out["s"].tolist() == [b"x"]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            pb.ModelInferResponse(
                outputs=[Output(name="p", datatype="FP32", shape=[2])],
                raw_output_contents=[b"\0" * 4],
            ),
            "output 'p': 4 raw bytes for 2 FP32 values",
        ),
        (
            pb.ModelInferResponse(
                outputs=[Output(name="p", datatype="FP32", shape=[1])] * 2,
                raw_output_contents=[b"\0" * 4],
            ),
            "1 raw_output_contents for 2 outputs",
        ),
        (
            pb.ModelInferResponse(
                outputs=[
                    Output(
                        name="p",
                        datatype="FP32",
                        shape=[3],
                        contents=pb.InferTensorContents(fp32_contents=[1]),
                    )
                ]
            ),
            r"output 'p': 1 values for shape \[3\]",
        ),
        (
            pb.ModelInferResponse(outputs=[Output(name="h", datatype="FP16", shape=[1])]),
            "output 'h': FP16 values can only be sent raw",
        ),
        (
            pb.ModelInferResponse(
                outputs=[Output(name="x", datatype="COMPLEX", shape=[1])],
                raw_output_contents=[b"\0"],
            ),
            "output 'x': unsupported datatype 'COMPLEX'",
        ),
        (
            pb.ModelInferResponse(
                outputs=[Output(name="s", datatype="BYTES", shape=[1])],
                raw_output_contents=[struct.pack("<I", 5) + b"ab"],
            ),
            "output 's': truncated BYTES element",
        ),
    ],
)
def test_malformed_responses_name_the_output(response: pb.ModelInferResponse, message: str) -> None:
    with pytest.raises(MalformedResponseError, match=message):
        decode_outputs(response)


def test_declared_width_only_for_a_fixed_second_dimension() -> None:
    assert declared_width(TensorSpec("x", "FP32", (-1, 12))) == 12
    assert declared_width(TensorSpec("x", "FP32", (-1, -1))) is None
    assert declared_width(TensorSpec("x", "FP32", (-1,))) is None
    assert declared_width(None) is None
