"""Training on a real control plane: the test plays kubelet for the trainer pod, the real Job controller
completes the Job, the operator records the result, gates it and rolls the server to the new model."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Operator
from tests.e2e.kube import (GROUP, PLURAL, SECRET_LABEL, VERSION, Cluster, condition, ensure_namespace, get_model, owned_by,
                            play_kubelet_terminated, wait_for)

NAMESPACE = "e2e-training"
NAME = "loop"
API_KEY = "e2e-roboflow-key-do-not-leak-4711"
SHA = {1: "1" * 64, 2: "2" * 64}


def training_model(name: str = NAME, namespace: str = NAMESPACE) -> dict[str, Any]:
    """Data logging plus training that starts only when asked (no schedule, no Roboflow polling)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"},
            "classNames": ["ball", "player"],
            "dataLogging": {"frequency": 10, "roboflow": {
                "workspace": "acme", "project": "soccer-players", "apiKeySecretRef": {"name": "roboflow"}}},
            "training": {"epochs": 1, "imageSize": 64, "batchSize": 2, "backoffLimit": 0},
            "rollout": {"gate": {"metric": "mAP50", "minDelta": 0.0}},
        },
    }


def model_now(cluster: Cluster) -> dict[str, Any]:
    return get_model(cluster, NAMESPACE, NAME) or {}


def status_of(cluster: Cluster) -> str:
    return yaml.safe_dump(model_now(cluster).get("status"), sort_keys=False)


def request_training(cluster: Cluster, value: str) -> None:
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME, {
        "metadata": {"annotations": {f"{GROUP}/train-request": value}}})


def job_pod(cluster: Cluster, job: str) -> Any:
    pods = wait_for(f"the Job controller to create the pod of {job}", lambda: cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"job-name={job}").items)
    assert pods[0].status.phase == "Pending"
    return pods[0]


def job_finished(cluster: Cluster, job: str, kind: str) -> Any:
    def done() -> Any:
        current = cluster.batch.read_namespaced_job(job, NAMESPACE)
        return current if any(c.type == kind and c.status == "True"
                              for c in current.status.conditions or []) else None
    return wait_for(f"the Job controller to mark {job} {kind}", done, timeout=60)


def recorded(cluster: Cluster, version: int) -> dict[str, Any]:
    """Waits until the operator recorded run `version`; one request must have started one run only."""
    def probe() -> dict[str, Any] | None:
        model = model_now(cluster)
        training = model.get("status", {}).get("training") or {}
        last = training.get("lastRun") or {}
        finished = last.get("version") == version and last.get("finishedAt") and last.get("result")
        return model if finished and training.get("activeJob") != f"{NAME}-train-{version}" else None
    model = wait_for(f"the operator to record training run v{version}", probe, diagnose=lambda: status_of(cluster))
    training = model["status"]["training"]
    assert not training.get("activeJob") and not training.get("pending"), (
        f"one train-request started more than one run:\n{status_of(cluster)}")
    return model


def served_version(cluster: Cluster) -> str:
    deployment = cluster.apps.read_namespaced_deployment(f"{NAME}-server", NAMESPACE)
    return str(deployment.spec.template.metadata.annotations[f"{GROUP}/model-version"])


def replica_set_versions(cluster: Cluster) -> set[str]:
    deployment = cluster.apps.read_namespaced_deployment(f"{NAME}-server", NAMESPACE)
    return {rs.spec.template.metadata.annotations[f"{GROUP}/model-version"]
            for rs in cluster.apps.list_namespaced_replica_set(NAMESPACE).items
            if owned_by(rs, deployment.metadata.uid)}


def success(version: int, map50: float, baseline: float | None = None) -> str:
    """The trainer's result JSON, as the architecture's contract writes it to /dev/termination-log.

    `baseline`: the serving model's mAP50 on the same split (the champion the gate compares with).
    """
    result: dict[str, Any] = {
        "version": version, "status": "Succeeded", "onnx": f"v{version}/model.onnx",
        "sha256": SHA[version], "metrics": {"mAP50": map50, "mAP50_95": map50 / 2},
        "sparsity": 0.8, "datasetVersion": "3", "images": {"train": 8, "valid": 2, "test": 2}}
    if baseline is not None:
        result["baseline"] = {"version": version - 1, "metrics": {"mAP50": baseline, "mAP50_95": baseline / 2}}
    return json.dumps(result)


@pytest.fixture(scope="module")
def model(cluster: Cluster, operator: Operator) -> dict[str, Any]:
    ensure_namespace(cluster, NAMESPACE)
    cluster.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "roboflow", "labels": {SECRET_LABEL: "true"}},
                                                      "stringData": {"apiKey": API_KEY}})
    created = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, training_model())
    wait_for("Reconciled=True on loop", lambda: condition(model_now(cluster), "Reconciled").get("status") == "True",
             diagnose=lambda: status_of(cluster))
    return created


def test_a_requested_run_starts_one_owned_job(cluster: Cluster, kontinual: Operator, model: dict[str, Any]) -> None:
    assert condition(model_now(cluster), "Training").get("status") == "False"
    request_training(cluster, "first")
    job = wait_for("the annotation to start Job loop-train-1", lambda: [
        j for j in cluster.batch.list_namespaced_job(NAMESPACE).items if j.metadata.name == f"{NAME}-train-1"],
        timeout=20, diagnose=lambda: status_of(cluster))[0]
    assert owned_by(job, model["metadata"]["uid"])
    assert job.metadata.labels["app.kubernetes.io/component"] == "training"
    assert job.metadata.labels[f"{GROUP}/model"] == NAME
    container = job.spec.template.spec.containers[0]
    assert container.image == "kontinual/trainer:e2e"
    assert container.termination_message_policy == "FallbackToLogsOnError"
    assert API_KEY not in json.dumps(cluster.admin.sanitize_for_serialization(job))  # the key comes from the Secret
    current = wait_for("Training=True", lambda: (lambda m: m if condition(m, "Training").get("status") == "True"
                                                 else None)(model_now(cluster)), diagnose=lambda: status_of(cluster))
    assert current["status"]["training"]["activeJob"] == f"{NAME}-train-1"


def test_a_succeeded_run_is_promoted_and_rolled_out(cluster: Cluster, kontinual: Operator,
                                                    model: dict[str, Any]) -> None:
    assert served_version(cluster) == "0"
    # The trainer evaluated the serving seed on the same split: the gate compares those two numbers.
    play_kubelet_terminated(cluster, job_pod(cluster, f"{NAME}-train-1"), exit_code=0,
                            message=success(1, 0.61, baseline=0.33))
    job_finished(cluster, f"{NAME}-train-1", "Complete")
    current = recorded(cluster, 1)
    status = current["status"]
    assert status["models"][0]["version"] == 1 and status["models"][0]["promoted"] is True
    assert status["models"][0]["metrics"]["mAP50"] == pytest.approx(0.61)
    assert status["models"][0]["reason"] == "GatePassed"
    assert status["models"][0]["message"].startswith("mAP50 0.6100 vs 0.3300 of the seed model (v0) on "), status
    assert status["serving"]["version"] == 1 and status["serving"]["sha256"] == SHA[1]
    assert condition(current, "Training")["status"] == "False"
    assert condition(current, "Degraded").get("status", "False") == "False"
    wait_for("the server Deployment to roll to v1 (a new ReplicaSet)",
             lambda: replica_set_versions(cluster) == {"0", "1"}, diagnose=lambda: repr(replica_set_versions(cluster)))
    config = yaml.safe_load(cluster.core.read_namespaced_config_map(f"{NAME}-server-config", NAMESPACE)
                            .data["server.yaml"])
    assert config["endpoints"][0]["model"].endswith("v1/model.onnx")


def test_a_worse_model_is_rejected_by_the_gate(cluster: Cluster, kontinual: Operator, model: dict[str, Any]) -> None:
    request_training(cluster, "second")
    play_kubelet_terminated(cluster, job_pod(cluster, f"{NAME}-train-2"), exit_code=0, message=success(2, 0.40, baseline=0.61))
    job_finished(cluster, f"{NAME}-train-2", "Complete")
    current = recorded(cluster, 2)
    assert current["status"]["serving"]["version"] == 1
    rejected = next((m for m in current["status"]["models"] if m["version"] == 2), None)
    assert rejected is not None, f"v2 is not in status.models:\n{status_of(cluster)}"
    assert rejected["promoted"] is False and rejected["reason"] == "GateRejected"
    assert rejected["message"].startswith("mAP50 0.4000 vs 0.6100 of v1 on "), rejected
    assert condition(current, "Degraded")["status"] == "True"
    assert condition(current, "Degraded")["reason"] == "GateRejected"
    assert served_version(cluster) == "1"


def test_a_failed_run_reports_the_trainers_reason(cluster: Cluster, kontinual: Operator,
                                                  model: dict[str, Any]) -> None:
    request_training(cluster, "third")
    failure = json.dumps({"status": "Failed", "reason": "DatasetEmpty",
                          "message": "Roboflow version 3 of acme/soccer-players has no annotated images"})
    play_kubelet_terminated(cluster, job_pod(cluster, f"{NAME}-train-3"), exit_code=1, message=failure)
    job_finished(cluster, f"{NAME}-train-3", "Failed")  # backoffLimit 0: the real Job controller gives up
    current = recorded(cluster, 3)
    last = current["status"]["training"]["lastRun"]
    assert (last["result"], last["reason"]) == ("Failed", "DatasetEmpty")
    assert condition(current, "Degraded")["reason"] == "DatasetEmpty"
    assert "no annotated images" in condition(current, "Degraded")["message"]
    assert current["status"]["serving"]["version"] == 1
    events = cluster.core.list_namespaced_event(NAMESPACE).items
    reasons = {e.reason for e in events if e.involved_object.name == NAME}
    assert {"TrainingStarted", "TrainingSucceeded", "ModelPromoted", "TrainingFailed"} <= reasons


def model_series(kontinual: Operator) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """This model's series in one scrape of the operator's metrics, without its namespace and name labels."""
    mine = {("namespace", NAMESPACE), ("name", NAME)}
    return {(metric, labels - mine): value for (metric, labels), value in kontinual.metrics().items()
            if mine <= labels}


def test_the_operators_metrics_count_runs_gates_and_reconciles(cluster: Cluster, kontinual: Operator,
                                                               model: dict[str, Any]) -> None:
    series = model_series(kontinual)
    none: frozenset[tuple[str, str]] = frozenset()
    assert series[("kontinual_operator_training_runs_started_total", none)] == 3
    assert series[("kontinual_operator_training_runs_total", frozenset({("result", "succeeded")}))] == 2
    assert series[("kontinual_operator_training_runs_total", frozenset({("result", "failed")}))] == 1
    assert series[("kontinual_operator_gate_decisions_total", frozenset({("result", "promoted")}))] == 1
    assert series[("kontinual_operator_gate_decisions_total", frozenset({("result", "rejected")}))] == 1
    assert series[("kontinual_operator_promotions_total", none)] == 1
    assert series[("kontinual_operator_serving_model_version", none)] == 1
    ok = ("kontinual_operator_reconciles_total", frozenset({("result", "ok")}))
    before = kontinual.metrics()[ok]
    assert before >= 6 and kontinual.metrics()[("kontinual_operator_reconcile_duration_seconds_count", none)] >= before
    request_training(cluster, "metrics")  # one more reconcile (and run) moves the counters
    wait_for("the reconcile counter to move", lambda: kontinual.metrics()[ok] > before)
    wait_for("a fourth run to be counted", lambda: model_series(kontinual).get(
        ("kontinual_operator_training_runs_started_total", none)) == 4)


def test_the_api_key_appears_nowhere_but_its_secret(cluster: Cluster, kontinual: Operator,
                                                    model: dict[str, Any]) -> None:
    config_maps = cluster.core.list_namespaced_config_map(NAMESPACE).items
    events = cluster.core.list_namespaced_event(NAMESPACE).items
    for what, obj in [("ConfigMaps", config_maps), ("Events", events), ("status", model_now(cluster))]:
        assert API_KEY not in json.dumps(cluster.admin.sanitize_for_serialization(obj)), f"the key is in {what}"
    assert API_KEY not in kontinual.log_text(), "the key is in the operator's log"


def test_deleting_the_model_removes_jobs_and_pods(cluster: Cluster, kontinual: Operator,
                                                  model: dict[str, Any]) -> None:
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)

    def gone() -> bool:
        return (get_model(cluster, NAMESPACE, NAME) is None
                and not cluster.batch.list_namespaced_job(NAMESPACE).items
                and not cluster.apps.list_namespaced_deployment(NAMESPACE).items
                and not [p for p in cluster.core.list_namespaced_pod(NAMESPACE).items])
    wait_for("the garbage collector to delete the Jobs, the Deployment and their pods", gone, timeout=120)
    assert wait_for("the deleted model's metrics series to go", lambda: not model_series(kontinual))
