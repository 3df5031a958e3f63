"""Every training result recorded exactly once: pods and Jobs deleted before the operator read them,
an operator that was down, or killed between creating a Job and writing status.

The test plays the Job controller and the kubelet (as in test_loop) and the model claim: when the
operator starts the reader Job NAME-result-<N>, the test "runs" it, printing the v<N>/result.json
the trainer left on the claim (or failing, when the claim has none) as the reader's termination
message, as `cp v<N>/result.json /dev/termination-log` does in a real pod.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import pytest

from kontinual.controller.handlers import registry
from tests.emulator.cluster import Cluster, condition, running_operator, wait_for
from tests.emulator.test_loop import (create_model, cr, finish_job, jobs, loop_cluster, model, raised, reasons,
                                      request_training, result, status_where, wait_job)

__all__ = ["loop_cluster"]  # the fixture, imported for this module's tests


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def complete_without_pod(cluster: Cluster, ns: str, name: str) -> None:
    """The Job controller marks the Job Complete; its pod is gone already (deleted, evicted, GC'd)."""
    await cluster.patch("jobs", ns, name, {"status": {
        "conditions": [{"type": "Complete", "status": "True"}], "startTime": _now(), "completionTime": _now(),
        "succeeded": 1}}, subresource="status")


async def run_reader(cluster: Cluster, ns: str, name: str, claim_result: dict[str, Any] | None) -> dict[str, Any]:
    """Play the reader Job's pod: print the claim's result.json, or fail because there is none."""
    reader = await wait_for(lambda: cluster.get("jobs", ns, name), 20, what=f"reader Job {ns}/{name}")
    uid = reader["metadata"]["uid"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{name}-q2w8e", "namespace": ns, "labels": {"job-name": name, "controller-uid": uid},
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                                             "controller": True}]},
           "spec": reader["spec"]["template"]["spec"]}
    await cluster.create(pod)
    ok = claim_result is not None
    terminated: dict[str, Any] = {"exitCode": 0 if ok else 1, "reason": "Completed" if ok else "Error"}
    if ok:
        terminated["message"] = json.dumps(claim_result)
    await cluster.patch("pods", ns, pod["metadata"]["name"], {"status": {
        "phase": "Succeeded" if ok else "Failed",
        "containerStatuses": [{"name": "result-reader", "state": {"terminated": terminated}, "ready": False,
                               "restartCount": 0, "image": "kontinual/trainer:test", "imageID": ""}]}},
        subresource="status")
    cond = {"type": "Complete", "status": "True"} if ok else \
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
    await cluster.patch("jobs", ns, name, {"status": {"conditions": [cond], "startTime": _now(),
                                                      "completionTime": _now() if ok else None,
                                                      "succeeded": int(ok), "failed": int(not ok)}},
                        subresource="status")
    return reader


async def test_a_result_whose_pod_is_gone_is_read_from_the_claim(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-podgone"
    await create_model(c, model("m", ns))
    await request_training(c, ns, "m", "go")
    await wait_job(c, ns, "m-train-1")
    await complete_without_pod(c, ns, "m-train-1")  # a better model, but nobody can read its pod any more

    reader = await run_reader(c, ns, "m-result-1", result(1, 0.5))
    pod = reader["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["cp", "/models/v1/result.json", "/dev/termination-log"]
    assert container["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "m-models", "readOnly": True}
    assert pod["automountServiceAccountToken"] is False and container["securityContext"]["readOnlyRootFilesystem"]
    assert reader["metadata"]["ownerReferences"][0]["name"] == "m" and reader["spec"]["ttlSecondsAfterFinished"]
    assert "kontinual.io/version" not in reader["metadata"]["labels"]  # not a training run

    obj = await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 1, "v1 read from the claim")
    [record] = obj["status"]["models"]
    assert (record["version"], record["promoted"], record["job"]) == (1, True, "m-train-1")
    assert obj["status"]["training"]["lastRun"]["result"] == "Succeeded"
    await raised(c, ns, "m", "ReadingResult", "ModelPromoted")
    await asyncio.sleep(3)  # several resyncs: recorded once, no second reader, no second run
    obj = await cr(c, ns, "m")
    assert [m["version"] for m in obj["status"]["models"]] == [1]
    assert [j["metadata"]["name"] for j in await jobs(c, ns)] == ["m-result-1", "m-train-1"]
    assert (await reasons(c, ns, "m")).count("ModelPromoted") == 1


async def test_a_completed_job_whose_claim_has_no_result_is_result_missing(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-noresult"
    await create_model(c, model("m", ns))
    await request_training(c, ns, "m", "go")
    await wait_job(c, ns, "m-train-1")
    await complete_without_pod(c, ns, "m-train-1")
    await run_reader(c, ns, "m-result-1", None)
    obj = await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("lastRun", {}).get("finishedAt"),
                             "run recorded")
    assert obj["status"]["training"]["lastRun"]["reason"] == "ResultMissing"
    assert "v1/result.json" in obj["status"]["training"]["lastRun"]["message"]
    assert condition(obj, "Degraded")["reason"] == "ResultMissing"


async def test_operator_down_while_a_job_finished_and_was_deleted(api: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    c, ns = api, "t-downdeleted"
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "1")
    async with running_operator(registry, api.kubeconfig):
        await create_model(c, model("m", ns))
        await request_training(c, ns, "m", "go")
        await wait_job(c, ns, "m-train-1")
        await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("activeJob"), "run started")
    # The operator is down: the Job finishes, and is deleted (by hand, or its TTL) before anyone read it.
    await finish_job(c, ns, "m-train-1", result(1, 0.5))
    await c.delete("jobs", ns, "m-train-1")
    for pod in await c.list("pods", ns):
        await c.delete("pods", ns, pod["metadata"]["name"])
    async with running_operator(registry, api.kubeconfig):
        await run_reader(c, ns, "m-result-1", result(1, 0.5))
        obj = await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 1, "v1 after restart")
        await raised(c, ns, "m", "ModelPromoted")
        await asyncio.sleep(3)
    obj = await cr(c, ns, "m")
    assert [m["version"] for m in obj["status"]["models"]] == [1]
    assert obj["status"]["training"]["runs"] == 1 and obj["status"]["training"]["highestVersion"] == 1
    assert (await reasons(c, ns, "m")).count("ModelPromoted") == 1


async def test_a_vanished_run_is_reported_and_its_version_never_reused(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-vanished"
    await create_model(c, model("m", ns))
    await request_training(c, ns, "m", "first")
    await wait_job(c, ns, "m-train-1")
    await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("activeJob"), "run started")
    await c.delete("jobs", ns, "m-train-1")  # deleted mid-run: no result anywhere
    await run_reader(c, ns, "m-result-1", None)
    obj = await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("lastRun", {}).get("finishedAt"),
                             "vanished run recorded")
    degraded = condition(obj, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RunVanished") and "v1" in degraded["message"]
    assert obj["status"]["training"]["lastRun"]["reason"] == "RunVanished"
    await raised(c, ns, "m", "TrainingFailed")
    await request_training(c, ns, "m", "second")
    await wait_job(c, ns, "m-train-2")  # v1 is never reused: its folder may exist on the claim
    await asyncio.sleep(2)
    assert (await reasons(c, ns, "m")).count("TrainingFailed") == 1


async def test_failed_runs_are_recorded_once(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-failonce"
    await create_model(c, model("m", ns))
    await request_training(c, ns, "m", "1")
    await wait_job(c, ns, "m-train-1")
    await finish_job(c, ns, "m-train-1", {"status": "Failed", "reason": "DatasetEmpty", "message": "no images"},
                     succeeded=False)
    await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("lastRun", {}).get("result") == "Failed",
                       "v1 failed")
    await request_training(c, ns, "m", "2")
    await wait_job(c, ns, "m-train-2")
    await finish_job(c, ns, "m-train-2", result(2, 0.5))
    await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 2, "v2 promoted")
    await asyncio.sleep(3)  # several resyncs, the failed v1 Job still listed: never recorded again
    obj = await cr(c, ns, "m")
    assert obj["status"]["training"]["lastRun"]["version"] == 2
    degraded = condition(obj, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "ModelPromoted")  # not the stale failure
    assert (await reasons(c, ns, "m")).count("TrainingFailed") == 1


async def test_a_job_whose_status_write_was_lost_is_adopted_not_rerun(api: Cluster,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 between creating the Job and writing status: the restarted operator adopts the Job."""
    c, ns = api, "t-lostwrite"
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "1")
    async with running_operator(registry, api.kubeconfig):
        await create_model(c, model("m", ns))
        await request_training(c, ns, "m", "go")
        await wait_job(c, ns, "m-train-1")
        await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("activeJob"), "run started")
    job = await c.get("jobs", ns, "m-train-1")
    assert job["metadata"]["annotations"]["kontinual.io/train-request"] == "go"
    # Undo the status write the killed operator never made.
    await c.patch("continualmodels", ns, "m", {"status": {"training": {
        "lastRun": None, "runs": None, "activeJob": None, "highestVersion": None, "lastTrainRequest": None,
        "recordedJobs": None}}}, subresource="status")
    async with running_operator(registry, api.kubeconfig):
        obj = await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("highestVersion") == 1,
                                 "v1 adopted")
        assert obj["status"]["training"]["lastTrainRequest"] == "go"
        await asyncio.sleep(3)  # several resyncs: the request "go" is served by m-train-1 alone
        assert [j["metadata"]["name"] for j in await jobs(c, ns)] == ["m-train-1"]
        obj = await cr(c, ns, "m")
        assert obj["status"]["training"]["activeJob"] == "m-train-1" and not obj["status"]["training"].get("pending")
        await finish_job(c, ns, "m-train-1", result(1, 0.5))
        obj = await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 1, "v1 promoted")
    assert obj["status"]["training"]["runs"] == 1
