"""Autoscaling on a real control plane: the HPA child, the real HPA controller's scaling, and resyncs that keep it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import Operator
from tests.e2e.kube import GROUP, PLURAL, VERSION, Cluster, ensure_namespace, get_model, wait_for

NAMESPACE = "e2e-autoscaling"
NAME = "scaled"
SERVER = f"{NAME}-server"
ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60,
               "metric": {"name": "kontinual_server_requests_per_second", "targetAverageValue": "20"}}


def hpa(cluster: Cluster) -> dict[str, Any] | None:
    """The server's HPA as autoscaling/v2beta2 (what 1.20 serves; the Python client has no typed API for it)."""
    try:
        return cluster.admin.call_api(
            f"/apis/autoscaling/v2beta2/namespaces/{NAMESPACE}/horizontalpodautoscalers/{SERVER}", "GET",
            header_params={"Accept": "application/json"}, response_types_map={200: "object"},
            auth_settings=["BearerToken"], _return_http_data_only=True)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def replicas(cluster: Cluster) -> int:
    return int(cluster.apps.read_namespaced_deployment(SERVER, NAMESPACE).spec.replicas)


def reapplied(cluster: Cluster, operator: Operator, deadline_seconds: int) -> None:
    """Change a Deployment field through the spec and wait until the operator re-applied the Deployment."""
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                  {"spec": {"serving": {"progressDeadlineSeconds": deadline_seconds}}})
    wait_for(f"the operator to re-apply {SERVER} with progressDeadlineSeconds={deadline_seconds}",
             lambda: cluster.apps.read_namespaced_deployment(SERVER, NAMESPACE).spec.progress_deadline_seconds
             == deadline_seconds, timeout=60, diagnose=lambda: operator.log_text()[-3000:])
    model = wait_for("status.observedGeneration to catch up", lambda: (lambda m: m if m["status"].get(
        "observedGeneration") == m["metadata"]["generation"] else None)(get_model(cluster, NAMESPACE, NAME)))
    assert model is not None


@pytest.fixture(scope="module")
def model(cluster: Cluster, operator: Operator) -> dict[str, Any]:
    ensure_namespace(cluster, NAMESPACE)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            # replicas: 1 is what the operator would set without autoscaling; with it, the HPA decides.
            "spec": {"model": {"uri": ZOO}, "serving": {"replicas": 1, "autoscaling": AUTOSCALING}}}
    return cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)


def test_autoscaling_creates_an_owned_hpa_the_api_server_accepts(cluster: Cluster, kontinual: Operator,
                                                                 model: dict[str, Any]) -> None:
    found = wait_for(f"the HPA {SERVER}", lambda: hpa(cluster), timeout=60,
                     diagnose=lambda: kontinual.log_text()[-3000:])
    [owner] = found["metadata"]["ownerReferences"]
    assert (owner["uid"], owner["controller"]) == (model["metadata"]["uid"], True)
    assert found["metadata"]["labels"]["app.kubernetes.io/instance"] == NAME
    spec = found["spec"]
    assert (spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"]) == ("Deployment", SERVER)
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 5)
    targets = {m["type"]: m for m in spec["metrics"]}
    assert targets["Resource"]["resource"] == {"name": "cpu", "target": {"type": "Utilization",
                                                                         "averageUtilization": 60}}
    assert targets["Pods"]["pods"]["metric"]["name"] == "kontinual_server_requests_per_second"
    assert targets["Pods"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "20"}


def test_the_hpa_controllers_scaling_survives_the_operators_reapplies(cluster: Cluster, kontinual: Operator,
                                                                      model: dict[str, Any]) -> None:
    # The Deployment starts at 1; the real HPA controller raises it to minReplicas (no metrics needed).
    wait_for("the HPA controller to scale the server to minReplicas=2", lambda: replicas(cluster) == 2, timeout=120,
             diagnose=lambda: f"replicas={replicas(cluster)}; HPA status: {(hpa(cluster) or {}).get('status')}")
    # Each scale change is a Deployment event the operator reconciles on; and a spec change re-applies it.
    reapplied(cluster, kontinual, 900)
    assert replicas(cluster) == 2
    # As the HPA would on load: scale within [min, max] through the scale subresource.
    cluster.apps.patch_namespaced_deployment_scale(SERVER, NAMESPACE, {"spec": {"replicas": 4}})
    reapplied(cluster, kontinual, 901)
    end = time.monotonic() + 10  # and a while longer: no later reconcile puts it back either
    while time.monotonic() < end:
        assert replicas(cluster) == 4, "the operator overwrote the autoscaled replica count"
        time.sleep(0.5)


def test_switching_autoscaling_off_deletes_the_hpa_and_restores_replicas(cluster: Cluster, kontinual: Operator,
                                                                        model: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                  {"spec": {"serving": {"autoscaling": None, "replicas": 3}}})
    wait_for("the HPA to be deleted", lambda: hpa(cluster) is None, timeout=60,
             diagnose=lambda: kontinual.log_text()[-3000:])
    wait_for("spec.serving.replicas=3 to be applied again", lambda: replicas(cluster) == 3, timeout=60)
