"""Benchmark (not a test): on the real node, Job success -> first answer from the new model, and rollout latencies.

It brings up the real single-node Kubernetes of tests/node (root needed), builds or reuses the
images of images/, installs the chart with helm, applies the ContinualModel of
tests/node/workload.py (a tiny YOLOv5n seed at 64 px, data capture to the Roboflow double on
the node IP) and then

1. sends requests one after another through the Service's ClusterIP for `--steady` seconds
   (steady state, v0 serving) and records each latency;
2. asks for a training run, keeps the same load running through training and the rolling
   update, and records when the Job succeeded (polled every 0.2 s), when the first answer of
   the new model came back (answers are told apart by their boxes), and when the rollout was
   complete;

and prints the time from Job success to the first answer of v1 and to the rollout's end, and
p50/p99 of the request latencies in steady state and during the rollout (Job success -> rollout
complete), plus the failed-request count. Everything shares the machine's two cores with the
control plane, the kubelet and DeepSparse, so the figures are pessimistic for a real cluster.

    sudo .venv/bin/python benchmarks/rollout_on_node.py [--steady 30] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import config  # noqa: E402

from tests.cluster.build import ensure_binaries  # noqa: E402
from tests.e2e.kube import wait_for  # noqa: E402
from tests.node import host  # noqa: E402
from tests.node.build import ensure_node_binaries  # noqa: E402
from tests.node.images import ensure_images  # noqa: E402
from tests.node.node import NODE_IP, down, up  # noqa: E402
from tests.node.workload import (API_KEY, IMAGE_SIZE, NAME, NAMESPACE, PROJECT, Load, RealNode,  # noqa: E402
                                 answer_key, condition, create_model, infer, install_chart, jpeg,
                                 make_models_volume, request_training, rollout_done, service_url, status_text)
from tests.support.roboflow_double import RoboflowDouble  # noqa: E402
from tests.support.synthetic import make_dataset  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {"requests": len(latencies), "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * percentile(latencies, 0.99), "max_ms": 1000 * max(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady", type=float, default=30.0, help="seconds of steady-state load")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    host.require_root()
    host.ensure_packages()
    plane_bins, node_bins = ensure_binaries(), ensure_node_binaries()
    work = Path(tempfile.mkdtemp(prefix="kontinual-bench-node-"))
    state = work / "node"
    running = up(state, plane_bins, node_bins, [ROOT / "crds/continualmodels.kontinual.io.yaml"], die_with_parent=True)
    try:
        node = RealNode(running, config.new_client_from_config(config_file=running.kubeconfig), state)
        images = ensure_images()
        with RoboflowDouble(api_key=API_KEY, host=NODE_IP) as roboflow:
            roboflow.add_version(PROJECT, 1, make_dataset(work / "dataset", size=IMAGE_SIZE))
            make_models_volume(node)
            install_chart(node, images, roboflow.url)
            create_model(node)
            wait_for("ContinualModel Ready", lambda: condition(node, "Ready").get("status") == "True",
                     timeout=600, interval=1, diagnose=lambda: status_text(node))
            url, image = service_url(node), jpeg(7)
            v0 = answer_key(infer(url, image)[1])
            steady = Load(url, image)
            steady.start()
            time.sleep(args.steady)
            steady.stop()
            request_training(node, "bench-1")
            job = f"{NAME}-train-1"
            wait_for("the trainer pod", lambda: [p for p in node.core.list_namespaced_pod(
                NAMESPACE, label_selector=f"job-name={job}").items if p.status.phase != "Pending"],
                timeout=300, interval=1)
            load = Load(url, image)
            load.start()
            try:
                wait_for(f"Job {job} to succeed", lambda: node.batch.read_namespaced_job(job, NAMESPACE).status.succeeded,
                         timeout=1800, interval=0.2)
                succeeded = time.monotonic()
                wait_for("v1 on every pod", lambda: rollout_done(node, 1), timeout=600, interval=0.2)
                complete = time.monotonic()
                time.sleep(5)
            finally:
                load.stop()
    finally:
        down(state)
    v1 = next(r[2] for r in reversed(load.results) if r[1] == 200)
    if v1 == v0:
        raise SystemExit("v1 answers exactly like the seed: cannot tell when it first answered")
    first_v1 = next(r[0] + r[3] for r in load.results if r[2] == v1)
    during = [r[3] for r in load.results if succeeded <= r[0] <= complete]
    figures = {
        "machine": f"{platform.machine()}, {platform.node()}",
        "job_success_to_first_v1_answer_s": first_v1 - succeeded,
        "job_success_to_rollout_complete_s": complete - succeeded,
        "steady": summary([r[3] for r in steady.results]),
        "rollout": summary(during) if during else {},
        "failed_requests": sum(1 for r in [*steady.results, *load.results] if r[1] != 200),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
