"""ONNX export of the trained model for DeepSparse, and the checks on the exported file."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kontinual.trainer.errors import EXPORT_FAILED, TrainingError

_LOG = logging.getLogger(__name__)
OPSET = 13
COMPILE_TIMEOUT_S = 900
QUANTIZED_OPS = ("ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul")


def export_onnx(model: torch.nn.Module, path: Path, image_size: int) -> None:
    """Write `path`: input `images` [1,3,S,S] (static, as DeepSparse's YOLO pipeline wants), one output
    [1,N,5+nc] from the Detect head in export mode (boxes before NMS); QAT becomes real INT8 ops."""
    from sparseml.pytorch.utils import ModuleExporter
    from yolov5.models.yolo import Detect

    module = deepcopy(model).cpu().eval()
    for layer in module.modules():
        if isinstance(layer, Detect):
            layer.export = True
            layer.inplace = True
            layer.dynamic = False
    sample = torch.zeros(1, 3, image_size, image_size)
    try:
        # The temp folder sits beside the target: /tmp (an emptyDir in a pod) and the model claim
        # are different filesystems, and a rename cannot cross them.
        with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # yolov5's Python branches: expected
            ModuleExporter(module, tmp).export_onnx(
                sample, name="model.onnx", opset=OPSET, convert_qat=True,
                dynamo=False,  # torch >= 2.9 defaults to the dynamo exporter (fix 1)
                input_names=["images"], output_names=["output"],
            )
            _make_batch_static(Path(tmp, "model.onnx"))
            Path(tmp, "model.onnx").replace(path)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(EXPORT_FAILED, f"ONNX export failed: {type(exc).__name__}: {exc}") from exc


def _make_batch_static(path: Path) -> None:
    """SparseML always exports a dynamic batch axis; DeepSparse's YOLO pipeline wants a static shape."""
    import onnx

    graph = onnx.load(str(path))
    for value in list(graph.graph.input) + list(graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    del graph.graph.value_info[:]  # stale intermediate shapes with the symbolic batch
    onnx.save(graph, str(path))


def check_onnx(path: Path, image_size: int) -> dict[str, Any]:
    """Load in onnxruntime and run once, compile with DeepSparse; return what a person should know."""
    import onnx
    import onnxruntime

    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = _feed(session, np.zeros((1, 3, image_size, image_size), np.uint8))
        output = session.run(None, feed)[0]
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(EXPORT_FAILED, f"the exported ONNX does not run in onnxruntime: "
                            f"{type(exc).__name__}: {exc}") from exc
    input_shape = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    if input_shape != [1, 3, image_size, image_size]:
        raise TrainingError(EXPORT_FAILED, f"the exported ONNX takes input {input_shape}, "
                            f"expected [1, 3, {image_size}, {image_size}]")
    _deepsparse_compiles(path)
    ops = sorted({node.op_type for node in graph.graph.node})
    quantized = sorted(set(ops) & set(QUANTIZED_OPS))
    _LOG.info("ONNX check: onnxruntime and DeepSparse run it; input %s, output %s, %s",
              input_shape, list(output.shape), f"INT8 ops {quantized}" if quantized else "float32")
    return {"input_shape": input_shape, "output_shape": list(output.shape), "quantized_ops": quantized,
            "input_type": session.get_inputs()[0].type}


def _deepsparse_compiles(path: Path) -> None:
    """Compile with DeepSparse in a child process: on a graph it cannot handle the engine aborts."""
    code = ("import sys, deepsparse; e = deepsparse.compile_model(sys.argv[1], batch_size=1); "
            "e(e.generate_random_inputs())")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise TrainingError(EXPORT_FAILED, f"DeepSparse did not compile the exported ONNX within "
                            f"{COMPILE_TIMEOUT_S}s") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        why = next((line for line in lines if "Assertion" in line or "Error" in line), lines[-1] if lines else "")
        raise TrainingError(EXPORT_FAILED, f"DeepSparse cannot compile the exported ONNX (exit "
                            f"{done.returncode}): {why[:300]}")


def _feed(session: Any, images_uint8: np.ndarray) -> dict[str, np.ndarray]:
    """A quantized export takes uint8 0-255 (as DeepSparse's pipeline feeds it), a float one 0-1."""
    spec = session.get_inputs()[0]
    if spec.type == "tensor(uint8)":
        return {spec.name: images_uint8}
    return {spec.name: images_uint8.astype(np.float32) / 255.0}


def onnx_conv_sparsity(path: Path) -> tuple[float, dict[str, float]]:
    """Fraction of zero conv weights in the ONNX file (quantized weights: equal to their zero point)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def weight_of(name: str, zero_point: str | None) -> tuple[np.ndarray, Any] | None:
        if name in inits:
            return inits[name], inits.get(zero_point, 0) if zero_point else 0
        node = producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
            zp = inits.get(node.input[2], 0) if len(node.input) > 2 else 0
            return inits[node.input[0]], zp
        return None

    zeros = total = 0
    per_layer: dict[str, float] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            found = weight_of(node.input[1], None)
        elif node.op_type == "ConvInteger":
            found = weight_of(node.input[1], node.input[3] if len(node.input) > 3 else None)
        elif node.op_type == "QLinearConv":
            found = weight_of(node.input[3], node.input[5])
        else:
            continue
        if found is None:
            continue
        weight, zp = found
        z = int((weight == np.asarray(zp).reshape(-1, *([1] * (weight.ndim - 1)))).sum()) \
            if np.ndim(zp) else int((weight == zp).sum())
        zeros, total = zeros + z, total + weight.size
        per_layer[node.name or node.output[0]] = round(z / weight.size, 4)
    return (zeros / total if total else 0.0), per_layer
