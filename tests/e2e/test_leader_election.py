"""Two operators on a real control plane: one leads, the other stands by, takes over when the leader is killed.

Both run `kontinual operator` as the chart does with leader election (a Lease in the operator's
namespace, the chart's RBAC). The leader is killed with SIGKILL in the middle of a training run
(the Job exists, the run is not finished); the standby must take the Lease within
`leaseSeconds + 2 x retry`, reconcile, adopt the running Job instead of starting a second one,
record its result once, and never write an Event the leader had already written, while
`status.training.lastRun` only moves forward. A clean stop (SIGTERM, a rolling update) releases
the Lease, so a standby takes over without waiting the Lease out.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client, watch

from tests.e2e.conftest import (OPERATOR_NAMESPACE, PERMISSION_ERRORS, TIMINGS, Operator, chart_access,
                                launch_operator, operator_alive, stop_process)
from tests.e2e.kube import (GROUP, PLURAL, SECRET_LABEL, VERSION, Cluster, condition, ensure_namespace, get_model,
                            play_kubelet_terminated, wait_for)
from tests.e2e.test_training import training_model

NAMESPACE = "e2e-leader"
NAME = "ha"
LEASE = "kontinual-e2e-leader"
LEASE_SECONDS = 10
RETRY = max(1.0, LEASE_SECONDS / 7.5)  # kontinual.controller.leader.timings
# The documented bound (docs/operating.md): the standby holds the Lease within leaseSeconds + 2 x retry
# of the leader's death; kopf's start and the first reconcile come on top of that.
LEASE_BOUND = LEASE_SECONDS + 2 * RETRY
START_ALLOWANCE = 15.0


@dataclass
class Pair:
    """The operators of this module, in start order, and where they log."""

    kubeconfig: Any
    account: str
    tmp: pytest.TempPathFactory
    operators: dict[str, Operator] = field(default_factory=dict)

    def start(self, replica: str) -> Operator:
        workdir = self.tmp.mktemp(f"operator-{replica}")
        handle = launch_operator(self.kubeconfig, self.account, workdir, [], {
            "KONTINUAL_LEADER_ELECTION": "true", "KONTINUAL_LEASE_NAMESPACE": OPERATOR_NAMESPACE,
            "KONTINUAL_LEASE_NAME": LEASE, "KONTINUAL_LEASE_SECONDS": str(LEASE_SECONDS),
            "KONTINUAL_POD_NAME": replica})
        self.operators[replica] = handle
        wait_for(f"the liveness endpoint of {replica}", lambda: operator_alive(handle, handle.health_port),
                 timeout=60, diagnose=lambda: handle.log_text()[-3000:])
        return handle


def holder(cluster: Cluster) -> str:
    try:
        lease = client.CoordinationV1Api(cluster.admin).read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def model_series(operator: Operator) -> dict[str, float]:
    """This model's series in one scrape of an operator's metrics (metric name -> value)."""
    return {metric: value for (metric, labels), value in operator.metrics().items()
            if ("namespace", NAMESPACE) in labels and ("name", NAME) in labels}


def leader_gauge(operator: Operator) -> float:
    return operator.metrics()[("kontinual_operator_leader", frozenset())]


def model_now(cluster: Cluster) -> dict[str, Any]:
    return get_model(cluster, NAMESPACE, NAME) or {}


def events_by_reason(cluster: Cluster) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for event in cluster.core.list_namespaced_event(NAMESPACE).items:
        if event.involved_object.kind == "ContinualModel" and event.involved_object.name == NAME:
            counts[event.reason] += event.count or 1
    return counts


class LastRunRecorder:
    """Every status.training.lastRun the API server sent on a watch of the model, in order.

    A watch the API server cuts short is resumed from the last resourceVersion seen, so no
    version of the object is missed (a 410 Gone would fail the test in stop()).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.values: list[str] = []
        self.error: Exception | None = None
        self.resumed = 0
        self._stopping = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(cluster,), daemon=True)
        self._thread.start()

    def _run(self, cluster: Cluster) -> None:
        version = ""
        while not self._stopping.is_set():
            try:
                for event in self._watch.stream(cluster.custom.list_namespaced_custom_object, GROUP, VERSION,
                                                NAMESPACE, PLURAL, resource_version=version, timeout_seconds=60):
                    version = event["object"]["metadata"]["resourceVersion"]
                    last = ((event["object"].get("status") or {}).get("training") or {}).get("lastRun")
                    value = json.dumps(last, sort_keys=True)
                    if not self.values or self.values[-1] != value:
                        self.values.append(value)
            except client.ApiException as error:  # 410 Gone: versions were missed
                self.error = error
                return
            except Exception:  # noqa: BLE001 - the connection was cut: resume from `version`
                self.resumed += 1
                self._watch = watch.Watch()

    def stop(self) -> list[str]:
        self._stopping.set()
        self._watch.stop()
        assert self.error is None, f"the watch of status.training.lastRun failed: {self.error!r}"
        return list(self.values)


def clean_log(operator: Operator, replica: str) -> None:
    text = operator.log_text()
    denied = [line for line in text.splitlines() if any(marker in line for marker in PERMISSION_ERRORS)]
    assert not denied, f"{replica} was denied access with the chart's RBAC:\n" + "\n".join(denied[:20])
    assert "Traceback (most recent call last)" not in text, f"{replica} raised:\n{text[-3000:]}"


@pytest.fixture(scope="module")
def pair(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    kubeconfig, account = chart_access(cluster, tmp_path_factory, [])
    handles = Pair(kubeconfig, account, tmp_path_factory)
    try:
        yield handles
    finally:
        for replica, handle in handles.operators.items():
            stop_process(handle.process)
            (tmp_path_factory.getbasetemp() / f"operator-leader-{replica}.log").write_bytes(handle.log.read_bytes())


@pytest.fixture(scope="module")
def model(cluster: Cluster, pair: Pair) -> dict[str, Any]:
    first = pair.start("kontinual-a")
    wait_for("kontinual-a to take the Lease", lambda: holder(cluster).startswith("kontinual-a_"),
             diagnose=lambda: first.log_text()[-3000:])
    second = pair.start("kontinual-b")
    wait_for("kontinual-b to report itself standby", lambda: "standby; kontinual-a_" in second.log_text(),
             diagnose=lambda: second.log_text()[-3000:])
    ensure_namespace(cluster, NAMESPACE)
    cluster.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "roboflow", "labels": {SECRET_LABEL: "true"}},
                                                      "stringData": {"apiKey": "e2e-leader-key"}})
    created = cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL,
                                                             training_model(NAME, NAMESPACE))
    wait_for("Reconciled=True", lambda: condition(model_now(cluster), "Reconciled").get("status") == "True",
             diagnose=lambda: json.dumps(model_now(cluster).get("status"), indent=1))
    return dict(created)


def test_only_the_lease_holder_reconciles(cluster: Cluster, pair: Pair, model: dict[str, Any]) -> None:
    leader, standby = pair.operators["kontinual-a"], pair.operators["kontinual-b"]
    assert holder(cluster).startswith("kontinual-a_")
    assert leader_gauge(leader) == 1 and leader_gauge(standby) == 0
    assert model_series(leader).get("kontinual_operator_model_ready") is not None
    assert model_series(standby) == {}, "the standby reconciled the model"
    assert not [k for k in standby.metrics() if k[0] == "kontinual_operator_reconciles_total"]
    clean_log(standby, "kontinual-b")


def test_the_standby_takes_over_a_killed_leader_mid_training(cluster: Cluster, pair: Pair,
                                                              model: dict[str, Any]) -> None:
    leader, standby = pair.operators["kontinual-a"], pair.operators["kontinual-b"]
    recorder = LastRunRecorder(cluster)
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME, {
        "metadata": {"annotations": {f"{GROUP}/train-request": "before-the-kill"}}})
    wait_for("Training=True with Job ha-train-1", lambda: (
        condition(model_now(cluster), "Training").get("status") == "True"
        and model_now(cluster)["status"]["training"].get("activeJob") == f"{NAME}-train-1"))
    wait_for("the TrainingStarted Event", lambda: events_by_reason(cluster)["TrainingStarted"] == 1)
    clean_log(leader, "kontinual-a")

    leader.process.kill()  # SIGKILL: no release, no cleanup; the Lease is left to expire
    killed = time.monotonic()
    leader.process.wait(timeout=10)
    wait_for("kontinual-b to take the Lease", lambda: holder(cluster).startswith("kontinual-b_"),
             timeout=LEASE_BOUND + 10, interval=0.1, diagnose=lambda: standby.log_text()[-3000:])
    took_lease = time.monotonic() - killed
    wait_for("kontinual-b to reconcile the model", lambda: model_series(standby).get("kontinual_operator_model_ready")
             is not None, timeout=LEASE_BOUND + START_ALLOWANCE + 30, interval=0.1,
             diagnose=lambda: standby.log_text()[-3000:])
    reconciling = time.monotonic() - killed
    TIMINGS["leader killed -> standby holds the Lease"] = took_lease
    TIMINGS["leader killed -> standby reconciles"] = reconciling
    assert took_lease <= LEASE_BOUND + 1, f"took the Lease {took_lease:.1f} s after the kill (bound {LEASE_BOUND} s)"
    assert reconciling <= LEASE_BOUND + START_ALLOWANCE, f"reconciled {reconciling:.1f} s after the kill"
    assert leader_gauge(standby) == 1

    jobs = [j.metadata.name for j in cluster.batch.list_namespaced_job(NAMESPACE).items]
    assert jobs == [f"{NAME}-train-1"], f"the new leader started another run: {jobs}"
    pods = wait_for("the pod of ha-train-1", lambda: cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"job-name={NAME}-train-1").items)
    result = {"version": 1, "status": "Succeeded", "onnx": "v1/model.onnx", "sha256": "1" * 64,
              "metrics": {"mAP50": 0.61, "mAP50_95": 0.3}, "sparsity": 0.8, "datasetVersion": "3",
              "images": {"train": 8, "valid": 2, "test": 2}}
    play_kubelet_terminated(cluster, pods[0], exit_code=0, message=json.dumps(result))

    def recorded() -> bool:
        status = model_now(cluster).get("status") or {}
        last = (status.get("training") or {}).get("lastRun") or {}
        return bool(last.get("finishedAt")) and (status.get("serving") or {}).get("version") == 1
    wait_for("kontinual-b to record and promote run v1", recorded, timeout=60,
             diagnose=lambda: json.dumps(model_now(cluster).get("status"), indent=1))
    time.sleep(2)  # a doubled Event or status write would land now
    jobs = [j.metadata.name for j in cluster.batch.list_namespaced_job(NAMESPACE).items]
    assert sorted(jobs) == [f"{NAME}-train-1"], f"more than one training Job: {jobs}"

    after = events_by_reason(cluster)
    assert after["TrainingStarted"] == 1 and after["TrainingSucceeded"] == 1 and after["ModelPromoted"] == 1, after
    doubled = {reason: n for reason, n in after.items() if n > 1}
    assert doubled == {}, f"Events written more than once: {doubled} (all: {dict(after)})"

    history = [json.loads(v) for v in recorder.stop()]
    runs = [(h or {}).get("version") for h in history]
    assert runs == sorted(runs, key=lambda v: v or 0), f"lastRun went back: {history}"
    assert len(history) == len({json.dumps(h, sort_keys=True) for h in history}), f"lastRun flapped: {history}"
    assert history[-1]["version"] == 1 and history[-1]["result"] == "Succeeded"
    assert model_now(cluster)["status"]["training"]["lastRun"]["job"] == f"{NAME}-train-1"
    clean_log(standby, "kontinual-b")


def test_a_clean_stop_releases_the_lease_to_the_standby(cluster: Cluster, pair: Pair, model: dict[str, Any]) -> None:
    """A rolling update: the new pod stands by, the old leader gets SIGTERM, stops kopf, releases the Lease."""
    leader = pair.operators["kontinual-b"]
    restarted = pair.start("kontinual-c")
    wait_for("kontinual-c to stand by", lambda: "standby; kontinual-b_" in restarted.log_text(),
             diagnose=lambda: restarted.log_text()[-3000:])
    assert model_series(restarted) == {}
    stop_process(leader.process)  # SIGTERM, as the kubelet sends it
    stopped = time.monotonic()
    assert leader.process.returncode == 0, leader.log_text()[-3000:]
    assert "released Lease" in leader.log_text()
    wait_for("kontinual-c to take the Lease", lambda: holder(cluster).startswith("kontinual-c_"),
             timeout=LEASE_SECONDS, interval=0.1, diagnose=lambda: restarted.log_text()[-3000:])
    handed = time.monotonic() - stopped
    TIMINGS["leader stopped (SIGTERM) -> standby holds the Lease"] = handed
    assert handed <= 2 * RETRY + 1, f"took {handed:.1f} s: the Lease was waited out, not released"
    wait_for("kontinual-c to reconcile the model", lambda: model_series(restarted).get(
        "kontinual_operator_model_ready") is not None, timeout=START_ALLOWANCE + 30)
    clean_log(restarted, "kontinual-c")
