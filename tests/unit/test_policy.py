"""Policy over every manifest the builders emit: hardening, resources, probes, ownership, labels, no secrets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml

from kontinual.controller import builders, jobs
from kontinual.controller.builders import ModelTarget
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec, parse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAKE_KEY = "rf-FAKE-key-3f9a1c77d2e04b51"  # recognizable; must never reach a manifest
SETTINGS = Settings()
UID = "0b6a3c2e-policy-uid"
PARENT_LABELS = {"argocd.argoproj.io/instance": "vision-apps", "team": "vision", "kopf.zalando.org/x": "y"}
PARENT_ANNOTATIONS = {
    "kopf.zalando.org/last-handled-configuration": "{}",
    "kontinual.io/last-handled-configuration": "{}",
    # A careless `kubectl apply` of a List that held the Secret leaves its content here.
    "kubectl.kubernetes.io/last-applied-configuration": f'{{"stringData": {{"apiKey": "{FAKE_KEY}"}}}}',
}
ROBOFLOW = {"workspace": "acme", "project": "soccer-players", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}
COMPONENT = {"ConfigMap": "server", "Deployment": "server", "Service": "server", "NetworkPolicy": "server",
             "PersistentVolumeClaim": "storage", "Job": "training"}


def example_crs() -> dict[str, dict[str, Any]]:
    crs = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ContinualModel":
                crs[f"{path.stem}:{doc['metadata']['name']}"] = doc
    return crs


def variant(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": name, "namespace": "team-a"}, "spec": spec}


VARIANTS = {
    "pvc-model": variant("pvcmodel", {"model": {"uri": "pvc://store/yolo/model.onnx"},
                                      "storage": {"pvc": {"claimName": "store"}}}),
    "https-model": variant("httpsmodel", {"model": {"uri": "https://models.example.com/m.onnx"},
                                          "serving": {"replicas": 2, "numCores": 2}}),
    "file-logging-training": variant("full", {
        "model": {"uri": "file:///opt/models/yolov5n.onnx"}, "classNames": ["ball"],
        "dataLogging": {"uploadPredictions": True, "roboflow": ROBOFLOW},
        "serving": {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]}},
        "training": {"recipe": {"uri": "https://recipes.example.com/r.yaml"},
                     "baseWeights": "https://models.example.com/yolov5n.pt",
                     "resources": {"limits": {"nvidia.com/gpu": 1}}, "tolerations": [{"operator": "Exists"}]}}),
    "training-own-dataset": variant("trainonly", {
        "model": {"uri": "zoo:cv/detection/yolov5-n/pytorch/ultralytics/coco/base-none"},
        "training": {"dataset": dict(ROBOFLOW, version="4"), "baseWeights": "pvc://trainonly-models/seed/yolov5n.pt"}}),
}


def with_parent_metadata(cr: dict[str, Any]) -> dict[str, Any]:
    cr = copy.deepcopy(cr)
    meta = cr.setdefault("metadata", {})
    meta.setdefault("namespace", "default")
    meta.update(uid=UID, generation=3, labels=dict(PARENT_LABELS), annotations=dict(PARENT_ANNOTATIONS),
                finalizers=["kontinual.io/finalizer"])
    return cr


def manifests_for(spec: Spec) -> list[dict[str, Any]]:
    """Every child the operator can emit for this spec: seed and trained serving, training Jobs."""
    out = builders.serving_children(spec, SETTINGS)
    out += builders.serving_children(spec, SETTINGS, ModelTarget.trained(spec, 2, sha256="c" * 64))
    if spec.training is not None:
        out.append(jobs.training_job(spec, SETTINGS, version=1, base_weights=None))
        out.append(jobs.training_job(spec, SETTINGS, version=3, base_weights=2))
    return out


CASES = {**example_crs(), **VARIANTS}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request: pytest.FixtureRequest) -> tuple[Spec, list[dict[str, Any]]]:
    spec = parse(with_parent_metadata(CASES[request.param]), SETTINGS)
    return spec, manifests_for(spec)


def test_both_examples_are_covered() -> None:
    names = {key.split(":")[0] for key in example_crs()}
    assert {"minimal", "soccer"} <= names


def test_every_kind_is_covered() -> None:
    kinds = set()
    for cr in CASES.values():
        kinds |= {m["kind"] for m in manifests_for(parse(with_parent_metadata(cr), SETTINGS))}
    assert kinds == set(COMPONENT)


def pod_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    template = manifest.get("spec", {}).get("template")
    return [template["spec"]] if template else []


def metas(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The object's metadata and, for workloads, its pod template's."""
    template = manifest.get("spec", {}).get("template")
    return [manifest["metadata"]] + ([template["metadata"]] if template else [])


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) for every key and value, recursively (YAML text in a ConfigMap included)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{path}.{k}", str(k)
            yield from strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, f"{path}[{i}]")
    elif value is not None:
        yield path, str(value)


def test_every_manifest_is_a_valid_kubernetes_object(case: tuple[Spec, list]) -> None:
    _, manifests = case
    for manifest in manifests:
        # strict: an unknown or misspelt field fails instead of being dropped by the API server
        kubernetes_validate.validate(manifest, "1.30", strict=True)


# --- hardening -----------------------------------------------------------------------------------


def test_pods_run_as_non_root_with_hardened_containers(case: tuple[Spec, list]) -> None:
    _, manifests = case
    for manifest in manifests:
        for pod in pod_specs(manifest):
            where = f"{manifest['kind']} {manifest['metadata']['name']}"
            pod_ctx = pod.get("securityContext", {})
            assert pod_ctx.get("runAsNonRoot") is True, where
            assert pod_ctx.get("runAsUser", 1) != 0, where
            assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert pod.get("automountServiceAccountToken") is False, where
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
            assert not [v for v in pod.get("volumes", []) if "hostPath" in v], where
            for c in containers(pod):
                ctx = c.get("securityContext", {})
                cwhere = f"{where} container {c['name']}"
                assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, cwhere
                assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) != 0, cwhere
                assert ctx.get("readOnlyRootFilesystem") is True, cwhere
                assert ctx.get("allowPrivilegeEscalation") is False, cwhere
                assert ctx.get("privileged") in (None, False), cwhere
                assert "ALL" in ctx.get("capabilities", {}).get("drop", []), cwhere
                assert not ctx.get("capabilities", {}).get("add"), cwhere


def test_read_only_containers_get_a_writable_tmp(case: tuple[Spec, list]) -> None:
    """With a read-only root, HOME and caches under /tmp need a writable emptyDir there."""
    _, manifests = case
    for manifest in manifests:
        for pod in pod_specs(manifest):
            empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
            for c in pod["containers"]:
                env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
                if any(v.startswith("/tmp") for v in env.values()):
                    tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                    assert tmp and tmp[0]["name"] in empty_dirs and not tmp[0].get("readOnly"), c["name"]


def test_every_container_has_resources(case: tuple[Spec, list]) -> None:
    _, manifests = case
    for manifest in manifests:
        for pod in pod_specs(manifest):
            for c in containers(pod):
                resources = c.get("resources") or {}
                where = f"{manifest['kind']} container {c['name']}"
                assert resources.get("requests") or resources.get("limits"), where
                if c["name"] in ("server", "fetch-model", "verify-model"):
                    assert resources["requests"].get("cpu") and resources["requests"].get("memory"), where
                    assert resources["limits"].get("memory"), where


def test_server_containers_have_all_three_probes(case: tuple[Spec, list]) -> None:
    spec, manifests = case
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    assert deployments
    # Readiness: DeepSparse's /v2/health/ready; the kserve runtime's is the model's own V2 ready route.
    ready = "/v2/health/ready" if spec.serving.runtime == "deepsparse" else f"/v2/models/{spec.name}/ready"
    for deploy in deployments:
        (server,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
        assert server["readinessProbe"]["httpGet"]["path"] == ready
        for probe in ("livenessProbe", "startupProbe"):
            assert server[probe]["httpGet"]["path"].startswith("/v2/health/"), probe


def test_jobs_do_not_restart_and_are_bounded(case: tuple[Spec, list]) -> None:
    _, manifests = case
    for job in (m for m in manifests if m["kind"] == "Job"):
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["backoffLimit"] >= 0
        (trainer,) = job["spec"]["template"]["spec"]["containers"]
        assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError"


# --- ownership and labels -----------------------------------------------------------------------


def test_every_child_is_owned_by_the_continual_model(case: tuple[Spec, list]) -> None:
    spec, manifests = case
    for manifest in manifests:
        (owner,) = manifest["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel", "name": spec.name,
                         "uid": UID, "controller": True, "blockOwnerDeletion": True}
        assert manifest["metadata"]["namespace"] == spec.namespace


def test_every_child_and_pod_template_carries_the_four_labels(case: tuple[Spec, list]) -> None:
    spec, manifests = case
    for manifest in manifests:
        wanted = {"app.kubernetes.io/managed-by": "kontinual", "app.kubernetes.io/instance": spec.name,
                  "app.kubernetes.io/component": COMPONENT[manifest["kind"]], "kontinual.io/model": spec.name}
        for labels in (meta["labels"] for meta in metas(manifest)):
            assert wanted.items() <= labels.items(), (manifest["kind"], labels)
            assert all(len(v) <= 63 for v in labels.values())


def test_parent_labels_and_annotations_are_not_copied(case: tuple[Spec, list]) -> None:
    _, manifests = case
    for manifest in manifests:
        for meta in metas(manifest):
            assert not set(PARENT_LABELS) & set(meta.get("labels", {})), manifest["kind"]
            assert not set(PARENT_ANNOTATIONS) & set(meta.get("annotations", {})), manifest["kind"]
            assert "finalizers" not in meta


def test_no_kopf_marks_on_children(case: tuple[Spec, list]) -> None:
    _, manifests = case
    for manifest in manifests:
        for meta in metas(manifest):
            for key, value in {**meta.get("labels", {}), **meta.get("annotations", {})}.items():
                assert "kopf" not in key and "kopf" not in value, (manifest["kind"], key)


# --- secrets -------------------------------------------------------------------------------------


def test_no_secret_value_anywhere(case: tuple[Spec, list], monkeypatch: pytest.MonkeyPatch) -> None:
    # The key is also in the operator's environment, where a careless builder could pick it up.
    monkeypatch.setenv("ROBOFLOW_API_KEY", FAKE_KEY)
    monkeypatch.setenv("API_KEY", FAKE_KEY)
    spec, _ = case
    manifests = manifests_for(spec)
    for manifest in manifests:
        for path, text in strings(manifest):
            assert FAKE_KEY not in text, f"{manifest['kind']} {manifest['metadata']['name']}{path}"
        assert FAKE_KEY not in yaml.safe_dump(manifest)


def test_secrets_reach_pods_only_as_secret_key_refs(case: tuple[Spec, list]) -> None:
    spec, manifests = case
    assert all(m["kind"] != "Secret" for m in manifests)
    for manifest in manifests:
        for pod in pod_specs(manifest):
            for c in containers(pod):
                assert "envFrom" not in c
                for env in c.get("env", []):
                    if any(word in env["name"].upper() for word in ("KEY", "TOKEN", "PASSWORD", "SECRET")):
                        assert "value" not in env, (c["name"], env["name"])
                        assert set(env["valueFrom"]) == {"secretKeyRef"}, (c["name"], env["name"])
            for volume in pod.get("volumes", []):
                assert "secret" not in volume, volume["name"]
    for cm in (m for m in manifests if m["kind"] == "ConfigMap"):
        text = "\n".join(cm["data"].values()).lower()
        assert "api_key:" not in text and "apikey:" not in text


def test_api_key_secret_ref_is_the_one_the_user_named(case: tuple[Spec, list]) -> None:
    spec, manifests = case
    refs = set()
    for manifest in manifests:
        for pod in pod_specs(manifest):
            for c in containers(pod):
                for env in c.get("env", []):
                    if "valueFrom" in env and "secretKeyRef" in env["valueFrom"]:
                        ref = env["valueFrom"]["secretKeyRef"]
                        refs.add((ref["name"], ref["key"]))
    wanted = set()
    if spec.data_logging:
        wanted.add((spec.data_logging.roboflow.api_key.name, spec.data_logging.roboflow.api_key.key))
    if spec.training:
        wanted.add((spec.training.dataset.api_key.name, spec.training.dataset.api_key.key))
    assert refs == wanted
