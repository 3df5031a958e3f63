"""A result whose pod is gone is read from the model claim, on a real control plane with the chart's RBAC:
the operator creates the reader Job NAME-result-<N>, the real Job controller runs it (the test plays
kubelet, printing the v<N>/result.json the trainer left on the claim), and the run is recorded once."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Operator
from tests.e2e.kube import (GROUP, PLURAL, SECRET_LABEL, VERSION, Cluster, condition, ensure_namespace, get_model,
                            owned_by, play_kubelet_terminated, wait_for)
from tests.e2e.test_training import success, training_model

NAMESPACE = "e2e-results"
NAME = "loop"


def model_now(cluster: Cluster) -> dict[str, Any]:
    return get_model(cluster, NAMESPACE, NAME) or {}


def pod_of(cluster: Cluster, job: str) -> Any:
    return wait_for(f"the Job controller to create the pod of {job}", lambda: cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"job-name={job}").items)[0]


def complete(cluster: Cluster, job: str) -> None:
    wait_for(f"the Job controller to mark {job} Complete", lambda: any(
        c.type == "Complete" and c.status == "True"
        for c in cluster.batch.read_namespaced_job(job, NAMESPACE).status.conditions or []), timeout=60)


@pytest.fixture(scope="module")
def model(cluster: Cluster, operator: Operator) -> dict[str, Any]:
    ensure_namespace(cluster, NAMESPACE)
    cluster.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "roboflow", "labels": {SECRET_LABEL: "true"}},
                                                      "stringData": {"apiKey": "e2e-results-key"}})
    created: dict[str, Any] = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL,
                                                                            training_model(namespace=NAMESPACE))
    wait_for("Reconciled=True", lambda: condition(model_now(cluster), "Reconciled").get("status") == "True")
    return created


def test_a_result_whose_pod_is_gone_is_read_from_the_claim(cluster: Cluster, kontinual: Operator,
                                                           model: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME, {
        "metadata": {"annotations": {f"{GROUP}/train-request": "1"}}})
    trainer = pod_of(cluster, f"{NAME}-train-1")
    # The trainer succeeded, but its termination message is lost with its pod (deleted once done).
    play_kubelet_terminated(cluster, trainer, exit_code=0, message="")
    complete(cluster, f"{NAME}-train-1")
    cluster.core.delete_namespaced_pod(trainer.metadata.name, NAMESPACE)

    reader_pod = pod_of(cluster, f"{NAME}-result-1")  # the operator's reader Job, run by the real Job controller
    reader = cluster.batch.read_namespaced_job(f"{NAME}-result-1", NAMESPACE)
    assert owned_by(reader, model["metadata"]["uid"])
    assert reader_pod.spec.containers[0].command == ["cp", "/models/v1/result.json", "/dev/termination-log"]
    assert reader_pod.spec.volumes[0].persistent_volume_claim.read_only is True
    play_kubelet_terminated(cluster, reader_pod, exit_code=0, message=success(1, 0.61))
    complete(cluster, f"{NAME}-result-1")

    def promoted() -> dict[str, Any] | None:
        current = model_now(cluster)
        return current if (current.get("status") or {}).get("serving", {}).get("version") == 1 else None
    current = wait_for("v1, read from the claim, to be promoted", promoted)
    status = current["status"]
    assert [m["version"] for m in status["models"]] == [1] and status["models"][0]["promoted"] is True
    assert status["training"]["lastRun"]["result"] == "Succeeded" and status["training"]["runs"] == 1
    assert status["training"]["highestVersion"] == 1 and len(status["training"]["recordedJobs"]) == 1
    def reasons() -> list[str]:
        return [e.reason for e in cluster.core.list_namespaced_event(NAMESPACE).items if e.involved_object.name == NAME]
    wait_for("the ReadingResult and ModelPromoted Events", lambda: {"ReadingResult", "ModelPromoted"} <= set(reasons()))
    assert reasons().count("ReadingResult") == 1 and reasons().count("ModelPromoted") == 1
