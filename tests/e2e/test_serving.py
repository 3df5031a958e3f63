"""Serving lifecycle on a real control plane: children, status, kubelet-reported readiness, a rolled change, GC."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import Operator
from tests.e2e.kube import (GROUP, PLURAL, VERSION, Cluster, condition, ensure_namespace, get_model, owned_by,
                            play_kubelet_ready, wait_for)
from tests.support.crd import EXAMPLES

NAMESPACE = "e2e-serving"
# This module runs the chart's namespaced mode: a Role in this namespace, `--namespace e2e-serving`.
WATCH_NAMESPACES = [NAMESPACE]
UNWATCHED = "e2e-unwatched"
NAME = "demo"
MODEL_LABELS = {"app.kubernetes.io/managed-by": "kontinual", "app.kubernetes.io/instance": NAME,
                f"{GROUP}/model": NAME}


def minimal_example() -> dict[str, Any]:
    model = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())
    assert model["metadata"]["name"] == NAME
    model = copy.deepcopy(model)
    model["metadata"]["namespace"] = NAMESPACE
    model["metadata"]["labels"] = {"argocd.argoproj.io/instance": "not-for-children"}
    return model


def children(cluster: Cluster) -> dict[str, Any]:
    """The serving children, or None for each that does not exist (yet or any more)."""
    def read(call: Any, name: str) -> Any:
        try:
            return call(name, NAMESPACE)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
    return {
        "ConfigMap": read(cluster.core.read_namespaced_config_map, f"{NAME}-server-config"),
        "Deployment": read(cluster.apps.read_namespaced_deployment, f"{NAME}-server"),
        "Service": read(cluster.core.read_namespaced_service, f"{NAME}-server"),
        "PersistentVolumeClaim": read(cluster.core.read_namespaced_persistent_volume_claim, f"{NAME}-models"),
    }


def server_replica_sets(cluster: Cluster, deployment_uid: str) -> list[Any]:
    sets = cluster.apps.list_namespaced_replica_set(NAMESPACE).items
    return [rs for rs in sets if owned_by(rs, deployment_uid)]


def server_pods(cluster: Cluster) -> list[Any]:
    selector = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=server"
    return [p for p in cluster.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
            if not p.metadata.deletion_timestamp]


def status_of(cluster: Cluster) -> str:
    model = get_model(cluster, NAMESPACE, NAME)
    return yaml.safe_dump((model or {}).get("status"), sort_keys=False)


@pytest.fixture(scope="module")
def model(cluster: Cluster, operator: Operator) -> dict[str, Any]:
    ensure_namespace(cluster, UNWATCHED)
    outsider = minimal_example()
    outsider["metadata"]["namespace"] = UNWATCHED
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, UNWATCHED, PLURAL, outsider)
    return cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, minimal_example())


def test_children_are_created_owned_and_labeled(cluster: Cluster, kontinual: Operator, model: dict[str, Any]) -> None:
    uid = model["metadata"]["uid"]
    serving = ("ConfigMap", "Deployment", "Service")
    found = wait_for("the ConfigMap, Deployment and Service of demo",
                     lambda: (lambda c: {k: c[k] for k in serving} if all(c[k] for k in serving) else None)(
                         children(cluster)), timeout=60,
                     diagnose=lambda: kontinual.log_text()[-3000:])
    for kind, child in found.items():
        assert owned_by(child, uid), f"{kind} {child.metadata.name} is not controlled by the ContinualModel"
        for key, value in MODEL_LABELS.items():
            assert child.metadata.labels.get(key) == value, f"{kind} lacks label {key}={value}"
        assert "argocd.argoproj.io/instance" not in child.metadata.labels, f"{kind} copied the parent's labels"
    config = yaml.safe_load(found["ConfigMap"].data["server.yaml"])
    assert config["endpoints"][0]["model"] == model["spec"]["model"]["uri"]
    assert found["Service"].spec.ports[0].port == 5543
    # Serve-only from a zoo stub: nothing mounts a model claim, so the operator creates none.
    assert children(cluster)["PersistentVolumeClaim"] is None


def test_status_is_written_through_the_status_subresource(cluster: Cluster, kontinual: Operator,
                                                          model: dict[str, Any]) -> None:
    current = wait_for("Reconciled=True on demo", lambda: (lambda m: m if condition(m, "Reconciled").get("status")
                                                            == "True" else None)(get_model(cluster, NAMESPACE, NAME)),
                       diagnose=lambda: status_of(cluster))
    # With the status subresource on, only /status writes can set .status, and they never bump generation.
    assert current["metadata"]["generation"] == 1
    assert current["status"]["observedGeneration"] == 1
    assert condition(current, "Available")["status"] == "False"  # pods stay Pending: no scheduler, no kubelet
    assert condition(current, "Ready")["status"] == "False"
    assert current["status"]["serving"]["url"].startswith(f"http://{NAME}-server.{NAMESPACE}.svc:5543/")
    outsider = get_model(cluster, UNWATCHED, NAME) or {}
    assert "status" not in outsider, "the namespaced operator reconciled a namespace it does not watch"
    assert not cluster.core.list_namespaced_config_map(UNWATCHED, label_selector=f"{GROUP}/model={NAME}").items


def test_pods_reported_ready_make_the_model_available(cluster: Cluster, kontinual: Operator,
                                                      model: dict[str, Any]) -> None:
    pods = wait_for("the ReplicaSet controller to create the server pod", lambda: server_pods(cluster))
    assert pods[0].status.phase == "Pending"
    for pod in pods:
        play_kubelet_ready(cluster, pod)
    ready = wait_for("Available=True and Ready=True on demo", lambda: (
        lambda m: m if condition(m, "Available").get("status") == "True"
        and condition(m, "Ready").get("status") == "True" else None)(get_model(cluster, NAMESPACE, NAME)),
        diagnose=lambda: status_of(cluster))
    assert ready["status"]["serving"]["readyReplicas"] == 1


def test_spec_change_rolls_the_server(cluster: Cluster, kontinual: Operator, model: dict[str, Any]) -> None:
    deployment = cluster.apps.read_namespaced_deployment(f"{NAME}-server", NAMESPACE)
    before = deployment.spec.template.metadata.annotations[f"{GROUP}/config-hash"]
    assert len(server_replica_sets(cluster, deployment.metadata.uid)) == 1
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME,
                                                  {"spec": {"serving": {"batchSize": 4}}})
    sets = wait_for("a second ReplicaSet of demo-server", lambda: (
        lambda s: s if len(s) == 2 else None)(server_replica_sets(cluster, deployment.metadata.uid)),
        diagnose=lambda: status_of(cluster))
    hashes = {rs.spec.template.metadata.annotations[f"{GROUP}/config-hash"] for rs in sets}
    assert before in hashes and len(hashes) == 2
    config = yaml.safe_load(cluster.core.read_namespaced_config_map(f"{NAME}-server-config", NAMESPACE)
                            .data["server.yaml"])
    assert config["endpoints"][0]["batch_size"] == 4
    current = wait_for("observedGeneration 2", lambda: (lambda m: m if m["status"].get("observedGeneration") == 2
                                                         else None)(get_model(cluster, NAMESPACE, NAME)))
    assert condition(current, "Reconciled")["status"] == "True"


def test_children_deleted_or_edited_by_hand_come_back(cluster: Cluster, kontinual: Operator,
                                                      model: dict[str, Any]) -> None:
    service = cluster.core.read_namespaced_service(f"{NAME}-server", NAMESPACE)
    cluster.core.delete_namespaced_service(f"{NAME}-server", NAMESPACE)
    config = cluster.core.read_namespaced_config_map(f"{NAME}-server-config", NAMESPACE)
    wanted = config.data["server.yaml"]
    cluster.core.patch_namespaced_config_map(f"{NAME}-server-config", NAMESPACE,
                                             {"data": {"server.yaml": "endpoints: []\n"}})
    wait_for("the Service to be recreated", lambda: (lambda c: c["Service"] is not None and
                                                     c["Service"].metadata.uid != service.metadata.uid)(
        children(cluster)))
    wait_for("the hand-edited server.yaml to be restored", lambda: cluster.core.read_namespaced_config_map(
        f"{NAME}-server-config", NAMESPACE).data["server.yaml"] == wanted)


def test_deleting_the_model_garbage_collects_every_child(cluster: Cluster, kontinual: Operator,
                                                         model: dict[str, Any]) -> None:
    deployment_uid = cluster.apps.read_namespaced_deployment(f"{NAME}-server", NAMESPACE).metadata.uid
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
    wait_for("the ContinualModel to be gone (the operator removes its finalizer)",
             lambda: get_model(cluster, NAMESPACE, NAME) is None, timeout=60)

    def everything_gone() -> bool:
        return (not any(children(cluster).values()) and not server_replica_sets(cluster, deployment_uid)
                and not server_pods(cluster))
    # The garbage collector may learn about the CRD up to ~40 s after it was installed.
    wait_for("the garbage collector to delete every child", everything_gone, timeout=120,
             diagnose=lambda: repr({k: bool(v) for k, v in children(cluster).items()}))
