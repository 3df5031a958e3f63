"""Benchmark: what data capture costs a real DeepSparse Server's clients (latency, failures), not a test.

Runs the server three ways, one after another, with the config Kontinual's builder renders:
  1. no dataLogging;
  2. dataLogging with frequency 1 (every request sampled) to a Roboflow double that takes
     500 ms per call (uploads back up: the bounded queue fills and drops);
  3. the same with the double down (every upload fails after retries).
Each gets the same warm-up and then the same 200 JPEG requests, sent one at a time to the
from_files route. Prints p50/p99 latency, their ratio to run 1, failed requests and dropped samples.

--mode interleaved (default) starts the servers side by side (plus a second baseline) and sends
request i to each in turn, so drift in the machine's background load (a shared CI box) hits all
of them alike; the second baseline's ratio shows the noise that is left. The logging servers'
upload threads then also take some CPU from the others, so this slightly understates the
overhead on an otherwise idle machine. --mode sequential runs them one after another, then the
baseline again: the cleaner comparison on a quiet machine.

    .venv/bin/python benchmarks/logging_overhead.py [--requests 200] [--size 320] [--mode sequential]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
_cfg = tempfile.mkdtemp(prefix="kontinual-yolo-")
os.environ.setdefault("YOLO_CONFIG_DIR", _cfg)
os.environ.setdefault("YOLOV5_CONFIG_DIR", _cfg)

from tests.serving.conftest import jpeg  # noqa: E402
from tests.serving.server import DeepSparseServer, continual_model, free_port  # noqa: E402
from tests.support.models import build_yolo_onnx  # noqa: E402
from tests.support.roboflow_double import RoboflowDouble  # noqa: E402

WARMUP = 10


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _timed(server: DeepSparseServer, image: bytes) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        ok = server.infer(image).status_code == 200
    except Exception:
        ok = False
    return time.perf_counter() - started, ok


def _result(label: str, timings: list[tuple[float, bool]], server: DeepSparseServer) -> dict:
    latencies = [t for t, _ in timings]
    counters = server.metrics() if server.metrics_port else {}
    dropped = sum(v for k, v in counters.items() if k.startswith("dropped_"))
    return {"label": label, "p50": _percentile(latencies, 50), "p99": _percentile(latencies, 99),
            "mean": statistics.fmean(latencies), "failed": sum(not ok for _, ok in timings),
            "dropped": int(dropped), "counters": counters}


def _run(label: str, cr: dict, api_key: str, images: list[bytes], workdir: Path) -> dict:
    with DeepSparseServer(cr, api_key, workdir) as server:
        for image in images[:WARMUP]:
            server.infer(image)
        timings = [_timed(server, image) for image in images[WARMUP:]]
        return _result(label, timings, server)


def _interleaved(runs: list[tuple[str, dict]], rf: RoboflowDouble, images: list[bytes], work: Path) -> list[dict]:
    servers = []
    try:
        for i, (_, cr) in enumerate(runs):
            (work / str(i)).mkdir()
            servers.append(DeepSparseServer(cr, rf.api_key, work / str(i)).__enter__())
        for image in images[:WARMUP]:
            for server in servers:
                server.infer(image)
        rf.latency = 0.5
        timings: list[list[tuple[float, bool]]] = [[] for _ in servers]
        for image in images[WARMUP:]:
            for server, record in zip(servers, timings):
                record.append(_timed(server, image))
        return [_result(label, record, server) for (label, _), record, server in zip(runs, timings, servers)]
    finally:
        for server in servers:
            server.stop(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--size", type=int, default=320, help="request image width (height is 3/4 of it)")
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--mode", choices=("sequential", "interleaved"), default="interleaved")
    args = parser.parse_args()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory(prefix="kontinual-bench-") as tmp:
        work = Path(tmp)
        model = build_yolo_onnx(work / "model.onnx", cfg=args.cfg, confident_class=2)
        images = [jpeg(args.size, args.size * 3 // 4, seed) for seed in range(WARMUP + args.requests)]
        results = []
        with RoboflowDouble() as rf, RoboflowDouble() as dead:
            dead.down()  # the third server's Roboflow: connections refused

            def cr(double: RoboflowDouble, **kw: object) -> dict:
                return continual_model("bench", model, double.url, frequency=1, max_per_minute=100000,
                                       metrics_port=free_port(), **kw)  # type: ignore[arg-type]

            runs = [("no logging", cr(rf, data_logging=False)), ("frequency 1, Roboflow 500 ms", cr(rf)),
                    ("frequency 1, Roboflow down", cr(dead))]
            if args.mode == "interleaved":
                # A second, identical baseline server: its ratio to the first shows the residual noise.
                runs.append(("no logging, second server (noise check)", cr(rf, data_logging=False)))
                results = _interleaved(runs, rf, images, work)
            else:
                results = [_run(runs[0][0], runs[0][1], rf.api_key, images, work)]
                rf.latency = 0.5
                results += [_run(label, body, rf.api_key, images, work) for label, body in runs[1:]]
                rf.latency = 0.0
                # The baseline once more, last: how far the machine's own drift moves the numbers.
                results.append(_run("no logging, again (noise check)", runs[0][1], rf.api_key, images, work))
            uploads_slow = len(rf.uploads)
    base_p50, base_p99 = results[0]["p50"], results[0]["p99"]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"# logging_overhead: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs ({cpu}), "
          f"{args.cfg} {args.size}x{args.size * 3 // 4} JPEGs, {args.requests} requests per run after {WARMUP} warm-up, "
          f"{args.mode}; load average before: {load}")
    print("| run | p50 ms | p99 ms | p50 ratio | p99 ratio | failed requests | dropped samples |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['label']} | {r['p50'] * 1000:.1f} | {r['p99'] * 1000:.1f} | {r['p50'] / base_p50:.2f} | "
              f"{r['p99'] / base_p99:.2f} | {r['failed']} | {r['dropped'] if r['counters'] else '-'} |")
    print(f"\nuploads the 500 ms double received: {uploads_slow}")
    for r in results[1:3]:
        c = r["counters"]
        print(f"{r['label']}: sampled {c.get('sampled', 0):.0f}, uploaded {c.get('uploaded', 0):.0f}, "
              f"failed {c.get('failed', 0):.0f}, retried {c.get('retried', 0):.0f}, "
              f"dropped (queue full) {c.get('dropped_queue_full', 0):.0f}, queue depth {c.get('queue_depth', 0):.0f}")


if __name__ == "__main__":
    main()
