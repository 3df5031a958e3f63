"""ONNX exports of the trained model (DeepSparse's; a quantized model's QDQ one for OpenVINO/onnxruntime), checked."""

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
# The QDQ export against model.onnx on one image: mean |difference| over mean |output|. Both are the same
# INT8 model; they differ only where an engine rounds a requantization the other way.
QDQ_TOLERANCE = 0.02


def export_onnx(model: torch.nn.Module, path: Path, image_size: int, *, convert_qat: bool = True) -> None:
    """Write `path`: input `images` [1,3,S,S] (static, as DeepSparse's YOLO pipeline wants), one output
    [1,N,5+nc] from the Detect head in export mode (boxes before NMS). `convert_qat`: QAT becomes
    real INT8 ops (ConvInteger, for DeepSparse: model.onnx); without it QAT stays QuantizeLinear/
    DequantizeLinear pairs (model.qdq.onnx: export_qdq_onnx)."""
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
                sample, name="model.onnx", opset=OPSET, convert_qat=convert_qat,
                dynamo=False,  # torch >= 2.9 defaults to the dynamo exporter (fix 1)
                input_names=["images"], output_names=["output"],
            )
            if not convert_qat:
                _clean_qdq(Path(tmp, "model.onnx"))
            _make_batch_static(Path(tmp, "model.onnx"))
            Path(tmp, "model.onnx").replace(path)
    except Exception as exc:  # noqa: BLE001
        kind = "ONNX" if convert_qat else "QDQ ONNX"
        raise TrainingError(EXPORT_FAILED, f"{kind} export failed: {type(exc).__name__}: {exc}") from exc


def export_qdq_onnx(model: torch.nn.Module, path: Path, image_size: int) -> None:
    """A quantized model's second export, for OpenVINO and onnxruntime: the same INT8 model as
    QuantizeLinear/DequantizeLinear pairs around float Conv, which those engines fuse into their own
    INT8 kernels (the ConvInteger of model.onnx they run as slow generic ops). Input float 0-1."""
    export_onnx(model, path, image_size, convert_qat=False)


def _clean_qdq(path: Path) -> None:
    """The QDQ-keeping first passes of SparseML's own DeepSparse conversion (ONNXToDeepsparse), then the
    weights stored quantized and the activations as uint8 (_activations_to_uint8).

    torch exports a QAT conv+batch-norm as Conv -> Div -> BatchNormalization before the output's
    QuantizeLinear, which keeps an engine from fusing DequantizeLinear -> Conv -> QuantizeLinear into an
    INT8 convolution; FoldConvDivBn folds them into the conv's bias (exactly: the Div undoes the scale
    torch folded into the weights). Skipped on purpose: InitializersToUint8 (it would turn the int8
    weights into asymmetric uint8, slower in onnxruntime) and every pass that makes integer ops.
    """
    import onnx
    from sparseml.exporters import transforms

    graph = onnx.load(str(path))
    for transform in (transforms.ConstantsToInitializers(), transforms.FoldIdentityInitializers(),
                      transforms.FlattenQParams(), transforms.FoldConvDivBn(), transforms.DeleteRepeatedQdq(),
                      transforms.PropagateDequantThroughSplit()):
        graph = transform.apply(graph)
    _quantize_weights(graph)
    _activations_to_uint8(graph)
    used = {name for node in graph.graph.node for name in node.input}
    for init in [i for i in graph.graph.initializer if i.name not in used]:
        graph.graph.initializer.remove(init)
    onnx.save(graph, str(path))


def _quantize_weights(graph: Any) -> None:
    """QuantizeLinear(float weight initializer) -> int8 initializer (ONNX's rounding: half to even), as
    onnxruntime's own quantizer writes QDQ models: a quarter of the bytes, nothing left to fold at load."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.graph.initializer}
    for node in list(graph.graph.node):
        if node.op_type != "QuantizeLinear" or not all(name in inits for name in node.input):
            continue
        weight, scale = (numpy_helper.to_array(inits[name]) for name in node.input[:2])
        zero_point = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.uint8(0)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel along `axis`
            shape = [1] * weight.ndim
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        info = np.iinfo(zero_point.dtype)
        quantized = np.clip(np.rint(weight / scale) + zero_point.astype(np.int32), info.min, info.max)
        name = node.output[0]
        graph.graph.initializer.append(numpy_helper.from_array(quantized.astype(zero_point.dtype), name=name))
        graph.graph.node.remove(node)


def _make_batch_static(path: Path) -> None:
    """SparseML always exports a dynamic batch axis; DeepSparse's YOLO pipeline wants a static shape."""
    import onnx

    graph = onnx.load(str(path))
    for value in list(graph.graph.input) + list(graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    del graph.graph.value_info[:]  # stale intermediate shapes with the symbolic batch
    onnx.save(graph, str(path))


def _activations_to_uint8(graph: Any) -> None:
    """Activations quantized to uint8 (zero point + 128: the same values) instead of SparseML's int8:
    onnxruntime's x86 INT8 kernels take uint8 activations and int8 weights (U8S8); OpenVINO takes either.
    Each activation QuantizeLinear and the DequantizeLinear nodes reading it get a uint8 zero point of
    their own (torch shares one int8 zero initializer between activations and weights)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    converted: dict[str, str] = {}
    for node in graph.graph.node:
        if (node.op_type != "QuantizeLinear" or node.input[0] in inits or len(node.input) < 3
                or node.input[2] not in inits):
            continue
        value = numpy_helper.to_array(inits[node.input[2]])
        if value.dtype != np.int8:
            continue
        if node.input[2] not in converted:
            name = converted[node.input[2]] = f"{node.input[2]}_uint8"
            graph.graph.initializer.append(numpy_helper.from_array(
                (value.astype(np.int16) + 128).astype(np.uint8), name=name))
        node.input[2] = converted[node.input[2]]
        for reader in readers.get(node.output[0], []):
            if reader.op_type != "DequantizeLinear":
                raise ValueError(f"{node.name}'s output feeds {reader.op_type} {reader.name}, not a DequantizeLinear")
            reader.input[2] = node.input[2]


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


def check_qdq_onnx(path: Path, image_size: int, reference: Path) -> dict[str, Any]:
    """Load the QDQ export in onnxruntime and run it on the image model.onnx (`reference`, checked first)
    runs on: the two exports of one model must compute the same output, up to INT8 rounding."""
    import onnx
    import onnxruntime

    image = np.random.default_rng(0).integers(0, 256, (1, 3, image_size, image_size), dtype=np.uint8)
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        output = session.run(None, _feed(session, image))[0]
        expected_session = onnxruntime.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
        expected = expected_session.run(None, _feed(expected_session, image))[0]
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(EXPORT_FAILED, f"the QDQ ONNX export does not run in onnxruntime: "
                            f"{type(exc).__name__}: {exc}") from exc
    input_shape = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    if input_shape != [1, 3, image_size, image_size] or output.shape != expected.shape:
        raise TrainingError(EXPORT_FAILED, f"the QDQ ONNX export takes {input_shape} and gives {list(output.shape)}; "
                            f"{reference.name} takes [1, 3, {image_size}, {image_size}] and gives "
                            f"{list(expected.shape)}")
    difference = float(np.abs(output - expected).mean() / max(float(np.abs(expected).mean()), 1e-9))
    if not np.isfinite(output).all() or difference > QDQ_TOLERANCE:
        raise TrainingError(EXPORT_FAILED, f"the QDQ ONNX export computes another output than {reference.name}: "
                            f"mean difference {difference:.2%} of the output's mean magnitude (at most "
                            f"{QDQ_TOLERANCE:.0%} expected)")
    ops = sorted({node.op_type for node in graph.graph.node})
    _LOG.info("QDQ ONNX check: onnxruntime runs it; %d QuantizeLinear, mean difference to %s %.3f%%",
              sum(node.op_type == "QuantizeLinear" for node in graph.graph.node), reference.name, 100 * difference)
    return {"input_shape": input_shape, "output_shape": list(output.shape), "ops": ops,
            "input_type": session.get_inputs()[0].type, "mean_difference": round(difference, 6),
            "max_difference": round(float(np.abs(output - expected).max()), 6)}


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
