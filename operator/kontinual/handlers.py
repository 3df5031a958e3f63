"""kopf wiring: thin handlers that all call the one reconcile; operator settings; `kontinual operator`."""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf
from kopf._core.intents.registries import SmartOperatorRegistry  # the default registry's class: adds kopf's login handlers

from kontinual import GROUP, PLURAL, VERSION, k8s
from kontinual.logs import setup_logging
from kontinual.reconcile import Outcome, forget, reconcile
from kontinual.settings import Settings

log = logging.getLogger(__name__)
registry = SmartOperatorRegistry()  # includes kopf's kubeconfig/in-cluster login
CHILD_LABELS = {"app.kubernetes.io/managed-by": "kontinual"}
MODEL_LABEL = f"{GROUP}/model"
# What kopf itself calls besides our resources (checked against the chart's RBAC with k8s.API_USAGE).
FRAMEWORK_API_USAGE: list[tuple[str, str, tuple[str, ...]]] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", ("get", "list", "watch")),
    ("", "namespaces", ("get", "list", "watch")),
    ("", "events", ("create",)),
    ("events.k8s.io", "events", ("create",)),
    (GROUP, PLURAL, ("get", "list", "watch", "patch")),
]


class _State:
    settings: Settings = Settings()
    last_reconciled: dict[str, float] = {}


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's bookkeeping in status under our own name, and no noise Events for every handler run.

    With status storage the operator writes nothing to a ContinualModel's metadata but its
    finalizer `kontinual.io/finalizer`, so GitOps tools (Argo CD, Flux) see no drift.
    """
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kontinual.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kontinual.lastHandledConfiguration")
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300


@kopf.on.startup(registry=registry)
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    _State.settings = Settings.from_env()
    configure(settings)
    k8s.load_config()
    log.info("kontinual operator started: server image %s, trainer image %s",
             _State.settings.server_image, _State.settings.trainer_image)


def _emit(body: Any, outcome: Outcome) -> None:
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


def _reconcile(body: Any) -> Outcome | None:
    """Reconcile, note when, raise the outcome's Events; None when the object is gone or going."""
    outcome = reconcile(body, _State.settings)
    if outcome.body is None:
        return None
    _State.last_reconciled[outcome.body["metadata"]["uid"]] = time.monotonic()
    _emit(outcome.body, outcome)
    return outcome


def _run(body: kopf.Body, *, announce: bool) -> None:
    outcome = _reconcile(body)
    if outcome is None:
        return
    if outcome.invalid:
        if announce:
            kopf.warn(body, reason="InvalidSpec", message=outcome.invalid)
            raise kopf.PermanentError(outcome.invalid)  # no retry: only a spec change can fix it
        return
    if outcome.error:
        raise kopf.TemporaryError(outcome.error, delay=10)


@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
def on_change(body: kopf.Body, **_: Any) -> None:
    _run(body, announce=True)


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
def on_delete(name: str, namespace: str, uid: str, **_: Any) -> None:
    # Children go with the owner (ownerReferences); only our in-memory bookkeeping is ours to drop.
    forget(namespace, name)
    _State.last_reconciled.pop(uid, None)
    log.info("%s/%s deleted; its children are garbage-collected by Kubernetes", namespace, name)


# Wakes often but reconciles only every KONTINUAL_RESYNC_SECONDS: kopf fixes the interval at import.
@kopf.timer(GROUP, VERSION, PLURAL, interval=5, initial_delay=5, registry=registry)
def resync(body: kopf.Body, uid: str, **_: Any) -> None:
    """Repair drift no watch event told us about (e.g. a ConfigMap edited by hand)."""
    last = _State.last_reconciled.get(uid, 0.0)
    if time.monotonic() - last >= _State.settings.resync_seconds:
        _run(body, announce=False)


def _on_child(namespace: str, labels: dict[str, str]) -> None:
    parent = labels.get(MODEL_LABEL)
    if not parent:
        return
    outcome = _reconcile({"metadata": {"namespace": namespace, "name": parent}})
    if outcome is not None and outcome.error:
        log.warning("%s/%s: %s", namespace, parent, outcome.error)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS, registry=registry)
def on_deployment(namespace: str, labels: dict[str, str], **_: Any) -> None:
    """Rollout progress (status) and hand edits or deletions of the server Deployment."""
    _on_child(namespace, labels)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS, registry=registry)
def on_job(namespace: str, labels: dict[str, str], **_: Any) -> None:
    """A training Job started, finished or vanished: record results, start a queued run."""
    _on_child(namespace, labels)


@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS, registry=registry)
@kopf.on.event("", "v1", "services", labels=CHILD_LABELS, registry=registry)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=CHILD_LABELS, registry=registry)
def on_simple_child(event: dict[str, Any], namespace: str, labels: dict[str, str], **_: Any) -> None:
    """A config, service or claim deleted or edited by hand comes back as specified."""
    if event.get("type") in ("DELETED", "MODIFIED"):
        _on_child(namespace, labels)


def run_operator(namespaces: list[str], all_namespaces: bool, health_port: int | None) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    try:
        k8s.load_config()
    except Exception as exc:  # noqa: BLE001 - any config failure: say it once and exit, no crash loop of tracebacks
        log.error("no Kubernetes API to talk to: %s (set KUBECONFIG, or run in a pod with a ServiceAccount)", exc)
        return 1
    watched = [] if all_namespaces else (namespaces or list(settings.watch_namespaces))
    port = health_port or settings.health_port
    log.info("watching %s", ", ".join(watched) if watched else "all namespaces")
    kopf.run(
        registry=registry,
        clusterwide=not watched,
        namespaces=watched,
        standalone=True,
        liveness_endpoint=f"http://{settings.health_host}:{port}/healthz",
    )
    return 0
