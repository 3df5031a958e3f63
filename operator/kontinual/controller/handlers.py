"""kopf wiring: thin handlers that all call the one reconcile; operator settings; `kontinual operator`."""

from __future__ import annotations

import datetime
import itertools
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import kopf

from kontinual.common.names import FINALIZER, GROUP, MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL, PLURAL, VERSION
from kontinual.controller import decisions, k8s, leader, polling
from kontinual.controller.metrics import METRICS, serve
from kontinual.controller.operator_logging import setup_logging
from kontinual.controller.reconcile import Outcome, forget, reconcile
from kontinual.controller.settings import Settings
from kontinual.controller.statusdata import TrainingStatus

log = logging.getLogger(__name__)
registry = kopf.OperatorRegistry()

CHILD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY}
# What kopf itself calls besides our resources (checked against the chart's RBAC with k8s.API_USAGE).
FRAMEWORK_API_USAGE: list[tuple[str, str, tuple[str, ...]]] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", ("get", "list", "watch")),
    ("", "namespaces", ("get", "list", "watch")),
    ("", "events", ("create",)),
    ("events.k8s.io", "events", ("create",)),
    (GROUP, PLURAL, ("get", "list", "watch", "patch")),
]


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in as the kubernetes client does (kubeconfig, or the pod's service account in a cluster)."""
    return kopf.login_via_client(**kwargs)


class _State:
    settings: Settings = Settings()
    last_reconciled: dict[str, float] = {}
    running: dict[int, float] = {}  # reconciles in progress: token -> monotonic start (for /healthz)
    tokens = itertools.count()


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's bookkeeping in status under our own name, and no noise Events for every handler run.

    With status storage the operator writes nothing to a ContinualModel's metadata but its
    finalizer `kontinual.io/finalizer`, so GitOps tools (Argo CD, Flux) see no drift.
    """
    settings.persistence.finalizer = FINALIZER
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
    polling.start(_State.settings.poll_workers, _State.settings.roboflow_timeout_seconds, _wake)
    log.info("kontinual operator started: server image %s, trainer image %s",
             _State.settings.server_image, _State.settings.trainer_image)


@kopf.on.cleanup(registry=registry)
def cleanup(**_: Any) -> None:
    polling.stop()


def _emit(body: Any, outcome: Outcome) -> None:
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


def _reconcile(body: Any) -> Outcome | None:
    """Reconcile, note when, raise the outcome's Events; None when the object is gone or going."""
    token = next(_State.tokens)
    _State.running[token] = time.monotonic()
    started = time.monotonic()
    try:
        outcome = reconcile(body, _State.settings)
    finally:
        _State.running.pop(token, None)
    if outcome.body is None:
        return None
    _count(outcome, time.monotonic() - started)
    _State.last_reconciled[outcome.body["metadata"]["uid"]] = time.monotonic()
    _emit(outcome.body, outcome)
    return outcome


def _count(outcome: Outcome, seconds: float) -> None:
    assert outcome.body is not None
    meta = outcome.body["metadata"]
    namespace, name, uid = meta.get("namespace") or "", meta["name"], meta.get("uid")
    METRICS.reconciled(namespace, name, seconds=seconds, invalid=bool(outcome.invalid), error=bool(outcome.error),
                       uid=uid)
    METRICS.events(namespace, name, (reason for _, reason, _ in outcome.events), uid=uid)
    if outcome.status is not None:
        METRICS.model_state(namespace, name, outcome.status, uid=uid)


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
def on_delete(name: str, namespace: str | None, uid: str, **_: Any) -> None:
    # Children go with the owner (ownerReferences); only our in-memory bookkeeping is ours to drop.
    if namespace:
        forget(namespace, name)
        METRICS.forget(namespace, name, uid)
    _State.last_reconciled.pop(uid, None)
    poller = polling.current()
    if poller is not None:
        poller.forget(uid)
    log.info("%s/%s deleted; its children are garbage-collected by Kubernetes", namespace, name)


# Wakes often but reconciles only every KONTINUAL_RESYNC_SECONDS: kopf fixes the interval at import.
@kopf.timer(GROUP, VERSION, PLURAL, interval=5, initial_delay=5, registry=registry)
def resync(body: kopf.Body, uid: str, **_: Any) -> None:
    """Repair drift no watch event told us about (e.g. a ConfigMap edited by hand)."""
    last = _State.last_reconciled.get(uid, 0.0)
    if time.monotonic() - last >= _State.settings.resync_seconds or _poll_due(body, uid):
        _run(body, announce=False)


def _poll_due(body: kopf.Body, uid: str) -> bool:
    """A Roboflow poll is due and none is in flight (the reconcile asks for it; resync may be hours)."""
    trigger = ((body.get("spec") or {}).get("training") or {}).get("trigger") or {}
    poller = polling.current()
    if not trigger.get("minNewLabeledImages") or poller is None or poller.pending(uid):
        return False
    training = TrainingStatus.from_dict((body.get("status") or {}).get("training"))
    return decisions.poll_due(training, datetime.datetime.now(datetime.timezone.utc))


def _wake(namespace: str, name: str) -> None:
    """Reconcile one object now, outside kopf's handlers (a child changed, or its Roboflow poll finished)."""
    outcome = _reconcile({"metadata": {"namespace": namespace, "name": name}})
    if outcome is not None and outcome.error:
        log.warning("%s/%s: %s", namespace, name, outcome.error)


def _on_child(namespace: str | None, labels: Mapping[str, str]) -> None:
    parent = labels.get(MODEL_LABEL)
    if parent and namespace:  # every child is namespaced; kopf types namespace for cluster-wide kinds too
        _wake(namespace, parent)


def stuck(oldest_reconcile: float, oldest_poll: float, settings: Settings) -> str | None:
    """Why the operator should be restarted, if a worker has hung (a poll has a deadline; a reconcile only API calls)."""
    if oldest_reconcile >= settings.stuck_seconds:
        return f"a reconcile has been running for {oldest_reconcile:.0f} s (limit {settings.stuck_seconds} s)"
    if oldest_poll >= settings.roboflow_timeout_seconds + settings.stuck_seconds:
        return (f"a Roboflow poll has been running for {oldest_poll:.0f} s, past its "
                f"{settings.roboflow_timeout_seconds} s deadline")
    return None


@kopf.on.probe(id="workers", errors=kopf.ErrorsMode.PERMANENT, registry=registry)
async def workers_probe(**_: Any) -> dict[str, Any]:
    """/healthz: fails (HTTP 500) while a reconcile or poll worker hangs, so the kubelet restarts the pod."""
    now = time.monotonic()
    oldest_reconcile = max((now - t for t in list(_State.running.values())), default=0.0)
    poller = polling.current()
    oldest_poll = poller.oldest_running() if poller is not None else 0.0
    reason = stuck(oldest_reconcile, oldest_poll, _State.settings)
    if reason:
        log.error("unhealthy: %s", reason)
        raise kopf.PermanentError(reason)
    running, queued = poller.busy() if poller is not None else (0, 0)
    return {"reconciles": len(_State.running), "oldestReconcileSeconds": round(oldest_reconcile, 1),
            "pollsRunning": running, "pollsQueued": queued - running, "oldestPollSeconds": round(oldest_poll, 1)}


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS, registry=registry)
def on_deployment(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """Rollout progress (status) and hand edits or deletions of the server Deployment."""
    _on_child(namespace, labels)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS, registry=registry)
def on_job(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A training Job started, finished or vanished: record results, start a queued run."""
    _on_child(namespace, labels)


@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS, registry=registry)
@kopf.on.event("", "v1", "services", labels=CHILD_LABELS, registry=registry)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=CHILD_LABELS, registry=registry)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS, registry=registry)
def on_simple_child(event: kopf.RawEvent, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A config, service, claim or network policy deleted or edited by hand comes back as specified."""
    if event.get("type") in ("DELETED", "MODIFIED"):
        _on_child(namespace, labels)


def run_operator(namespaces: list[str], all_namespaces: bool, health_port: int | None,
                 metrics_port: int | None = None) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    port = settings.health_port if health_port is None else health_port
    metrics = settings.metrics_port if metrics_port is None else metrics_port
    try:
        Settings.check_ports(port, metrics)
        settings.check_leader_election()
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        k8s.load_config()
    except Exception as exc:  # noqa: BLE001 - any config failure: say it once and exit, no crash loop of tracebacks
        log.error("no Kubernetes API to talk to: %s (set KUBECONFIG, or run in a pod with a ServiceAccount)", exc)
        return 1
    watched = [] if all_namespaces else (namespaces or list(settings.watch_namespaces))
    log.info("watching %s", ", ".join(watched) if watched else "all namespaces")
    if metrics:
        serve(settings.health_host, metrics)
    elector = None
    if settings.leader_election:
        elector = leader.LeaderElector(settings.lease_namespace, settings.lease_name,
                                       leader.identity(settings.pod_name), settings.lease_seconds)
        if not _wait_to_lead(elector, settings.health_host, port):
            return 0
        elector.keep(_lost_the_lease)
    METRICS.leader.set(1)
    try:
        kopf.run(
            registry=registry,
            clusterwide=not watched,
            namespaces=watched,
            standalone=True,
            liveness_endpoint=f"http://{settings.health_host}:{port}/healthz",
        )
    finally:
        if elector is not None:
            elector.release()  # kopf has stopped: nothing of ours reconciles any more
    return 0


def _wait_to_lead(elector: leader.LeaderElector, host: str, port: int) -> bool:
    """A standby: answer /healthz, touch nothing, until this process holds the Lease (False: told to stop)."""
    METRICS.leader.set(0)
    health = leader.StandbyHealth(host, port, elector)
    previous = signal.signal(signal.SIGTERM, lambda *_: elector.stop())
    try:
        return elector.acquire()
    finally:
        signal.signal(signal.SIGTERM, previous)  # kopf installs its own once it runs
        health.close()


def _lost_the_lease(why: str) -> None:
    """Another replica may lead now: stop at once (client-go's way), nothing may reconcile past this line."""
    log.error("leader election: lost the Lease (%s); exiting so that only the leader reconciles", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)
