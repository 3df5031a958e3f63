"""The real API server against crds/: examples accepted whole, bad specs rejected with the schema's words."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.e2e.kube import GROUP, PLURAL, VERSION, Cluster, ensure_namespace, error_message, get_model, wait_for
from tests.support.crd import EXAMPLES

NAMESPACE = "e2e-schema"


def example_models() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ContinualModel":
                found.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return found


def dry_run_create(cluster: Cluster, body: dict[str, Any]) -> dict[str, Any]:
    """Server-side dry run: admission, defaulting, pruning and validation, nothing stored."""
    return cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body,
                                                          dry_run="All")


def missing_after_pruning(sent: Any, stored: Any, path: str = "spec") -> list[str]:
    """Fields we sent that the server dropped (a field unknown to the schema is pruned silently)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [path]
        return [p for key, value in sent.items()
                for p in missing_after_pruning(value, stored.get(key), f"{path}.{key}")]
    return [] if sent == stored else [f"{path} (sent {sent!r}, stored {stored!r})"]


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> str:
    ensure_namespace(cluster, NAMESPACE)
    return NAMESPACE


@pytest.mark.parametrize(("name", "model"), example_models(), ids=[n for n, _ in example_models()])
def test_example_is_accepted_whole_and_defaulted(cluster: Cluster, namespace: str, name: str,
                                                 model: dict[str, Any]) -> None:
    body = copy.deepcopy(model)
    body["metadata"]["namespace"] = namespace
    stored = dry_run_create(cluster, body)
    assert missing_after_pruning(model["spec"], stored["spec"]) == [], (
        f"{name}: the API server pruned or changed fields of the example")
    assert stored["spec"]["serving"]["replicas"] >= 1  # defaults come from the CRD's schema
    assert stored["spec"]["serving"]["port"] == model["spec"].get("serving", {}).get("port", 5543)


def base_model(name: str = "bad") -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"model": {"uri": "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none"}}}


@pytest.mark.parametrize(("change", "expected"), [
    ({"training": {"epochs": 0, "dataset": {"workspace": "w", "project": "p",
                                            "apiKeySecretRef": {"name": "k"}}}},
     ["spec.training.epochs", "greater than or equal to 1"]),
    ({"task": "segmentation"}, ["spec.task", "Unsupported value", '"yolo"']),
    ({"serving": {"replicas": "two"}}, ["spec.serving.replicas", "integer"]),
    ({"model": {}}, ["spec.model.uri", "Required value"]),
], ids=["epochs-below-minimum", "unknown-task", "replicas-not-a-number", "model-without-uri"])
def test_bad_model_is_rejected_with_the_schema_message(cluster: Cluster, namespace: str,
                                                       change: dict[str, Any], expected: list[str]) -> None:
    body = base_model()
    body["spec"].update(change)
    with pytest.raises(ApiException) as caught:
        dry_run_create(cluster, body)
    assert caught.value.status == 422
    message = error_message(caught.value)
    for words in expected:
        assert words in message, f"{words!r} not in the API server's message: {message}"


def test_unknown_fields_are_pruned_by_the_real_server(cluster: Cluster, namespace: str) -> None:
    body = base_model("pruned")
    body["spec"]["serving"] = {"replicas": 2, "replicaz": 3}
    stored = dry_run_create(cluster, body)
    assert stored["spec"]["serving"]["replicas"] == 2
    assert "replicaz" not in stored["spec"]["serving"]


def test_an_oversized_list_is_rejected_and_nothing_is_left_stuck(cluster: Cluster, namespace: str,
                                                                 operator: Any) -> None:
    """The ~820 KB classNames that once overflowed etcd on kopf's status write: refused at the door, create and update."""
    huge = [f"class-{i:06d}-" + "x" * 80 for i in range(9000)]
    body = base_model("oversized")
    body["spec"]["classNames"] = huge
    with pytest.raises(ApiException) as caught:
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    assert caught.value.status == 422
    message = error_message(caught.value)
    assert "spec.classNames" in message and "400" in message, message
    # A model that exists cannot grow past the bound either, and stays deletable (no stuck finalizer).
    small = base_model("oversized")
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, small)
    with pytest.raises(ApiException) as caught:
        cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "oversized",
                                                      {"spec": {"classNames": huge}})
    assert caught.value.status == 422 and "spec.classNames" in error_message(caught.value)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "oversized")
    wait_for("the ContinualModel to be gone (its finalizer removed by the operator)",
             lambda: get_model(cluster, NAMESPACE, "oversized") is None, timeout=60)
