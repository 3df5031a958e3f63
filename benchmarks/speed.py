"""What the engine benchmarks share: timing a run, DeepSparse's items/s, a model copy at a static batch.
Imports nothing heavy at module level: runtimes.py's worker imports it in the runtime venv too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


def measure(run: Callable[[], Any], batch: int, seconds: float) -> float:
    """items/s of `run` (one batch per call) after warming up, over at least `seconds` and 3 calls."""
    for _ in range(2 if batch == 1 else 1):
        run()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 3:
        run()
        count += 1
    return batch * count / (time.perf_counter() - started)


def deepsparse_items_per_s(model: Path, batch: int, seconds: float) -> float:
    import deepsparse

    engine = deepsparse.compile_model(str(model), batch_size=batch)
    inputs = engine.generate_random_inputs()  # an exported INT8 model quantizes its float input itself
    return measure(lambda: engine(inputs), batch, seconds)


def with_batch(onnx_path: Path, batch: int, out: Path) -> Path:
    """A copy whose input and output take `batch` images (onnxruntime needs the static batch in the file)."""
    import onnx

    model = onnx.load(str(onnx_path))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(out))
    return out
