"""Benchmark (not a test): time from creating a ContinualModel to Reconciled=True, and the operator's peak RSS.

It starts the emulated API server of tests/emulator in this process, runs the real operator as a
separate process (`python -m kontinual operator --all-namespaces`, logged in through a kubeconfig)
so that its peak RSS is the operator's alone, and then

1. creates single ContinualModels one at a time (`--singles`, default 10), waiting for each, and
2. creates `--count` (default 200) ContinualModels at once (all POSTs concurrently),

and prints, per phase, the p50 and p95 of each object's time from its create request to the first
status write that carries Reconciled=True (timestamped inside the API server, so client polling
adds nothing), the wall time until the last one, and the operator process's peak resident set
size (VmHWM from /proc/<pid>/status). The API server shares the machine's cores with the
operator, so the figures are pessimistic for a real cluster.

    .venv/bin/python benchmarks/reconcile.py [--count 200] [--singles 10]     # or: make bench
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.emulator.cluster import Cluster, condition, running_cluster, wait_for  # noqa: E402

MODEL_URI = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
AIMS = {"single_p50_s": 0.5, "batch_total_s": 60.0, "rss_mb": 250.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def peak_rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


class Stopwatch:
    """Timestamps, inside the API server, the first status write with Reconciled=True per object."""

    def __init__(self, cluster: Cluster) -> None:
        self.created: dict[str, float] = {}
        self.reconciled: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expected = 0
        cluster.server.listeners.append(self._on_event)

    def _on_event(self, resource: Any, event: dict[str, Any]) -> None:
        if resource.plural != "continualmodels" or event["type"] != "MODIFIED":
            return
        obj = event["object"]
        key = f'{obj["metadata"]["namespace"]}/{obj["metadata"]["name"]}'
        cond = condition(obj, "Reconciled")
        if key not in self.reconciled and cond and cond["status"] == "True":
            self.reconciled[key] = time.perf_counter()
            if self.expected and sum(k in self.reconciled for k in self.created) >= self.expected:
                self.done.set()

    def durations(self, keys: list[str]) -> list[float]:
        return [self.reconciled[k] - self.created[k] for k in keys]


def continual_model(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"model": {"uri": MODEL_URI}}}


async def create(cluster: Cluster, watch: Stopwatch, namespace: str, name: str) -> str:
    key = f"{namespace}/{name}"
    watch.created[key] = time.perf_counter()
    await cluster.create(continual_model(namespace, name))
    return key


async def start_operator(cluster: Cluster, log: Any) -> subprocess.Popen[bytes]:
    health = free_port()
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), KONTINUAL_HEALTH_PORT=str(health),
               KONTINUAL_LOG_LEVEL=os.environ.get("KONTINUAL_LOG_LEVEL", "INFO"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kontinual", "operator", "--all-namespaces"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    async def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}; see {log.name}")
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{health}/healthz") as rsp:
                return rsp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(healthy, timeout=60, interval=0.2, what="the operator's /healthz")
    # Ready means watching: its watch on continualmodels is open.
    await wait_for(lambda: cluster.requests("GET", "continualmodels") and any(
        r.params.get("watch") == "true" for r in cluster.requests("GET", "continualmodels")),
        timeout=30, what="the operator's watch on continualmodels")
    return proc


async def run(count: int, singles: int, keep_log: bool = False) -> dict[str, Any]:
    async with running_cluster() as cluster:
        watch = Stopwatch(cluster)
        with tempfile.NamedTemporaryFile("w+b", prefix="kontinual-operator-", suffix=".log", delete=False) as log:
            proc = await start_operator(cluster, log)
            try:
                single_keys = []
                for i in range(singles):
                    watch.expected, watch.done = 0, asyncio.Event()
                    key = await create(cluster, watch, "bench-single", f"single-{i}")
                    await wait_for(lambda k=key: k in watch.reconciled, timeout=60, interval=0.01,
                                   what=f"{key} Reconciled=True")
                    single_keys.append(key)

                watch.expected, watch.done = len(watch.created) + count, asyncio.Event()
                start = time.perf_counter()
                batch_keys = await asyncio.gather(*(create(cluster, watch, f"bench-{i % 10}", f"model-{i}")
                                                    for i in range(count)))
                await asyncio.wait_for(watch.done.wait(), timeout=600)
                batch_total = max(watch.reconciled[k] for k in batch_keys) - start
                rss = peak_rss_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:  # in a thread: the API server in this loop must keep answering while it stops
                    await asyncio.to_thread(proc.wait, 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if keep_log:
            print(f"operator log: {log.name}")
        else:
            os.unlink(log.name)
    singles_d, batch_d = watch.durations(single_keys), watch.durations(list(batch_keys))
    return {
        "single": {"n": len(singles_d), "p50": statistics.median(singles_d), "p95": percentile(singles_d, 0.95)},
        "batch": {"n": len(batch_d), "p50": statistics.median(batch_d), "p95": percentile(batch_d, 0.95),
                  "total": batch_total},
        "rss_mb": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="objects created at once in phase 2")
    parser.add_argument("--singles", type=int, default=10, help="objects created one at a time in phase 1")
    parser.add_argument("--keep-log", action="store_true", help="keep the operator's log file and print its path")
    args = parser.parse_args()
    result = asyncio.run(run(args.count, args.singles, args.keep_log))
    single, batch = result["single"], result["batch"]
    print(f"kontinual reconcile benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, emulated API server (tests/emulator)")
    print(f"{'phase':<32}{'objects':>8}{'p50 s':>9}{'p95 s':>9}{'all done s':>12}")
    print(f"{'one at a time':<32}{single['n']:>8}{single['p50']:>9.3f}{single['p95']:>9.3f}{'':>12}")
    label = f"{batch['n']} created at once"
    print(f"{label:<32}{batch['n']:>8}{batch['p50']:>9.3f}{batch['p95']:>9.3f}"
          f"{batch['total']:>12.2f}")
    print(f"operator peak RSS (VmHWM of the `kontinual operator` process): {result['rss_mb']:.0f} MB")
    met = (single["p50"] < AIMS["single_p50_s"], batch["total"] < AIMS["batch_total_s"], result["rss_mb"] < AIMS["rss_mb"])
    print(f"aims: single p50 < 0.5 s: {'met' if met[0] else 'MISSED'}; {batch['n']} within 60 s: "
          f"{'met' if met[1] else 'MISSED'}; RSS < 250 MB: {'met' if met[2] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
