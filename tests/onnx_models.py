"""Tiny ONNX models built in the tests themselves (no files, no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def linear_onnx(weights: np.ndarray, input_name: str = "x") -> bytes:
    """sigmoid(x @ w): one float input [N, len(w)], one output "p" [N, 1]."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [len(weights), 1], weights.astype(np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["p"]),
        ],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", len(weights)])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
