"""The Apache/MIT-licensed inference engines behind the kserve runtime: OpenVINO (f32 pinned) and onnxruntime."""

from __future__ import annotations

import queue
import sys
from typing import Iterable, Protocol

import numpy

from kontinual.common.names import KSERVE_ENGINES

ENGINES = KSERVE_ENGINES


class Engine(Protocol):
    """Runs the ONNX model on one batch; `run` is thread-safe."""

    input_shape: tuple[int | None, ...]  # [B, 3, H, W]; None where the model's dimension is dynamic
    uint8_input: bool

    def run(self, batch: numpy.ndarray) -> numpy.ndarray: ...


def _dims(shape: Iterable[object]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _no_openvino_telemetry() -> None:
    """openvino's model reader loads openvino_telemetry, which without a consent file counts as consent and posts
    to www.google-analytics.com. An import that fails makes openvino use its own no-op stub (ovc.telemetry_stub)."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


class OpenVINOEngine:
    """OpenVINO on CPU. INFERENCE_PRECISION_HINT f32: on CPUs with avx512_bf16/AMX OpenVINO otherwise runs bf16
    silently and its detections drift from DeepSparse's by many pixels."""

    def __init__(self, model: str, num_cores: int | None = None) -> None:
        _no_openvino_telemetry()
        import openvino

        core = openvino.Core()
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if num_cores:
            config["INFERENCE_NUM_THREADS"] = int(num_cores)
        self._compiled = core.compile_model(core.read_model(model), "CPU", config)
        port = self._compiled.input(0)
        self.input_shape = _dims([d.get_length() if d.is_static else None for d in port.get_partial_shape()])
        self.uint8_input = port.get_element_type() == openvino.Type.u8
        # InferRequests are not reentrant: a pool of them, one per concurrent call.
        size = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests: queue.Queue = queue.Queue()
        for _ in range(size):
            self._requests.put(self._compiled.create_infer_request())

    def run(self, batch: numpy.ndarray) -> numpy.ndarray:
        request = self._requests.get()
        try:
            result = request.infer({0: batch})
            return numpy.array(result[self._compiled.output(0)])
        finally:
            self._requests.put(request)


class OnnxRuntimeEngine:
    """onnxruntime's CPU provider (`InferenceSession.run` is thread-safe)."""

    def __init__(self, model: str, num_cores: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_cores:
            options.intra_op_num_threads = int(num_cores)
        self._session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        first = self._session.get_inputs()[0]
        self._input = first.name
        self.input_shape = _dims(first.shape)
        self.uint8_input = first.type == "tensor(uint8)"

    def run(self, batch: numpy.ndarray) -> numpy.ndarray:
        return self._session.run(None, {self._input: batch})[0]


def load(engine: str, model: str, num_cores: int | None = None) -> Engine:
    if engine == "openvino":
        return OpenVINOEngine(model, num_cores)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(model, num_cores)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
