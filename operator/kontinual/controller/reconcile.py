"""The one idempotent reconcile: read -> parse -> build -> apply -> observe -> report status."""

from __future__ import annotations

import datetime
import logging
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client.rest import ApiException

from kontinual.common.names import ANNOTATION_MODEL_VERSION
from kontinual.controller import access, builders, decisions, k8s, polling, training_runs
from kontinual.controller.builders import ModelTarget
from kontinual.controller.settings import Settings
from kontinual.controller.statusdata import ModelRecord, ServingStatus, models_from
from kontinual.controller.spec import Spec, parse
from kontinual.controller.specfields import SpecError
from kontinual.controller.status import (AVAILABLE, DEGRADED, RECONCILED, READY, TRAINING, Condition, availability,
                              merge_conditions, parse_conditions, roll_up)
from kontinual.controller.training_runs import Event

log = logging.getLogger(__name__)
# One reconcile at a time per object: the CR's own handlers and its children's watches share it.
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found; handlers turn it into kopf errors and Events."""

    invalid: str | None = None  # the SpecError message
    error: str | None = None  # an API failure worth retrying
    status: Mapping[str, Any] | None = None  # the status written (the operator's metrics read it)
    events: tuple[Event, ...] = ()
    body: Mapping[str, Any] | None = None  # the object as read for this reconcile (None: gone)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def now() -> str:
    return decisions.iso(utcnow())


def serving_target(spec: Spec, models: Sequence[ModelRecord]) -> ModelTarget:
    """Which model to serve: the pinned version, else the newest promoted one, else the seed model."""
    model = decisions.serving_model(spec, models)
    if model is None:
        return ModelTarget.seed(spec)
    file, digest = model.served_file(spec.serving.runtime)  # the QDQ export for OpenVINO/onnxruntime, if any
    return ModelTarget.trained(spec, model.version, digest, model.names(spec.class_names), file=file)


def lock_for(namespace: str, name: str) -> threading.Lock:
    return _locks[(namespace, name)]


def forget(namespace: str, name: str) -> None:
    _locks.pop((namespace, name), None)


def reconcile(body: Mapping[str, Any], settings: Settings) -> Outcome:
    """Reconcile one ContinualModel, serialised per object and always from a fresh read.

    Handlers hand in the body kopf last saw, which can predate the status the previous reconcile
    just wrote; deciding on it could record a finished training run twice. So under the object's
    lock the object is read again, and that read includes every status write made before.
    """
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    with lock_for(namespace, name):
        fresh = k8s.get("ContinualModel", namespace, name)
        if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
            return Outcome()
        return replace(_reconcile(fresh, settings), body=fresh)


def _apply_serving(spec: Spec, settings: Settings, target: ModelTarget,
                   conflicts: list[k8s.ChildConflict]) -> dict[str, Any] | None:
    """Apply every serving child; one that belongs to someone else is skipped and added to `conflicts`."""
    deploy = None
    api = k8s.preferred_autoscaling_api() if spec.serving.autoscaling else builders.DEFAULT_AUTOSCALING_API
    for child in builders.serving_children(spec, settings, target, api):
        try:
            result = k8s.apply(child, metadata_only=child["kind"] == "PersistentVolumeClaim")
        except k8s.ChildConflict as exc:
            if all(str(c) != str(exc) for c in conflicts):
                conflicts.append(exc)
            continue
        if child["kind"] == "Deployment":
            deploy = result
    if spec.serving.autoscaling is None and spec.uid:
        # Autoscaling switched off (or never on): an HPA left behind would fight spec.serving.replicas.
        version = k8s.preferred_autoscaling_api().rpartition("/")[2]
        if k8s.delete_owned("HorizontalPodAutoscaler", spec.namespace, builders.names(spec)["server"], spec.uid,
                            version):
            log.info("%s/%s: autoscaling is off; deleted the server's HPA", spec.namespace, spec.name)
    # spec.serving.networkPolicy removed: the policy we made goes too (one someone else made stays).
    if spec.serving.network_policy is None and spec.uid and k8s.delete_owned(
            "NetworkPolicy", spec.namespace, builders.names(spec)["server"], spec.uid):
        log.info("%s/%s: spec.serving.networkPolicy is unset; deleted the server's NetworkPolicy",
                 spec.namespace, spec.name)
    return deploy


def _stalled_version(deploy: Mapping[str, Any] | None) -> int | None:
    """The model version of a Deployment template whose rollout exceeded its progress deadline."""
    if availability(deploy).reason != "ProgressDeadlineExceeded":
        return None
    annotations = (((deploy or {}).get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
    version = annotations.get(ANNOTATION_MODEL_VERSION, "0")
    return int(version) if version.isdigit() else None


def _reconcile(body: Mapping[str, Any], settings: Settings) -> Outcome:
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    generation = int(meta.get("generation") or 0)
    previous: Mapping[str, Any] = body.get("status") or {}
    kept = parse_conditions(previous.get("conditions"))
    try:
        spec = parse(body, settings)
        # Before anything that would read or reference a Secret: only Secrets marked for Kontinual.
        access.check_secrets(spec, k8s.secret_labels)
    except SpecError as exc:
        message = str(exc)
        _report(namespace, name, previous, generation,
                [Condition(RECONCILED, False, "InvalidSpec", message), *_kept(kept, AVAILABLE)], {})
        return Outcome(invalid=message)
    except ApiException as exc:
        message = f"reading the labels of the Secrets the spec names failed: {k8s.api_error(exc)}"
        _report(namespace, name, previous, generation,
                [Condition(RECONCILED, False, "ApplyFailed", message), *_kept(kept, AVAILABLE)], {})
        return Outcome(error=message)

    conditions: list[Condition] = []
    events: list[Event] = []
    fields: dict[str, Any] = {}
    models = models_from(previous.get("models"))
    poll = None
    conflicts: list[k8s.ChildConflict] = []
    try:
        if spec.training is not None:
            state = training_runs.run(spec, previous, meta.get("annotations") or {}, settings, utcnow())
            models, conditions, events, poll = state.models, state.conditions, state.events, state.poll
            fields["training"] = state.training.to_dict()
        target = serving_target(spec, models)
        deploy = _apply_serving(spec, settings, target, conflicts)
        stalled = _stalled_version(deploy)
        if stalled and stalled == target.version and spec.rollout.pinned_version is None:
            # The new model's pods never became ready: go back, and never retry this version by itself.
            message = f"v{stalled} did not become ready within {spec.serving.progress_deadline_seconds}s"
            models = decisions.mark_rolled_back(models, stalled, message)
            target = serving_target(spec, models)
            deploy = _apply_serving(spec, settings, target, conflicts)
            events.append(("Warning", "RolledBack", f"{message}; serving v{target.version} again"))
            conditions = [c for c in conditions if c.type != DEGRADED]
            conditions.append(Condition(DEGRADED, True, "RolloutFailed", f"{message}; rolled back to v{target.version}"))
    except ApiException as exc:
        message = f"applying children failed: {k8s.api_error(exc)}"
        _report(namespace, name, previous, generation,
                [Condition(RECONCILED, False, "ApplyFailed", message), *_kept(kept, AVAILABLE)], {})
        return Outcome(error=message)

    poller = polling.current()
    if poll is not None and poller is not None:
        poller.submit(poll)  # never waits: the result comes back through a later reconcile
    wanted_generation = (deploy or {}).get("metadata", {}).get("generation")
    if conflicts:
        message = "; ".join(str(c) for c in conflicts)
        reconciled = Condition(RECONCILED, False, "ChildConflict", message)
        if kept.get(RECONCILED) != reconciled:  # one Warning per new conflict, not one per reconcile
            events += [("Warning", "ChildConflict", str(c)) for c in conflicts]
    else:
        policy = ", NetworkPolicy" if spec.serving.network_policy else ""
        applied = f"server ConfigMap, Deployment, Service{policy} and storage match the spec"
        conflict = builders.colocation_conflict(spec)  # scheduling advice, not a failure
        reconciled = Condition(RECONCILED, True, "ChildrenApplied", f"{applied}; but {conflict}" if conflict else applied)
    conditions += [reconciled, availability(deploy, wanted_generation)]
    if models or spec.training is not None:
        fields["models"] = [m.to_dict() for m in models]
    fields["serving"] = ServingStatus(
        version=target.version, uri=target.source.uri, sha256=target.sha256, class_names=tuple(target.class_names),
        url=builders.server_url(spec), ready_replicas=((deploy or {}).get("status") or {}).get("readyReplicas") or 0,
    ).to_dict()
    status = _report(namespace, name, previous, generation, conditions, fields)
    return Outcome(status=status, events=tuple(events))


def _pruned(value: Any) -> Any:
    """Drop None values (a merge-patch deletes them) so unchanged status compares equal."""
    if isinstance(value, Mapping):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _replacing(previous: Any, new: Any) -> Any:
    """A merge patch that makes a nested object exactly `new`: keys it no longer has become null.

    (A plain merge patch would keep, say, the last run's `finishedAt` inside a new `lastRun`.)
    """
    if not isinstance(new, Mapping):
        return new
    old = previous if isinstance(previous, Mapping) else {}
    patch = {k: _replacing(old.get(k), v) for k, v in new.items()}
    patch.update({k: None for k in old if k not in new})
    return patch


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
    if any(_pruned(previous.get(k)) != _pruned(v) for k, v in status.items()):
        # Top level: only the fields we own; kopf may keep its own keys in status.
        k8s.patch_status(namespace, name, {k: _replacing(previous.get(k), v) for k, v in status.items()})
        ready = next(c for c in conditions if c.type == READY)
        log.info("%s/%s: Ready=%s (%s) %s", namespace, name, ready.status, ready.reason, ready.message)
    return status
