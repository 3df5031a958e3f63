"""Benchmark (not a test): every serving engine on each model format, side by side in one run, and each server.

The models are sparse_speedup.py's: the real trainer's YOLOv5s 640 px exports, 90 % pruned + INT8
QAT (the format DeepSparse runs fast) and dense fp32. Engines: DeepSparse 1.8.0 (this venv),
OpenVINO f32 and onnxruntime (.venv-runtime, as the server-openvino image runs them), items/s at
batch 1 and 32. Servers, started from the config Kontinual's builder renders: DeepSparse Server on
the sparse INT8 model, the kserve runtime (OpenVINO) on the dense fp32 one; requests/s, p50 and p99
on the from_files route (one 640x480 JPEG per request) at concurrency 1 and 4.
Usage: `.venv/bin/python benchmarks/runtimes.py [--seconds 10] [--work-dir DIR]` (needs make venv).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"
SIZE = 640
BATCHES = (1, 32)


def measure(run: Callable[[], Any], batch: int, seconds: float) -> float:
    for _ in range(2):
        run()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 3:
        run()
        count += 1
    return batch * count / (time.perf_counter() - started)


def worker(engine: str, model: str, batch: int, seconds: float) -> float:
    """Runs in .venv-runtime: items/s of one engine as kontinual.serving.engines configures it."""
    from kontinual.serving import engines

    if engine == "openvino":
        engines._no_openvino_telemetry()
        import openvino

        core = openvino.Core()
        graph = core.read_model(model)
        graph.reshape([batch, 3, SIZE, SIZE])
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        feed = np.random.default_rng(0).random((batch, 3, SIZE, SIZE), dtype=np.float32)
        return measure(lambda: request.infer({0: feed}), batch, seconds)
    runner = engines.load(engine, model)
    feed = np.random.default_rng(0).random((batch, 3, SIZE, SIZE), dtype=np.float32)
    return measure(lambda: runner.run(feed), batch, seconds)


def in_runtime_venv(engine: str, model: Path, batch: int, seconds: float) -> float:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.runtimes import worker; "
            "print(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))")
    done = subprocess.run([str(RUNTIME_PYTHON), "-c", code, str(ROOT), engine, str(model), str(batch), str(seconds)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "operator")))
    if done.returncode != 0:
        return float("nan")  # e.g. a model format the engine cannot batch: shown as n/a
    return float(done.stdout.strip().splitlines()[-1])


def deepsparse_items_per_s(model: Path, batch: int, seconds: float) -> float:
    import deepsparse

    engine = deepsparse.compile_model(str(model), batch_size=batch)
    inputs = engine.generate_random_inputs()
    return measure(lambda: engine(inputs), batch, seconds)


def with_batch(onnx_path: Path, batch: int, out: Path) -> Path:
    """A copy whose input and output take `batch` images (onnxruntime needs the static batch in the file)."""
    import onnx

    model = onnx.load(str(onnx_path))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(out))
    return out


def load(url: str, image: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` clients posting `image` to the from_files route for `seconds`: req/s, p50 and p99 (ms)."""
    import requests

    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            started = time.perf_counter()
            response = session.post(url, files=[("request", ("frame.jpg", io.BytesIO(image), "image/jpeg"))],
                                    timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                if response.status_code == 200 and "boxes" in response.json():
                    latencies.append(elapsed)
                else:
                    failures[0] += 1

    for _ in range(2):  # warm-up
        requests.post(url, files=[("request", ("frame.jpg", io.BytesIO(image), "image/jpeg"))], timeout=60)
    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")
    return {"rps": len(latencies) / wall, "p50": statistics.median(ordered) * 1000 if ordered else float("nan"),
            "p99": p99 * 1000, "failed": failures[0]}


def servers(sparse: Path, dense: Path, work: Path, seconds: float) -> list[tuple[str, int, dict[str, float]]]:
    from PIL import Image

    from tests.runtime.server import KServeServer, with_runtime
    from tests.serving.server import DeepSparseServer, continual_model, free_port

    buffer = io.BytesIO()
    rng = np.random.default_rng(7)
    Image.fromarray((rng.random((480, 640, 3)) * 255).astype("uint8")).save(buffer, "JPEG", quality=90)
    image = buffer.getvalue()
    rows = []
    plans: list[tuple[str, Any, dict[str, Any]]] = [
        ("DeepSparse Server 1.8.0, sparse INT8", DeepSparseServer,
         continual_model("bench", sparse, "", frequency=1, metrics_port=free_port(), data_logging=False)),
        ("kserve + OpenVINO f32, dense fp32", KServeServer,
         with_runtime(continual_model("bench", dense, "", frequency=1, metrics_port=free_port(), data_logging=False),
                      "openvino")),
    ]
    for label, server_class, cr in plans:
        (work / label.split()[0]).mkdir(exist_ok=True)
        with server_class(cr, "", work / label.split()[0]) as server:
            for concurrency in (1, 4):
                rows.append((label, concurrency, load(server.infer_url, image, concurrency, seconds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--work-dir", type=Path, help="keep (and reuse) the trained models here (default: temp)")
    parser.add_argument("--no-servers", action="store_true", help="engines only")
    args = parser.parse_args()
    if not RUNTIME_PYTHON.is_file():
        sys.exit(f"{RUNTIME_PYTHON} missing: run make venv")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    from benchmarks.sparse_speedup import trained_models

    with tempfile.TemporaryDirectory(prefix="kontinual-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = trained_models(work)
        sparse, dense = (work / "models" / r["onnx"] for r in results)
        load_before = os.getloadavg()[0]
        engines: list[tuple[str, str, dict[int, float]]] = []
        for label, model in (("90 % sparse INT8", sparse), ("dense fp32", dense)):
            row: dict[str, dict[int, float]] = {"DeepSparse 1.8.0": {}, "OpenVINO 2026.4.1 (f32)": {},
                                                "onnxruntime 1.32.0": {}}
            for batch in BATCHES:
                row["DeepSparse 1.8.0"][batch] = deepsparse_items_per_s(model, batch, args.seconds)
                row["OpenVINO 2026.4.1 (f32)"][batch] = in_runtime_venv("openvino", model, batch, args.seconds)
                batched = with_batch(model, batch, work / f"{'sparse' if model == sparse else 'dense'}-b{batch}.onnx")
                row["onnxruntime 1.32.0"][batch] = in_runtime_venv("onnxruntime", batched, batch, args.seconds)
            engines += [(engine, label, values) for engine, values in row.items()]
        served = [] if args.no_servers else servers(sparse, dense, work, args.seconds)
    print()
    print(f"YOLOv5s {SIZE} px, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), load average before {load_before:.2f}, after "
          f"{os.getloadavg()[0]:.2f}; {args.seconds:.0f} s per figure")
    print()
    print("| engine | model | batch 1 (items/s) | batch 32 (items/s) |")
    print("| --- | --- | ---: | ---: |")
    for engine, label, values in engines:
        print(f"| {engine} | {label} | {values[1]:.1f} | {values[32]:.1f} |")
    if served:
        print()
        print("| server (from_files, 640x480 JPEG) | concurrency | requests/s | p50 (ms) | p99 (ms) | failed |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, concurrency, figures in served:
            print(f"| {label} | {concurrency} | {figures['rps']:.1f} | {figures['p50']:.1f} | {figures['p99']:.1f} "
                  f"| {figures['failed']:.0f} |")


if __name__ == "__main__":
    main()
