"""The one idempotent reconcile: read -> parse -> build -> apply -> observe -> report status."""

from __future__ import annotations

import datetime
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping

from kubernetes.client.rest import ApiException

from kontinual import builders, k8s
from kontinual.builders import ModelTarget
from kontinual.settings import Settings
from kontinual.spec import Spec, SpecError, parse
from kontinual.status import (AVAILABLE, DEGRADED, RECONCILED, READY, TRAINING, Condition, availability,
                              merge_conditions, parse_conditions, roll_up)

log = logging.getLogger(__name__)
# One reconcile at a time per object: the CR's own handlers and its children's watches share it.
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found; handlers turn it into kopf errors and Events."""

    spec: Spec | None = None
    invalid: str | None = None  # the SpecError message
    error: str | None = None  # an API failure worth retrying
    status: Mapping[str, Any] | None = None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def serving_target(spec: Spec, status: Mapping[str, Any]) -> ModelTarget:
    """Which model to serve: the pinned version, else the newest promoted one, else the seed model."""
    models = [m for m in status.get("models") or [] if isinstance(m, Mapping)]
    if spec.rollout.pinned_version is not None:
        pinned = next((m for m in models if m.get("version") == spec.rollout.pinned_version), None)
        if pinned is not None:
            return ModelTarget.trained(spec, int(pinned["version"]), pinned.get("sha256"))
    serving = status.get("serving") or {}
    version = serving.get("version") or 0
    promoted = next((m for m in models if m.get("version") == version and m.get("promoted")), None)
    if promoted is not None:
        return ModelTarget.trained(spec, int(version), promoted.get("sha256"))
    return ModelTarget.seed(spec)


def lock_for(namespace: str, name: str) -> threading.Lock:
    return _locks[(namespace, name)]


def forget(namespace: str, name: str) -> None:
    _locks.pop((namespace, name), None)


def reconcile(body: Mapping[str, Any], settings: Settings) -> Outcome:
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    with lock_for(namespace, name):
        return _reconcile(body, settings)


def _reconcile(body: Mapping[str, Any], settings: Settings) -> Outcome:
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    generation = int(meta.get("generation") or 0)
    previous: Mapping[str, Any] = body.get("status") or {}
    kept = parse_conditions(previous.get("conditions"))
    try:
        spec = parse(body, settings)
    except SpecError as exc:
        message = str(exc)
        conditions = [Condition(RECONCILED, False, "InvalidSpec", message), *_kept(kept, AVAILABLE)]
        _report(namespace, name, previous, generation, conditions, {})
        return Outcome(invalid=message)

    target = serving_target(spec, previous)
    deploy: dict[str, Any] | None = None
    try:
        for child in builders.serving_children(spec, settings, target):
            result = k8s.apply(child, metadata_only=child["kind"] == "PersistentVolumeClaim")
            if child["kind"] == "Deployment":
                deploy = result
    except ApiException as exc:
        message = f"applying children failed: {k8s.api_error(exc)}"
        conditions = [Condition(RECONCILED, False, "ApplyFailed", message), *_kept(kept, AVAILABLE)]
        _report(namespace, name, previous, generation, conditions, {})
        return Outcome(spec=spec, error=message)

    wanted_generation = (deploy or {}).get("metadata", {}).get("generation")
    available = availability(deploy, wanted_generation)
    conditions = [Condition(RECONCILED, True, "ChildrenApplied", "server ConfigMap, Deployment, Service and storage match the spec"),
                  available]
    serving = {
        "version": target.version,
        "uri": target.source.uri,
        "sha256": target.sha256,
        "url": builders.server_url(spec),
        "readyReplicas": ((deploy or {}).get("status") or {}).get("readyReplicas") or 0,
    }
    status = _report(namespace, name, previous, generation, conditions, {"serving": serving})
    return Outcome(spec=spec, status=status)


def _kept(kept: Mapping[str, Condition], *types: str) -> list[Condition]:
    return [kept[t] for t in types if t in kept]


def _report(namespace: str, name: str, previous: Mapping[str, Any], generation: int,
            conditions: list[Condition], fields: dict[str, Any]) -> dict[str, Any]:
    """Write status (only when it changed): our conditions, the kept Training/Degraded, Ready on top."""
    kept = parse_conditions(previous.get("conditions"))
    ours = {c.type for c in conditions}
    conditions += [kept[t] for t in (TRAINING, DEGRADED) if t in kept and t not in ours]
    conditions.append(roll_up(conditions))
    status = {
        "observedGeneration": generation,
        "conditions": merge_conditions(conditions, previous.get("conditions"), generation, now()),
        **fields,
    }
    if any(previous.get(k) != v for k, v in status.items()):
        k8s.patch_status(namespace, name, status)
        ready = next(c for c in conditions if c.type == READY)
        log.info("%s/%s: Ready=%s (%s) %s", namespace, name, ready.status, ready.reason, ready.message)
    return status
