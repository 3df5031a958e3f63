"""The QDQ export's graph preparation: the same numbers, in the form onnxruntime fuses into QLinearConv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from kontinual.trainer import export


def qat_graph(per_channel: bool) -> onnx.ModelProto:
    """Two QAT conv + SiLU blocks as torch exports YOLOv5 with SparseML QAT (after FoldConvDivBn): float weights
    behind QuantizeLinear/DequantizeLinear, int8 activations, one int8 zero initializer shared by all."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0, np.int8), "zero"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["a0"])]
    channels = 3
    for i in range(2):
        weight = rng.normal(0, 0.2, (8, channels, 3, 3)).astype(np.float32)
        channels = 8
        scale = (np.abs(weight).reshape(8, -1).max(1) / 127 if per_channel else np.array(np.abs(weight).max() / 127))
        zero = f"wzero{i}" if per_channel else "zero"
        axis = {"axis": 0} if per_channel else {}
        inits += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(scale.astype(np.float32), f"ws{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.5, 8).astype(np.float32), f"b{i}"),
                  numpy_helper.from_array(np.array(0.05, np.float32), f"ys{i}")]
        if per_channel:
            inits.append(numpy_helper.from_array(np.zeros(8, np.int8), zero))
        nodes += [helper.make_node("QuantizeLinear", [f"w{i}", f"ws{i}", zero], [f"wq{i}"], **axis),
                  helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", zero], [f"wd{i}"], **axis),
                  helper.make_node("Conv", [f"a{i}", f"wd{i}", f"b{i}"], [f"y{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("QuantizeLinear", [f"y{i}", f"ys{i}", "zero"], [f"yq{i}"]),
                  helper.make_node("DequantizeLinear", [f"yq{i}", f"ys{i}", "zero"], [f"yd{i}"]),
                  helper.make_node("Sigmoid", [f"yd{i}"], [f"s{i}"]),
                  helper.make_node("Mul", [f"yd{i}", f"s{i}"], [f"m{i}"]),
                  helper.make_node("QuantizeLinear", [f"m{i}", f"ys{i}", "zero"], [f"mq{i}"]),
                  helper.make_node("DequantizeLinear", [f"mq{i}", f"ys{i}", "zero"], [f"a{i + 1}"])]
    graph = helper.make_graph(nodes, "qat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("a2", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def run(model: onnx.ModelProto, x: np.ndarray, optimized: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """onnxruntime's output and the ops of the graph it actually runs: with its own fusions when `optimized`
    (where it writes that graph) is given, else every node as written (the reference semantics of ONNX)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if optimized is None:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        options.optimized_model_filepath = str(optimized)
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    output = session.run(None, {"x": x})[0]
    return output, [n.op_type for n in onnx.load(str(optimized)).graph.node] if optimized else []


@pytest.mark.parametrize("per_channel", [False, True])
def test_prepared_graph_computes_the_same_and_fuses_into_qlinearconv(per_channel: bool, tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    expected, _ = run(qat_graph(per_channel), x)
    _, ops_before = run(qat_graph(per_channel), x, tmp_path / "before.onnx")
    assert "QLinearConv" not in ops_before  # int8 activations: onnxruntime keeps float convs

    prepared = qat_graph(per_channel)
    export._quantize_weights(prepared)  # noqa: SLF001 - the steps of _clean_qdq after SparseML's passes
    export._activations_to_uint8(prepared)  # noqa: SLF001
    onnx.checker.check_model(prepared)
    inits = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
    assert inits["wq0"].dtype == inits["wq1"].dtype == np.int8  # the weights stored quantized
    activations = [n for n in prepared.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                   and not n.input[0].startswith("wq")]
    assert {inits[n.input[2]].dtype for n in activations} == {np.dtype(np.uint8)}
    # Exactly the same model, node by node (uint8 with zero point + 128 holds the same values).
    same, _ = run(prepared, x)
    np.testing.assert_array_equal(same, expected)
    _, ops_after = run(prepared, x, tmp_path / "after.onnx")
    assert ops_after.count("QLinearConv") == 2, ops_after
