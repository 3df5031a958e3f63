"""A spec the schema accepts but the operator cannot act on: reported on the object, fixed by an edit."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Operator
from tests.e2e.kube import GROUP, PLURAL, SECRET_LABEL, VERSION, Cluster, condition, ensure_namespace, get_model, wait_for

NAMESPACE = "e2e-invalid"
NAME = "nodata"
MISSING = "is required"  # the first missing Roboflow coordinate of spec.training.dataset


def status_of(cluster: Cluster) -> str:
    return yaml.safe_dump((get_model(cluster, NAMESPACE, NAME) or {}).get("status"), sort_keys=False)


@pytest.fixture(scope="module")
def model(cluster: Cluster, operator: Operator) -> dict[str, Any]:
    """Training with no Roboflow coordinates anywhere: valid YAML for the schema, a cross-field error."""
    ensure_namespace(cluster, NAMESPACE)
    # The key the fix below names, marked for Kontinual's use by its owner.
    cluster.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "roboflow", "labels": {SECRET_LABEL: "true"}},
                                                      "stringData": {"apiKey": "e2e-invalid-key"}})
    return cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"model": {"uri": "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none"},
                 "training": {"epochs": 1}}})


def test_the_reason_is_on_the_object_and_in_an_event(cluster: Cluster, kontinual: Operator,
                                                     model: dict[str, Any]) -> None:
    current = wait_for("Ready=False with reason InvalidSpec", lambda: (
        lambda m: m if condition(m, "Ready").get("reason") == "InvalidSpec" else None)(
            get_model(cluster, NAMESPACE, NAME)), diagnose=lambda: status_of(cluster))
    assert condition(current, "Ready")["status"] == "False"
    assert "spec.training.dataset." in condition(current, "Ready")["message"]
    assert MISSING in condition(current, "Ready")["message"]
    assert "spec.dataLogging.roboflow" in condition(current, "Ready")["message"]  # says what would fix it
    events = wait_for("an InvalidSpec Event", lambda: [
        e for e in cluster.core.list_namespaced_event(NAMESPACE).items
        if e.involved_object.name == NAME and e.reason == "InvalidSpec"])
    assert events[0].type == "Warning" and MISSING in events[0].message
    assert not cluster.apps.list_namespaced_deployment(NAMESPACE).items, "children built from an invalid spec"
    invalid = ("kontinual_operator_reconcile_errors_total",
               frozenset({("namespace", NAMESPACE), ("name", NAME), ("kind", "invalid_spec")}))
    assert kontinual.metrics().get(invalid, 0) >= 1  # what an alert on failing reconciles would see


def test_fixing_the_spec_recovers_without_a_restart(cluster: Cluster, kontinual: Operator,
                                                    model: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME, {"spec": {
        "dataLogging": {"roboflow": {"workspace": "acme", "project": "soccer-players",
                                     "apiKeySecretRef": {"name": "roboflow"}}},
        "classNames": ["ball"]}})
    current = wait_for("Reconciled=True after the fix", lambda: (
        lambda m: m if condition(m, "Reconciled").get("status") == "True" else None)(
            get_model(cluster, NAMESPACE, NAME)), diagnose=lambda: status_of(cluster))
    assert current["status"]["observedGeneration"] == current["metadata"]["generation"] == 2
    assert condition(current, "Ready")["reason"] != "InvalidSpec"
    assert cluster.apps.read_namespaced_deployment(f"{NAME}-server", NAMESPACE)
