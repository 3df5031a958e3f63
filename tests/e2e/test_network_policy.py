"""spec.serving.networkPolicy on a real API server: the NetworkPolicy child follows the spec, comes back, goes away."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import Operator
from tests.e2e.kube import GROUP, PLURAL, SECRET_LABEL, VERSION, Cluster, condition, ensure_namespace, get_model, wait_for

NAMESPACE = "e2e-netpol"
NAME = "guarded"
SERVER = f"{NAME}-server"
ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
CLIENTS = {"namespaceSelector": {"matchLabels": {"team": "vision"}}, "podSelector": {"matchLabels": {"role": "client"}}}
SCRAPER = {"ipBlock": {"cidr": "10.8.0.0/16", "except": ["10.8.1.0/24"]}}


def policy(cluster: Cluster) -> dict[str, Any] | None:
    try:
        found = client.NetworkingV1Api(cluster.admin).read_namespaced_network_policy(SERVER, NAMESPACE)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(cluster.admin.sanitize_for_serialization(found))


@pytest.fixture(scope="module")
def model(cluster: Cluster, operator: Operator) -> dict[str, Any]:
    ensure_namespace(cluster, NAMESPACE)
    cluster.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "roboflow", "labels": {SECRET_LABEL: "true"}},
                                                      "stringData": {"apiKey": "not-a-real-key"}})
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"model": {"uri": ZOO},
                     "dataLogging": {"roboflow": {"workspace": "acme", "project": "soccer",
                                                  "apiKeySecretRef": {"name": "roboflow"}}},
                     "serving": {"port": 8000, "networkPolicy": {"from": [CLIENTS], "metricsFrom": [SCRAPER]}}}}
    return cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)


def test_the_policy_admits_only_the_named_sources_to_each_port(cluster: Cluster, kontinual: Operator,
                                                               model: dict[str, Any]) -> None:
    found = wait_for(f"the NetworkPolicy {SERVER}", lambda: policy(cluster), timeout=60,
                     diagnose=lambda: kontinual.log_text()[-3000:])
    [owner] = found["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ContinualModel", model["metadata"]["uid"], True)
    spec = found["spec"]
    # It selects exactly the server pods the Deployment runs.
    deployment = cluster.apps.read_namespaced_deployment(SERVER, NAMESPACE)
    assert spec["podSelector"] == {"matchLabels": deployment.spec.selector.match_labels}
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [
        {"from": [CLIENTS], "ports": [{"protocol": "TCP", "port": 8000}]},
        {"from": [SCRAPER], "ports": [{"protocol": "TCP", "port": 9101}]},
    ]


def test_a_deleted_policy_comes_back(cluster: Cluster, kontinual: Operator, model: dict[str, Any]) -> None:
    first = wait_for(f"the NetworkPolicy {SERVER}", lambda: policy(cluster), timeout=60)
    client.NetworkingV1Api(cluster.admin).delete_namespaced_network_policy(SERVER, NAMESPACE)
    # Watched like the other children: back within seconds, not at the next resync.
    again = wait_for("the NetworkPolicy to be recreated", lambda: (lambda p: p if p and p["metadata"]["uid"] != first[
        "metadata"]["uid"] else None)(policy(cluster)), timeout=20, diagnose=lambda: kontinual.log_text()[-3000:])
    assert again["spec"]["ingress"][0]["from"] == [CLIENTS]


def test_spec_changes_reach_the_policy_and_removing_it_deletes_it(cluster: Cluster, kontinual: Operator,
                                                                  model: dict[str, Any]) -> None:
    wait_for(f"the NetworkPolicy {SERVER}", lambda: policy(cluster), timeout=60)
    # Defaults: this namespace's pods for inference; [] lets nobody reach the metrics port.
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                  {"spec": {"serving": {"networkPolicy": {"from": None,
                                                                                          "metricsFrom": []}}}})
    wait_for("the policy to follow the spec", lambda: (policy(cluster) or {}).get("spec", {}).get("ingress") == [
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000}]}], timeout=60,
        diagnose=lambda: f"{(policy(cluster) or {}).get('spec')}\n{kontinual.log_text()[-2000:]}")
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                  {"spec": {"serving": {"networkPolicy": None}}})
    wait_for("the NetworkPolicy to be deleted", lambda: policy(cluster) is None, timeout=60,
             diagnose=lambda: kontinual.log_text()[-3000:])
    current = wait_for("Reconciled=True at the new generation", lambda: (lambda m: m if condition(m, "Reconciled").get(
        "observedGeneration") == m["metadata"]["generation"] else None)(get_model(cluster, NAMESPACE, NAME)))
    assert condition(current, "Reconciled")["status"] == "True"


def test_a_policy_someone_else_owns_is_never_touched(cluster: Cluster, kontinual: Operator,
                                                     model: dict[str, Any]) -> None:
    """A team's own NAME-server policy: ChildConflict, left exactly as it was, never deleted."""
    api = client.NetworkingV1Api(cluster.admin)
    wait_for("no NetworkPolicy (the previous test removed it)", lambda: policy(cluster) is None, timeout=60)
    theirs = {"metadata": {"name": SERVER}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    api.create_namespaced_network_policy(NAMESPACE, theirs)
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                  {"spec": {"serving": {"networkPolicy": {}}}})
    current = wait_for("Reconciled=False ChildConflict", lambda: (lambda m: m if condition(m, "Reconciled").get(
        "reason") == "ChildConflict" else None)(get_model(cluster, NAMESPACE, NAME)), timeout=60,
        diagnose=lambda: kontinual.log_text()[-3000:])
    assert f"NetworkPolicy {NAMESPACE}/{SERVER}" in condition(current, "Reconciled")["message"]
    found = policy(cluster) or {}
    assert found["spec"].get("ingress") is None and not found["metadata"].get("ownerReferences")
    # Switching the policy off again must not delete their object either.
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                  {"spec": {"serving": {"networkPolicy": None}}})
    wait_for("Reconciled=True again", lambda: condition(get_model(cluster, NAMESPACE, NAME), "Reconciled").get(
        "status") == "True", timeout=60)
    assert policy(cluster) is not None
