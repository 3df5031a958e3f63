"""The whole loop on the real node, as a user meets it: `helm install`, one ContinualModel, real pods.

The operator runs as a pod with the chart's ServiceAccount and RBAC (in-cluster config); the
server pod from images/server comes up through its real probes and answers through its
Service's ClusterIP (kube-proxy); its logger uploads to the Roboflow double on the node IP; a
manual train request runs the real `kontinual train` of images/trainer in a Job pod, writing
/models/v1 on a real PersistentVolume, and the kubelet writes its termination message; the
operator gates and promotes, and a load generator keeps requesting through the Service during
the rolling update: 0 failed requests, each answered by v0 or v1, then only by v1. A run that
cannot reach Roboflow leaves v1 serving, with the reason on the object.

It runs in `make test` (and `make test-node`) like the tier's other modules; the tier's summary
prints how long each step took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.kube import GROUP, PLURAL, VERSION, wait_for
from tests.node.conftest import TIMINGS
from tests.node.node import NODE_IP
from tests.node.workload import (API_KEY, IMAGE_SIZE, NAME, NAMESPACE, OPERATOR_NAMESPACE, PROJECT, Load, RealNode,
                                 answer_key, condition, create_model, infer, install_chart, jpeg,
                                 make_models_volume, model_now, operator_log, request_training, rollout_done,
                                 service_url, status_text)
from tests.support.roboflow_double import RoboflowDouble
from tests.support.synthetic import make_dataset

@pytest.fixture(scope="module")
def roboflow(node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoboflowDouble]:
    """The Roboflow double on the node IP (pods reach it; nothing outside the machine can)."""
    with RoboflowDouble(api_key=API_KEY, host=NODE_IP) as double:
        double.add_version(PROJECT, 1, make_dataset(tmp_path_factory.mktemp("dataset"), size=IMAGE_SIZE))
        yield double


@pytest.fixture(scope="module")
def models_volume(node: RealNode) -> Path:
    return make_models_volume(node)


@pytest.fixture(scope="module")
def chart(node: RealNode, images: dict[str, str], roboflow: RoboflowDouble) -> dict[str, str]:
    started = time.monotonic()
    values = install_chart(node, images, roboflow.url)
    TIMINGS["helm install --wait (operator pod Ready)"] = time.monotonic() - started
    return values


@pytest.fixture(scope="module")
def model(node: RealNode, chart: dict[str, str], models_volume: Path) -> dict[str, Any]:
    started = time.monotonic()
    create_model(node)
    wait_for("ContinualModel loop Ready", lambda: condition(node, "Ready").get("status") == "True",
             timeout=600, interval=1, diagnose=lambda: status_text(node) + operator_log(node))
    TIMINGS["ContinualModel applied -> Ready (server pod through its probes)"] = time.monotonic() - started
    return model_now(node)


def test_the_operator_runs_as_a_pod_with_the_charts_service_account(node: RealNode, chart: dict[str, str]) -> None:
    pods = node.core.list_namespaced_pod(OPERATOR_NAMESPACE).items
    assert len(pods) == 2  # the chart's replicaCount: a leader and a standby
    for pod in pods:
        assert pod.spec.service_account_name == "kontinual"
        assert pod.spec.containers[0].image == f"{chart['image.repository']}:{chart['image.tag']}"
        assert all(s.ready for s in pod.status.container_statuses)
    # Both replicas are Ready at once (the standby answers /healthz too); the Lease comes with the first renewal.
    leases = client.CoordinationV1Api(node.admin)
    lease = wait_for("the leader's Lease", lambda: next(
        (lease for lease in leases.list_namespaced_lease(OPERATOR_NAMESPACE).items
         if lease.metadata.name == "kontinual" and lease.spec.holder_identity), None), timeout=60, interval=0.5)
    assert str(lease.spec.holder_identity).rpartition("_")[0] in {p.metadata.name for p in pods}


def test_the_server_serves_the_seed_through_its_service_and_captures_data(
        node: RealNode, model: dict[str, Any], roboflow: RoboflowDouble) -> None:
    deployment = node.apps.read_namespaced_deployment(f"{NAME}-server", NAMESPACE)
    assert deployment.status.ready_replicas == 1
    pod = node.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=server").items[0]
    assert pod.spec.containers[0].image.startswith("kontinual/server:node-")
    status, answer = infer(service_url(node), jpeg())
    assert status == 200, answer
    assert isinstance(answer, dict) and answer["labels"][0], answer  # the seed sees "ball" everywhere
    wait_for("the logger's upload of the served image to the Roboflow double",
             lambda: roboflow.uploads_to(PROJECT), timeout=60)
    wait_for("its pre-annotation", lambda: [a for a in roboflow.annotations if a.prediction], timeout=60)
    assert all(r.api_key in (API_KEY, None) for r in roboflow.requests)


def test_a_trained_model_rolls_out_with_zero_failed_requests(node: RealNode, model: dict[str, Any],
                                                             models_volume: Path) -> None:
    url = service_url(node)
    image = jpeg(7)
    status, before = infer(url, image)
    assert status == 200, before
    v0 = answer_key(before)
    request_training(node, "node-run-1")
    job = f"{NAME}-train-1"
    pod = wait_for(f"the trainer pod of {job} running", lambda: next(
        (p for p in node.core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job}").items
         if p.status.phase in ("Running", "Succeeded", "Failed")), None), timeout=300, interval=1,
        diagnose=lambda: status_text(node))
    load = Load(url, image)
    load.start()
    started = time.monotonic()
    try:
        wait_for(f"Job {job} to succeed", lambda: node.batch.read_namespaced_job(job, NAMESPACE).status.succeeded,
                 timeout=1500, interval=2, diagnose=lambda: node.core.read_namespaced_pod_log(
                     pod.metadata.name, NAMESPACE, tail_lines=40))
        job_done = time.monotonic()
        TIMINGS["training Job (real kontinual train in a pod)"] = job_done - started
        wait_for("v1 serving on every pod", lambda: rollout_done(node, 1), timeout=600, interval=0.5,
                 diagnose=lambda: status_text(node))
        TIMINGS["Job succeeded -> rollout of v1 complete"] = time.monotonic() - job_done
        settle = time.monotonic()
        while time.monotonic() - settle < 5:  # a few more requests once only v1 serves
            time.sleep(0.5)
    finally:
        load.stop()
    trainer = node.core.read_namespaced_pod(pod.metadata.name, NAMESPACE)
    message = json.loads(trainer.status.container_statuses[0].state.terminated.message)  # written by the kubelet
    assert message["status"] == "Succeeded" and message["version"] == 1, message
    assert (models_volume / "v1" / "model.onnx").is_file()
    status, after = infer(url, image)
    assert status == 200, after
    v1 = answer_key(after)
    assert v1 != v0, "the trained model answers exactly like the seed: cannot tell them apart"
    failed = [r for r in load.results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(load.results)} requests failed during the rollout: {failed[:5]}"
    keys = [r[2] for r in load.results]
    assert set(keys) <= {v0, v1}, f"answers from neither v0 nor v1: {set(keys) - {v0, v1}}"
    first_v1 = keys.index(v1)
    assert v0 not in keys[first_v1 + 5:] or keys[-1] == v1
    assert keys[-5:] == [v1] * 5
    record = model_now(node)["status"]["models"][0]
    assert record["version"] == 1 and record["sha256"] == message["sha256"]
    new_pod = node.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=server").items[0]
    verify = new_pod.status.init_container_statuses[0]
    assert verify.name == "verify-model" and verify.state.terminated.exit_code == 0
    print(f"{len(load.results)} requests during training and rollout, 0 failed, "
          f"{keys.count(v0)} from v0, {keys.count(v1)} from v1")


def test_a_run_without_roboflow_fails_and_v1_keeps_serving(node: RealNode, model: dict[str, Any],
                                                           roboflow: RoboflowDouble) -> None:
    roboflow.down()
    try:
        request_training(node, "node-run-2")
        wait_for("run v2 recorded as failed", lambda: ((model_now(node)["status"].get("training") or {})
                                                       .get("lastRun") or {}).get("version") == 2
                 and (model_now(node)["status"]["training"]["lastRun"].get("result") not in (None, "Succeeded")),
                 timeout=600, interval=2, diagnose=lambda: status_text(node))
    finally:
        roboflow.up()
    status = model_now(node)["status"]
    assert status["serving"]["version"] == 1
    last = status["training"]["lastRun"]
    assert last["result"] == "Failed" and last.get("reason"), last
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == last["reason"] and degraded["message"], degraded
    print(f"run v2 failed: {last['reason']}: {degraded['message']}")
    assert infer(service_url(node), jpeg())[0] == 200
    assert rollout_done(node, 1)
    for obj in (status, node.core.list_namespaced_event(NAMESPACE).items,
                node.core.list_namespaced_config_map(NAMESPACE).items):
        assert API_KEY not in json.dumps(node.admin.sanitize_for_serialization(obj))
    assert API_KEY not in operator_log(node)


def test_switching_to_the_apache_licensed_runtime_rolls_the_promoted_model_onto_it(
        node: RealNode, model: dict[str, Any], chart: dict[str, str], roboflow: RoboflowDouble) -> None:
    """`spec.serving.runtime: openvino` rolls v1 onto images/server-openvino (kserve + OpenVINO) under
    load: no failed request, the same route and answer, its own probes and data capture."""
    url = service_url(node)
    image = jpeg(7)
    status, before = infer(url, image)
    assert status == 200, before
    uploads = len(roboflow.uploads_to(PROJECT))
    load = Load(url, image)
    load.start()
    started = time.monotonic()
    try:
        node.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                   {"spec": {"serving": {"runtime": "openvino"}}})
        openvino_image = f"{chart['serverOpenvinoImage.repository']}:{chart['serverOpenvinoImage.tag']}"
        wait_for("v1 served by the openvino runtime on every pod", lambda: rollout_done(node, 1) and all(
            p.spec.containers[0].image == openvino_image for p in node.core.list_namespaced_pod(
                NAMESPACE, label_selector="app.kubernetes.io/component=server").items
            if p.metadata.deletion_timestamp is None), timeout=600, interval=0.5, diagnose=lambda: status_text(node))
        TIMINGS["runtime switch deepsparse -> openvino rolled out"] = time.monotonic() - started
        time.sleep(5)  # a few requests once only the new runtime serves
    finally:
        load.stop()
    failed = [r for r in load.results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(load.results)} requests failed during the switch: {failed[:5]}"
    status, after = infer(url, image)
    assert status == 200, after
    assert isinstance(before, dict) and isinstance(after, dict)
    assert after["labels"] == before["labels"], (before, after)  # DeepSparse's schema, the same model's classes
    # OpenVINO runs the run's QDQ export, DeepSparse its ConvInteger export of the same weights: the INT8
    # kernels differ, so boxes may move a little (up to 1.0 px measured in the training tier).
    for old, new in zip(before["boxes"][0], after["boxes"][0], strict=True):
        assert all(abs(a - b) <= 2.0 for a, b in zip(old, new, strict=True)), (before, after)
    pod = next(p for p in node.core.list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/component=server").items if p.metadata.deletion_timestamp is None)
    verify = pod.status.init_container_statuses[0]
    assert verify.name == "verify-model" and verify.state.terminated.exit_code == 0
    wait_for("an upload from the openvino runtime's logger", lambda: len(roboflow.uploads_to(PROJECT)) > uploads,
             timeout=60)
    serving = model_now(node)["status"]["serving"]
    assert serving["version"] == 1
    assert serving["uri"] == "pvc://loop-models/v1/model.qdq.onnx", serving  # the INT8 export OpenVINO runs fast
    print(f"runtime switch under load: {len(load.results)} requests, 0 failed")
