"""The operator's Prometheus metrics (prometheus_client): reconciles, errors, training runs, rollouts, Roboflow polls.

Label cardinality is bounded: the per-model series carry `namespace` and `name` of a
ContinualModel (one series per model and fixed label value, removed when the model is deleted);
every other label takes a small fixed set of values (`result`, `kind`), never a message, a Job
name or a version. The metrics come from what a reconcile already decided: its Outcome and the
reasons of the Events it raised, so a counter moves exactly when a user would see an Event.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)
PREFIX = "kontinual_operator_"
MODEL = ("namespace", "name")
DELETED_KEPT = 1000  # uids of deleted models remembered, so late updates cannot revive their series
# Event reason -> (per-model counter, its label value or None).
TRAINING_RESULTS = {"TrainingSucceeded": "succeeded", "TrainingFailed": "failed"}
GATE_RESULTS = {"ModelPromoted": "promoted", "ModelRejected": "rejected"}
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)


class OperatorMetrics:
    """Every series the operator exports, in a registry of its own (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process:  # CPU, memory, open files and GC of the operator process, as the default registry has them
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.reconciles = Counter(f"{PREFIX}reconciles", "Reconciles of ContinualModels, by result "
                                  "(ok, invalid_spec, error).", ["result"], registry=r)
        self.reconcile_seconds = Histogram(f"{PREFIX}reconcile_duration_seconds", "Time one reconcile took "
                                           "(read, parse, apply children, observe, write status).",
                                           buckets=RECONCILE_BUCKETS, registry=r)
        self.errors = Counter(f"{PREFIX}reconcile_errors", "Failed reconciles of a ContinualModel, by kind "
                              "(invalid_spec: only a spec change fixes it; api_error: retried).",
                              [*MODEL, "kind"], registry=r)
        self.training_started = Counter(f"{PREFIX}training_runs_started", "Training Jobs the operator started.",
                                        list(MODEL), registry=r)
        self.training_runs = Counter(f"{PREFIX}training_runs", "Finished training runs, by result "
                                     "(succeeded, failed).", [*MODEL, "result"], registry=r)
        self.gate = Counter(f"{PREFIX}gate_decisions", "Gate decisions on trained models, by result "
                            "(promoted, rejected).", [*MODEL, "result"], registry=r)
        self.promotions = Counter(f"{PREFIX}promotions", "Trained models promoted to serving.", list(MODEL),
                                  registry=r)
        self.rollbacks = Counter(f"{PREFIX}rollbacks", "Rollouts that failed and went back to the previous model.",
                                 list(MODEL), registry=r)
        self.poll_seconds = Histogram(f"{PREFIX}roboflow_poll_duration_seconds", "Time one Roboflow project poll "
                                      "(minNewLabeledImages trigger) took, successful or not.",
                                      buckets=POLL_BUCKETS, registry=r)
        self.polls = Counter(f"{PREFIX}roboflow_polls", "Roboflow project polls, by result (ok, failed).",
                             [*MODEL, "result"], registry=r)
        self.serving_version = Gauge(f"{PREFIX}serving_model_version", "The model version a ContinualModel "
                                     "serves (0: its seed model).", list(MODEL), registry=r)
        self.ready = Gauge(f"{PREFIX}model_ready", "1 while the ContinualModel's Ready condition is True, else 0.",
                           list(MODEL), registry=r)
        self.leader = Gauge(f"{PREFIX}leader", "1 while this replica reconciles (it holds the leader Lease, "
                            "or leader election is off), 0 on a standby.", registry=r)
        # uids of deleted models: a reconcile or poll that started before the deletion and ends after it
        # must not bring the series back (bounded: the oldest are dropped).
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._deleted_lock = threading.Lock()
        self._per_model = (self.errors, self.training_started, self.training_runs, self.gate, self.promotions,
                           self.rollbacks, self.polls, self.serving_version, self.ready)

    def _live(self, uid: str | None) -> bool:
        with self._deleted_lock:
            return uid is None or uid not in self._deleted

    def reconciled(self, namespace: str, name: str, *, seconds: float, invalid: bool, error: bool,
                   uid: str | None = None) -> None:
        result = "invalid_spec" if invalid else "error" if error else "ok"
        self.reconciles.labels(result).inc()
        self.reconcile_seconds.observe(seconds)
        if result != "ok" and self._live(uid):
            self.errors.labels(namespace, name, "invalid_spec" if invalid else "api_error").inc()

    def events(self, namespace: str, name: str, reasons: Iterable[str], *, uid: str | None = None) -> None:
        """Count training outcomes and rollouts from the reasons of the Events a reconcile raised."""
        if not self._live(uid):
            return
        for reason in reasons:
            if reason in TRAINING_RESULTS:
                self.training_runs.labels(namespace, name, TRAINING_RESULTS[reason]).inc()
            elif reason in GATE_RESULTS:
                self.gate.labels(namespace, name, GATE_RESULTS[reason]).inc()
                if reason == "ModelPromoted":
                    self.promotions.labels(namespace, name).inc()
            elif reason == "TrainingStarted":
                self.training_started.labels(namespace, name).inc()
            elif reason == "RolledBack":
                self.rollbacks.labels(namespace, name).inc()

    def model_state(self, namespace: str, name: str, status: Mapping[str, Any], *, uid: str | None = None) -> None:
        """The serving version and readiness the reconcile just wrote to status."""
        if not self._live(uid):
            return
        version = (status.get("serving") or {}).get("version")
        if isinstance(version, int):
            self.serving_version.labels(namespace, name).set(version)
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        self.ready.labels(namespace, name).set(1 if ready else 0)

    def polled(self, namespace: str, name: str, *, seconds: float, failed: bool, uid: str | None = None) -> None:
        """One Roboflow project poll finished (a failure is a result here, not an exception)."""
        self.poll_seconds.observe(seconds)
        if self._live(uid):
            self.polls.labels(namespace, name, "failed" if failed else "ok").inc()

    def forget(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Drop a deleted model's series, so the label set stays bounded by the models that exist."""
        if uid is not None:
            with self._deleted_lock:
                self._deleted[uid] = None
                while len(self._deleted) > DELETED_KEPT:
                    self._deleted.popitem(last=False)
        for metric in self._per_model:
            for labels in list(_label_sets(metric)):
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)


def _label_sets(metric: Counter | Gauge) -> Iterator[tuple[str, ...]]:
    # prometheus_client keeps a labelled metric's children by label values; it has no public listing.
    with metric._lock:
        keys = [tuple(k) for k in metric._metrics]
    yield from keys


METRICS = OperatorMetrics()


def serve(host: str, port: int, metrics: OperatorMetrics = METRICS) -> int | None:
    """`GET /metrics` on host:port from a daemon thread; the bound port, or None (logged) when it cannot listen.

    A port that cannot be bound costs the metrics, not the operator: reconciling goes on.
    """
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%s (%s); set KONTINUAL_METRICS_PORT to a free port, or 0 for none",
                  host, port, exc)
        return None
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%s/metrics", host, bound)
    return bound
