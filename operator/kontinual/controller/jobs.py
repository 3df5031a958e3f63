"""Pure builder of the training Job `NAME-train-<N>`: one `kontinual train` run writing /models/v<N>."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping

from kontinual.common.names import MOUNTS_MODELS_LABEL, ROBOFLOW_API_KEY_ENV, TERMINATION_LOG, VERSION_LABEL
from kontinual.controller.builders import (MODELS_MOUNT, container_security, fetch_container, labels,
                                metadata, pod_security, sparsezoo_env,
                                with_colocation)
from kontinual.common.classnames import COCO_NAMES
from kontinual.common.contract import MODEL_CHECKPOINT, RESULT_FILE, builtin_recipe, version_file
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec
from kontinual.controller.statusdata import ModelRecord

RECIPE_DIR = "/etc/kontinual/recipe"
INPUTS = "/inputs"  # downloaded or other-claim inputs (recipe, base weights)
TRANSFER_QUERY = "recipe_type=transfer_learn"  # SparseZoo's name for sparse transfer learning
DEFAULT_TRAINER_RESOURCES = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}


def job_name(spec: Spec, version: int) -> str:
    return f"{spec.name}-train-{version}"


def job_labels(spec: Spec, version: int) -> dict[str, str]:
    return {**labels(spec, "training"), VERSION_LABEL: str(version)}


class _Inputs:
    """Volumes, mounts and init containers that turn input URIs into files the trainer can open."""

    def __init__(self, spec: Spec, image: str) -> None:
        self.spec, self.image = spec, image
        self.volumes: list[dict[str, Any]] = []
        self.mounts: list[dict[str, Any]] = []
        self.init: list[dict[str, Any]] = []

    def path(self, uri: str, role: str) -> str:
        """A local path for `uri` (file://, pvc://, https://), a built-in recipe's name for builtin:<name>;
        anything else (zoo:) is passed as is."""
        name = builtin_recipe(uri)
        if name is not None:
            return name
        if uri.startswith("file://"):
            return uri[len("file://"):]
        if uri.startswith("pvc://"):
            claim, _, rest = uri[len("pvc://"):].partition("/")
            if claim == self.spec.storage.claim_name:  # the model claim is mounted at /models already
                return f"{MODELS_MOUNT}/{rest}"
            name = f"{role}-claim"
            self.volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            self.mounts.append({"name": name, "mountPath": f"{INPUTS}/{name}", "readOnly": True})
            return f"{INPUTS}/{name}/{rest}"
        if uri.startswith("https://"):
            if not any(v["name"] == "inputs" for v in self.volumes):
                self.volumes.append({"name": "inputs", "emptyDir": {}})
                self.mounts.append({"name": "inputs", "mountPath": INPUTS, "readOnly": True})
            suffix = "".join(PurePosixPath(uri.split("?")[0]).suffixes[-1:]) or ".bin"
            dest = f"{INPUTS}/{role}{suffix}"
            self.init.append(fetch_container(f"fetch-{role}", self.image, uri, dest,
                                             {"name": "inputs", "mountPath": INPUTS}))
            return dest
        return uri


def transfer_stub(stub: str) -> str:
    """A SparseZoo stub narrowed to its sparse transfer-learning checkpoint and recipe."""
    return f"{stub.split('?', 1)[0]}?{TRANSFER_QUERY}"


def base_weights_uri(spec: Spec, serving_version: int | None) -> str:
    """Continue from the serving model's model.pt; the first run starts from spec.training.baseWeights,
    or (empty) from the served zoo: stub's transfer checkpoint. spec.parse refuses an empty
    baseWeights with a seed that is not a stub, so there is always a starting point."""
    if serving_version:
        return f"pvc://{spec.storage.claim_name}/{version_file(serving_version, MODEL_CHECKPOINT)}"
    assert spec.training is not None
    if spec.training.base_weights:
        return spec.training.base_weights
    assert spec.model.scheme == "zoo", "spec.parse requires baseWeights for a seed that is not a zoo: stub"
    return transfer_stub(spec.model.uri)


def recipe_uri(spec: Spec) -> str | None:
    """spec.training.recipe.uri; unset (and no ConfigMap): the transfer recipe of the zoo: stub the
    lineage started from (baseWeights, else the served seed), for every run; else the trainer's built-in."""
    assert spec.training is not None
    recipe = spec.training.recipe
    if recipe.uri or recipe.config_map is not None:
        return recipe.uri
    start = spec.training.base_weights or spec.model.uri
    return transfer_stub(start) if start.startswith("zoo:") else None


@dataclass(frozen=True)
class Baseline:
    """The serving model the run evaluates next to its candidate: version (0 = seed), URI, classes."""

    version: int
    uri: str
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, spec: Spec, serving: ModelRecord | None) -> "Baseline":
        """From the serving model's status.models[] record, or the seed when None."""
        if serving is None:
            return cls(0, spec.model.uri, spec.seed_class_names)
        file, _ = serving.served_file(spec.serving.runtime)  # the file the server runs, as the candidate's
        return cls(serving.version, f"pvc://{spec.storage.claim_name}/{version_file(serving.version, file)}",
                   serving.names(spec.class_names))


def generation_settings(spec: Spec) -> dict[str, Any]:
    """Roboflow's version-generation settings: resize to imageSize, no augmentation, unless the spec says."""
    assert spec.training is not None
    size, generation = spec.training.image_size, spec.training.generation
    preprocessing = {"auto-orient": True, "resize": {"width": size, "height": size, "format": "Stretch to"},
                     **generation.preprocessing}
    return {"preprocessing": preprocessing, "augmentation": dict(generation.augmentation)}


def _dataset_args(spec: Spec, labeled_at_last_run: int | None) -> list[str]:
    assert spec.training is not None
    training = spec.training
    if not training.generation.enabled or training.dataset_version != "latest":
        return []
    args = ["--generate-version", json.dumps(generation_settings(spec), sort_keys=True, separators=(",", ":")),
            "--generate-timeout", str(training.generation.timeout_seconds)]
    if labeled_at_last_run is not None:  # generate only if Roboflow has more labeled images than then
        args += ["--labeled-at-last-run", str(labeled_at_last_run)]
    return args


def training_job(spec: Spec, settings: Settings, *, version: int, base_weights: int | None,
                 baseline: Baseline | None = None, labeled_at_last_run: int | None = None,
                 annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Job for training run `version`; `base_weights` is the serving version to continue from,
    `baseline` the serving model the candidate is compared with (default: the seed); `annotations`
    record on the Job what it serves (the train request, the trigger), for an operator that restarts."""
    training = spec.training
    if training is None:
        raise ValueError("training_job needs spec.training")
    dataset = training.dataset
    image = training.image or settings.trainer_image
    inputs = _Inputs(spec, image)
    args = [
        "--output-dir", MODELS_MOUNT,
        "--version", str(version),
        "--result-file", TERMINATION_LOG,
        "--roboflow-workspace", dataset.workspace,
        "--roboflow-project", dataset.project,
        "--dataset-version", training.dataset_version,
        "--base-weights", inputs.path(base_weights_uri(spec, base_weights), "weights"),
        "--epochs", str(training.epochs),
        "--image-size", str(training.image_size),
        "--batch-size", str(training.batch_size),
        "--device", training.device,
        # The trainer evaluates the file this runtime serves (a quantized run's QDQ export for the kserve engines).
        "--runtime", spec.serving.runtime,
    ]
    baseline = baseline or Baseline.of(spec, None)
    args += ["--baseline-model", inputs.path(baseline.uri, "baseline"), "--baseline-version", str(baseline.version)]
    if baseline.class_names:
        names = "coco" if baseline.class_names == COCO_NAMES else \
            json.dumps(list(baseline.class_names), separators=(",", ":"))
        args += ["--baseline-class-names", names]
    args += _dataset_args(spec, labeled_at_last_run)
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": spec.storage.claim_name}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # torch DataLoader workers share memory here
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODELS_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    recipe = training.recipe
    if recipe.config_map is not None:
        volumes.append({"name": "recipe", "configMap": {"name": recipe.config_map.name,
                                                        "items": [{"key": recipe.config_map.key, "path": "recipe.yaml"}]}})
        mounts.append({"name": "recipe", "mountPath": RECIPE_DIR, "readOnly": True})
        args += ["--recipe", f"{RECIPE_DIR}/recipe.yaml"]
    elif recipe_uri(spec):
        args += ["--recipe", inputs.path(str(recipe_uri(spec)), "recipe")]
    volumes += inputs.volumes
    mounts += inputs.mounts
    env = [
        {"name": ROBOFLOW_API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": dataset.api_key.name,
                                                                   "key": dataset.api_key.key}}},
        {"name": "API_URL", "value": dataset.api_url},  # the roboflow SDK's API base
        {"name": "NM_DISABLE_ANALYTICS", "value": "1"},
        *sparsezoo_env(settings),
        {"name": "HOME", "value": "/tmp"},
        {"name": "YOLO_CONFIG_DIR", "value": "/tmp/yolo"},
        {"name": "YOLOV5_CONFIG_DIR", "value": "/tmp/yolo"},
    ]
    container = {
        "name": "trainer",
        "image": image,
        "command": ["kontinual", "train"],
        "args": args,
        "env": env,
        "resources": dict(training.resources) or DEFAULT_TRAINER_RESOURCES,
        "volumeMounts": mounts,
        # The result JSON is the termination message; if the trainer dies before writing it,
        # the log tail tells the operator (and the user) why.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if inputs.init:
        pod_spec["initContainers"] = inputs.init
    _schedule(spec, pod_spec)
    meta = metadata(spec, job_name(spec, version), "training")
    meta["labels"] = job_labels(spec, version)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": training.backoff_limit,
            "activeDeadlineSeconds": training.active_deadline_seconds,
            "ttlSecondsAfterFinished": training.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": {**job_labels(spec, version), MOUNTS_MODELS_LABEL: "true"}},
                         "spec": pod_spec},
        },
    }


def _schedule(spec: Spec, pod_spec: dict[str, Any]) -> None:
    """spec.training's node placement and pull secrets; with a single-node claim, next to the server pods."""
    training = spec.training
    assert training is not None
    if training.node_selector:
        pod_spec["nodeSelector"] = dict(training.node_selector)
    if training.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in training.tolerations]
    affinity = with_colocation(spec, training.affinity)
    if affinity:
        pod_spec["affinity"] = affinity
    if training.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in training.image_pull_secrets]


def result_reader_name(spec: Spec, version: int) -> str:
    return f"{spec.name}-result-{version}"


RESULT_READER = "result-reader"  # the reader Job's component label and its container's name
READER_TTL_SECONDS = 600  # the reader is read within seconds of finishing; then the TTL controller removes it


def result_reader_job(spec: Spec, settings: Settings, version: int) -> dict[str, Any]:
    """`NAME-result-<N>`: prints v<N>/result.json from the model claim (read-only) as its termination message.

    For a run whose pod (or Job) is gone before the operator read its result: the trainer wrote
    the same JSON into its version folder. No training labels (it is not a run), no token, no
    network, the training pods' security and placement.
    """
    training = spec.training
    if training is None:
        raise ValueError("result_reader_job needs spec.training")
    container = {
        "name": RESULT_READER,
        "image": training.image or settings.trainer_image,
        "command": ["cp", f"{MODELS_MOUNT}/{version_file(version, RESULT_FILE)}", TERMINATION_LOG],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",  # only the file: a missing result must not read as one
        "securityContext": container_security(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": spec.storage.claim_name,
                                                                 "readOnly": True}}],
    }
    _schedule(spec, pod_spec)
    meta = metadata(spec, result_reader_name(spec, version), RESULT_READER)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": READER_TTL_SECONDS,
            "template": {"metadata": {"labels": {**labels(spec, RESULT_READER), MOUNTS_MODELS_LABEL: "true"}},
                         "spec": pod_spec},
        },
    }
