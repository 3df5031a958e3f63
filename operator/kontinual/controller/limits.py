"""Size bounds of the spec's lists, strings and maps: the CRD's maxItems/maxLength/maxProperties, checked here too."""

from __future__ import annotations

from typing import Any, Mapping

from kontinual.controller.specfields import SpecError

# Why bounds at all: etcd keeps an object only up to ~1.5 MB, and kopf stores a copy of the spec in
# the status (lastHandledConfiguration), so an oversized spec that the API server accepts would fail
# every status write and leave the object stuck with its finalizer. The same numbers are in the
# CRD (tests/unit/test_limits.py checks the two agree), so `kontinual render` refuses what the API
# server would. Keys: field paths under spec, `[]` for list items, `*` for map values.
_POD = {"image": 1024, "resources.limits": 16, "resources.limits.*": 64, "resources.requests": 16,
        "resources.requests.*": 64, "nodeSelector": 32, "nodeSelector.*": 63, "tolerations": 32,
        "tolerations[].key": 317, "tolerations[].value": 63, "affinity": 3, "imagePullSecrets": 16,
        "imagePullSecrets[].name": 253}
_SELECTOR = {"matchLabels": 32, "matchLabels.*": 63, "matchExpressions": 16, "matchExpressions[].key": 317,
             "matchExpressions[].values": 64, "matchExpressions[].values[]": 63}
_PEERS = {"": 32, "[].ipBlock.cidr": 64, "[].ipBlock.except": 32, "[].ipBlock.except[]": 64,
          **{f"[].{s}.{k}": v for s in ("podSelector", "namespaceSelector") for k, v in _SELECTOR.items()}}
_ROBOFLOW = {"workspace": 128, "project": 128, "apiKeySecretRef.name": 253, "apiKeySecretRef.key": 253,
             "apiUrl": 2048}
URI = 2048
LIMITS: dict[str, int] = {
    "classNames": 400, "classNames[]": 100,
    "model.uri": URI, "model.classNames": 400, "model.classNames[]": 100,
    **{f"serving.{k}": v for k, v in _POD.items()},
    "serving.autoscaling.metric.name": 253, "serving.autoscaling.metric.targetAverageValue": 64,
    **{f"serving.networkPolicy.{p}{k}": v for p in ("from", "metricsFrom") for k, v in _PEERS.items()},
    **{f"dataLogging.roboflow.{k}": v for k, v in _ROBOFLOW.items()},
    "dataLogging.roboflow.batch": 128, "dataLogging.roboflow.tags": 32, "dataLogging.roboflow.tags[]": 64,
    "training.trigger.schedule": 128,
    "training.dataset.version": 16, "training.dataset.preprocessing": 32, "training.dataset.augmentation": 32,
    **{f"training.dataset.{k}": v for k, v in _ROBOFLOW.items()},
    "training.baseWeights": URI, "training.recipe.configMapRef.name": 253,
    "training.recipe.configMapRef.key": 253, "training.recipe.uri": URI,
    **{f"training.{k}": v for k, v in _POD.items()},
    "storage.pvc.claimName": 253, "storage.pvc.size": 32, "storage.pvc.storageClassName": 253,
    "storage.pvc.accessModes": 4,
}
# Every path that leads to a bounded one (so the walk skips the rest of the spec).
_PREFIXES = {key[:i] for key in LIMITS for i in range(len(key) + 1) if i == len(key) or key[i] in ".["}


def _too_big(path: str, value: Any, limit: int) -> str:
    if isinstance(value, str):
        return f"{path} is {len(value)} characters long; at most {limit} are allowed"
    if isinstance(value, list):
        return f"{path} has {len(value)} entries; at most {limit} are allowed"
    return f"{path} has {len(value)} keys; at most {limit} are allowed"


def check(value: Any, path: str = "spec", key: str = "") -> None:
    """SpecError naming the first list, string or map of the spec that exceeds its bound."""
    limit = LIMITS.get(key) if key else None
    if limit is not None and isinstance(value, (str, list, Mapping)) and len(value) > limit:
        raise SpecError(_too_big(path, value, limit))
    if isinstance(value, list):
        if f"{key}[]" in _PREFIXES:
            for index, item in enumerate(value):
                check(item, f"{path}[{index}]", f"{key}[]")
    elif isinstance(value, Mapping):
        for name, item in value.items():
            child = f"{key}.*" if f"{key}.*" in LIMITS else (f"{key}.{name}" if key else str(name))
            if child in _PREFIXES:
                check(item, f"{path}.{name}", child)
