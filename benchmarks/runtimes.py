"""Benchmark (not a test): every serving engine on each model format, side by side in one run, and each server.

The models are sparse_speedup.py's: the real trainer's YOLOv5s 640 px exports, 90 % pruned + INT8
QAT and the built-in aggressive recipe's, each in both export formats (model.onnx with ConvInteger,
the format DeepSparse runs fast; model.qdq.onnx, which OpenVINO and onnxruntime fuse into their INT8
kernels), and dense fp32. Engines: DeepSparse 1.8.0 (this venv), OpenVINO f32 and onnxruntime
(.venv-runtime, as the server-openvino image runs them), items/s at batch 1 and 32, and the item-4
ratios. Servers, started from the config Kontinual's builder renders, each on the file its runtime
serves: DeepSparse Server on model.onnx, the kserve runtime (OpenVINO) on model.qdq.onnx and on a
dense export; requests/s, p50 and p99 on the from_files route (one 640x480 JPEG per request) at
concurrency 1 and 4.
Usage: `.venv/bin/python benchmarks/runtimes.py [--seconds 10] [--batches 1,32] [--work-dir DIR]`
(needs make venv).
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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.speed import deepsparse_items_per_s, measure, with_batch  # noqa: E402

RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"
SIZE = 640
BATCHES = (1, 32)


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


def servers(models: dict[str, Path], work: Path, seconds: float) -> list[tuple[str, int, dict[str, float]]]:
    from PIL import Image

    from tests.runtime.server import KServeServer, with_runtime
    from tests.serving.server import DeepSparseServer, continual_model, free_port

    buffer = io.BytesIO()
    rng = np.random.default_rng(7)
    Image.fromarray((rng.random((480, 640, 3)) * 255).astype("uint8")).save(buffer, "JPEG", quality=90)
    image = buffer.getvalue()

    def cr(model: Path) -> dict[str, Any]:
        return continual_model("bench", model, "", frequency=1, metrics_port=free_port(), data_logging=False)

    # What each runtime serves of a quantized version (contract.served_file), and OpenVINO on a dense run.
    plans: list[tuple[str, Any, dict[str, Any]]] = [
        ("DeepSparse Server 1.8.0, 90 % sparse INT8", DeepSparseServer, cr(models[SPARSE])),
        ("DeepSparse Server 1.8.0, aggressive INT8", DeepSparseServer, cr(models[AGGRESSIVE])),
        ("kserve + OpenVINO, 90 % sparse INT8 QDQ", KServeServer, with_runtime(cr(models[SPARSE_QDQ]), "openvino")),
        ("kserve + OpenVINO, dense fp32", KServeServer, with_runtime(cr(models[DENSE]), "openvino")),
    ]
    rows = []
    for index, (label, server_class, spec) in enumerate(plans):
        folder = work / f"server-{index}"
        folder.mkdir(exist_ok=True)
        with server_class(spec, "", folder) as server:
            for concurrency in (1, 4):
                rows.append((label, concurrency, load(server.infer_url, image, concurrency, seconds)))
    return rows


SPARSE, SPARSE_QDQ = "90 % sparse INT8", "90 % sparse INT8 QDQ"
AGGRESSIVE, AGGRESSIVE_QDQ = "aggressive sparse INT8", "aggressive sparse INT8 QDQ"
DENSE = "dense fp32"
ENGINES = ("DeepSparse 1.8.0", "OpenVINO 2026.4.1 (f32)", "onnxruntime 1.32.0")


def items_per_s(engine: str, model: Path, batch: int, seconds: float, work: Path) -> float:
    if engine.startswith("DeepSparse"):
        try:
            return deepsparse_items_per_s(model, batch, seconds)
        except Exception as error:  # noqa: BLE001 - a format DeepSparse cannot compile: shown as nan
            print(f"DeepSparse on {model}: {error}", file=sys.stderr)
            return float("nan")
    if engine.startswith("OpenVINO"):
        return in_runtime_venv("openvino", model, batch, seconds)
    batched = with_batch(model, batch, work / f"{model.parent.name}-{model.stem}-b{batch}.onnx")
    return in_runtime_venv("onnxruntime", batched, batch, seconds)


def skipped(engine: str, label: str, batch: int) -> bool:
    """Beyond batch 1 each engine is measured on its own formats only (DeepSparse on model.onnx, OpenVINO and
    onnxruntime on model.qdq.onnx) and the dense one: the other pairs take minutes per figure at batch 32 and
    their batch-1 figures already show they are no one's choice."""
    if batch == 1 or label == DENSE:
        return False
    return label.endswith("QDQ") if engine.startswith("DeepSparse") else not label.endswith("QDQ")


def summary(figures: dict[tuple[str, str], dict[int, float]], batches: list[int]) -> list[str]:
    """The aims of issue 15 item 4, from this run's figures: the aggressive model on DeepSparse against
    onnxruntime on the dense model (aim 4x at each batch) and the best Apache engine on it (2x at batch 1)."""
    lines = []
    for batch in batches:
        ours = figures.get((ENGINES[0], AGGRESSIVE), {}).get(batch)
        ort = figures.get((ENGINES[2], DENSE), {}).get(batch)
        apache = max((figures.get((e, DENSE), {}).get(batch, float("nan")) for e in ENGINES[1:]),
                     key=lambda v: -1 if v != v else v)
        if ours and ort and apache:
            lines.append(f"batch {batch}: DeepSparse on the aggressive model {ours:.1f} items/s = {ours / ort:.2f}x "
                         f"onnxruntime dense fp32 ({ort:.1f}; aim 4x), {ours / apache:.2f}x the best Apache-licensed "
                         f"engine on the dense model ({apache:.1f}; aim 2x at batch 1)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    parser.add_argument("--work-dir", type=Path, help="keep (and reuse) the trained models here (default: temp)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes "
                        f"(default {','.join(map(str, BATCHES))})")
    parser.add_argument("--no-servers", action="store_true", help="engines only")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if not RUNTIME_PYTHON.is_file():
        sys.exit(f"{RUNTIME_PYTHON} missing: run make venv")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    from benchmarks.sparse_speedup import trained_models

    with tempfile.TemporaryDirectory(prefix="kontinual-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sparse, dense, aggressive = (work / "models" / r["onnx"] for r in trained_models(work))
        models = {SPARSE: sparse, SPARSE_QDQ: sparse.with_name("model.qdq.onnx"), AGGRESSIVE: aggressive,
                  AGGRESSIVE_QDQ: aggressive.with_name("model.qdq.onnx"), DENSE: dense}
        load_before = os.getloadavg()[0]
        figures: dict[tuple[str, str], dict[int, float]] = {}
        for label, model in models.items():
            for engine in ENGINES:
                figures[(engine, label)] = {batch: float("nan") if skipped(engine, label, batch) else
                                            items_per_s(engine, model, batch, args.seconds, work)
                                            for batch in batches}
                print(f"{engine} on {label}: {figures[(engine, label)]}", flush=True)
        served = [] if args.no_servers else servers(models, work, args.seconds)
    print()
    print(f"YOLOv5s {SIZE} px, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), load average before {load_before:.2f}, after "
          f"{os.getloadavg()[0]:.2f}; {args.seconds:.0f} s per figure")
    print()
    print("| engine | model | " + " | ".join(f"batch {b} (items/s)" for b in batches) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in batches) + " |")
    for (engine, label), values in figures.items():
        print(f"| {engine} | {label} | " + " | ".join("-" if skipped(engine, label, b) else f"{values[b]:.1f}"
                                                   for b in batches) + " |")
    print()
    for line in summary(figures, batches):
        print(line)
    if served:
        print()
        print("| server (from_files, 640x480 JPEG) | concurrency | requests/s | p50 (ms) | p99 (ms) | failed |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, concurrency, figures_ in served:
            print(f"| {label} | {concurrency} | {figures_['rps']:.1f} | {figures_['p50']:.1f} | {figures_['p99']:.1f} "
                  f"| {figures_['failed']:.0f} |")


if __name__ == "__main__":
    main()
