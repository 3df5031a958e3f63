"""Day-2 builders: the server's HPA, who owns `replicas`, the claim only when mounted, RWO co-location."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kontinual.controller import builders, jobs
from kontinual.controller.builders import ModelTarget
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec, SpecError, parse

SETTINGS = Settings(server_image="registry.example/server:1", trainer_image="registry.example/trainer:1")
ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
ROBOFLOW = {"workspace": "acme", "project": "soccer-players", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}
TRAINING = {"dataset": ROBOFLOW}
COLOCATION = {"labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "soccer",
                                                "kontinual.io/mounts-models": "true"}},
              "topologyKey": "kubernetes.io/hostname"}


def make_spec(spec: dict[str, Any] | None = None, uri: str = ZOO) -> Spec:
    body = {"metadata": {"name": "soccer", "namespace": "vision", "uid": "uid-1"},
            "spec": {"model": {"uri": uri}, **copy.deepcopy(spec or {})}}
    return parse(body, SETTINGS)


def kinds(spec: Spec, target: ModelTarget | None = None) -> list[str]:
    return [c["kind"] for c in builders.serving_children(spec, SETTINGS, target)]


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def colocation_terms(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = pod_spec(manifest).get("affinity") or {}
    return list((affinity.get("podAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or [])


# --- autoscaling -----------------------------------------------------------------------------


def test_without_autoscaling_the_deployment_carries_replicas_and_there_is_no_hpa() -> None:
    spec = make_spec({"serving": {"replicas": 3}})
    assert builders.deployment(spec, SETTINGS)["spec"]["replicas"] == 3
    assert builders.horizontal_pod_autoscaler(spec) is None
    assert "HorizontalPodAutoscaler" not in kinds(spec)


def test_autoscaling_builds_an_hpa_on_the_server_and_leaves_replicas_to_it() -> None:
    spec = make_spec({"serving": {"replicas": 3, "autoscaling": {"minReplicas": 2, "maxReplicas": 6,
                                                                  "targetCPUUtilizationPercentage": 70}}})
    # No `replicas` in the patch: re-applying the Deployment never undoes the HPA's scaling.
    assert "replicas" not in builders.deployment(spec, SETTINGS)["spec"]
    children = builders.serving_children(spec, SETTINGS)
    assert children[-1]["kind"] == "HorizontalPodAutoscaler"  # after the Deployment it scales
    hpa = children[-1]
    assert hpa["apiVersion"] == "autoscaling/v2beta2"
    assert hpa["metadata"]["name"] == "soccer-server" and hpa["metadata"]["namespace"] == "vision"
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "soccer-server"},
        "minReplicas": 2, "maxReplicas": 6,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 70}}}]}
    assert builders.horizontal_pod_autoscaler(spec, "autoscaling/v2")["apiVersion"] == "autoscaling/v2"


def test_autoscaling_defaults_and_a_custom_pods_metric() -> None:
    default = builders.horizontal_pod_autoscaler(make_spec({"serving": {"autoscaling": {}}}))
    assert default is not None
    assert (default["spec"]["minReplicas"], default["spec"]["maxReplicas"]) == (1, 4)
    assert default["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    custom = builders.horizontal_pod_autoscaler(make_spec({"serving": {"autoscaling": {
        "maxReplicas": 8, "metric": {"name": "kontinual_server_requests_per_second", "targetAverageValue": "20"}}}}))
    assert custom is not None
    # With only a custom metric, CPU is not a target unless asked for.
    assert custom["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "kontinual_server_requests_per_second"},
        "target": {"type": "AverageValue", "averageValue": "20"}}}]


@pytest.mark.parametrize("autoscaling, message", [
    ({"minReplicas": 5, "maxReplicas": 2}, "spec.serving.autoscaling.maxReplicas must be >= minReplicas (5), got 2"),
    ({"minReplicas": 0}, "spec.serving.autoscaling.minReplicas must be >= 1, got 0"),
    ({"metric": {"name": "rps"}}, "spec.serving.autoscaling.metric.targetAverageValue must be a positive quantity"),
    ({"metric": {"targetAverageValue": "5"}}, "spec.serving.autoscaling.metric.name is required"),
])
def test_bad_autoscaling_names_the_field(autoscaling: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        make_spec({"serving": {"autoscaling": autoscaling}})


def test_a_cpu_target_needs_a_cpu_request() -> None:
    with pytest.raises(SpecError, match=r"targetCPUUtilizationPercentage needs spec.serving.resources.requests.cpu"):
        make_spec({"serving": {"resources": {"limits": {"memory": "2Gi"}}, "autoscaling": {}}})
    # The default resources request a CPU; a custom-metric-only HPA needs none.
    make_spec({"serving": {"resources": {"limits": {"memory": "2Gi"}},
                           "autoscaling": {"metric": {"name": "rps", "targetAverageValue": 10}}}})


# --- storage: a claim only when something mounts it ------------------------------------------


@pytest.mark.parametrize("uri", [ZOO, "https://models.example/yolo.onnx", "file:///models/yolo.onnx"])
def test_serve_only_with_a_seed_outside_the_claim_creates_no_claim(uri: str) -> None:
    spec = make_spec(uri=uri)
    assert builders.model_claim(spec) is None
    assert "PersistentVolumeClaim" not in kinds(spec)
    assert "models" not in {v["name"] for v in pod_spec(builders.deployment(spec, SETTINGS))["volumes"]}


def test_the_claim_exists_when_training_writes_or_the_server_reads_it() -> None:
    assert "PersistentVolumeClaim" in kinds(make_spec({"training": TRAINING}))
    assert "PersistentVolumeClaim" in kinds(make_spec(uri="pvc://soccer-models/seed/model.onnx"))
    # A trained version is served from the claim even after spec.training is removed.
    serve_only = make_spec()
    assert "PersistentVolumeClaim" in kinds(serve_only, ModelTarget.trained(serve_only, 2, "ab" * 32))


# --- storage: ReadWriteOnce co-locates the pods that mount the claim --------------------------


def test_rwo_training_job_and_claim_mounting_server_pods_share_one_node() -> None:
    spec = make_spec({"training": TRAINING})
    job = jobs.training_job(spec, SETTINGS, version=2, base_weights=1)
    assert job["spec"]["template"]["metadata"]["labels"]["kontinual.io/mounts-models"] == "true"
    assert colocation_terms(job) == [COLOCATION]
    trained = builders.deployment(spec, SETTINGS, ModelTarget.trained(spec, 1, "ab" * 32))
    assert trained["spec"]["template"]["metadata"]["labels"]["kontinual.io/mounts-models"] == "true"
    assert colocation_terms(trained) == [COLOCATION]
    # The seed model does not come from the claim: those server pods may go anywhere.
    seed = builders.deployment(spec, SETTINGS)
    assert seed["spec"]["template"]["metadata"]["labels"]["kontinual.io/mounts-models"] == "false"
    assert colocation_terms(seed) == []
    assert builders.colocation_conflict(spec) is None


def test_rwx_claims_let_jobs_and_servers_spread_over_nodes() -> None:
    spec = make_spec({"training": TRAINING, "storage": {"pvc": {"accessModes": ["ReadWriteMany"]}}})
    assert colocation_terms(jobs.training_job(spec, SETTINGS, version=1, base_weights=None)) == []
    assert colocation_terms(builders.deployment(spec, SETTINGS, ModelTarget.trained(spec, 1))) == []


def test_user_affinity_is_kept_and_the_colocation_term_added() -> None:
    node_affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}]}}
    user_term = {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}
    spec = make_spec({"training": {**TRAINING, "affinity": {
        "nodeAffinity": node_affinity, "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [user_term]}}}})
    affinity = pod_spec(jobs.training_job(spec, SETTINGS, version=1, base_weights=None))["affinity"]
    assert affinity["nodeAffinity"] == node_affinity
    assert affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == [user_term, COLOCATION]
    assert spec.training is not None and "podAffinity" in spec.training.affinity  # the spec is not mutated
    assert len(spec.training.affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]) == 1


def test_the_operator_says_when_training_cannot_follow_the_claim() -> None:
    spec = make_spec({"training": {**TRAINING, "nodeSelector": {"pool": "gpu"}},
                      "serving": {"nodeSelector": {"pool": "cpu"}}})
    message = builders.colocation_conflict(spec)
    assert message is not None and "ReadWriteOnce" in message and "ReadWriteMany" in message
    rwx = make_spec({"training": {**TRAINING, "nodeSelector": {"pool": "gpu"}},
                     "storage": {"pvc": {"accessModes": ["ReadWriteMany"]}}})
    assert builders.colocation_conflict(rwx) is None


# --- training imagePullSecrets -----------------------------------------------------------------


def test_training_image_pull_secrets_reach_the_job() -> None:
    spec = make_spec({"training": {**TRAINING, "image": "private.example/trainer:1",
                                   "imagePullSecrets": [{"name": "regcred"}]}})
    job = jobs.training_job(spec, SETTINGS, version=1, base_weights=None)
    assert pod_spec(job)["imagePullSecrets"] == [{"name": "regcred"}]
    assert "imagePullSecrets" not in pod_spec(jobs.training_job(make_spec({"training": TRAINING}), SETTINGS,
                                                                version=1, base_weights=None))
    with pytest.raises(SpecError, match=r"^spec.training.imagePullSecrets entries must be \{name: <secret name>\}"):
        make_spec({"training": {**TRAINING, "imagePullSecrets": [{"secret": "regcred"}]}})
