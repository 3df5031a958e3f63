"""The training loop against the API server: triggers, Jobs, results, the gate, rollout, rollback, restarts.

The test plays the Job controller and the kubelet: it creates the Job's pod, marks it terminated
with the trainer's result JSON as the termination message (as the kubelet does from
/dev/termination-log), and marks the Job Complete or Failed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from kontinual.controller.access import SECRET_LABEL
from kontinual.controller.handlers import registry
from tests.emulator.cluster import Cluster, condition, running_operator, wait_for
from tests.emulator.test_reconcile import MODEL_URI
from tests.support.roboflow_double import RoboflowDouble

ROBOFLOW = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}


@pytest.fixture
async def loop_cluster(api: Cluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("KONTINUAL_TRAINER_IMAGE", "kontinual/trainer:test")
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "1")
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_POLL_SECONDS", "1")
    async with running_operator(registry, api.kubeconfig):
        yield api


def model(name: str, ns: str, training: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"uri": MODEL_URI}, "classNames": ["ball", "goalkeeper", "player", "referee"],
                     "training": {"dataset": ROBOFLOW, "epochs": 2, **(training or {})}, **spec}}
    return body


async def create_model(cluster: Cluster, body: dict[str, Any], api_key: str = "test-roboflow-key") -> None:
    """Create the Roboflow key Secret the model names (labelled for Kontinual's use), then the model."""
    ns = body["metadata"]["namespace"]
    await cluster.create({"apiVersion": "v1", "kind": "Secret",
                          "metadata": {"name": "roboflow", "namespace": ns, "labels": {SECRET_LABEL: "true"}},
                          "data": {"apiKey": base64.b64encode(api_key.encode()).decode()}})
    await cluster.create(body)


SOCCER = ["ball", "goalkeeper", "player", "referee"]
# What the trainer reports for the COCO zoo seed on a soccer dataset: not comparable, the floor decides.
COCO_SEED = {"version": 0, "reason": "ClassesDiffer",
             "error": f"the seed model predicts 80 classes (person, bicycle, car, ...), the dataset has {SOCCER}"}


def result(version: int, map50: float, sha: str | None = None, vs: tuple[int, float] | None = None,
           dataset: str = "3") -> dict[str, Any]:
    """A Succeeded result; `vs`: (serving version, its mAP50 on the same split), else the COCO seed."""
    baseline = COCO_SEED if vs is None else {"version": vs[0], "metrics": {"mAP50": vs[1], "mAP50_95": vs[1] / 2}}
    return {"status": "Succeeded", "version": version, "onnx": f"v{version}/model.onnx",
            "sha256": sha if sha is not None else f"{version:064x}",
            "metrics": {"mAP50": map50, "mAP50_95": map50 / 2}, "sparsity": 0.8,
            "datasetVersion": dataset, "images": {"train": 16, "valid": 4, "test": 4}, "classNames": SOCCER,
            "baseline": baseline, "evaluatedOn": {"split": "test", "images": 4, "datasetVersion": dataset}}


def server_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(cluster_config["data"]["server.yaml"])


async def request_training(cluster: Cluster, ns: str, name: str, value: str) -> None:
    await cluster.patch("continualmodels", ns, name,
                        {"metadata": {"annotations": {"kontinual.io/train-request": value}}})


async def cr(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj = await cluster.get("continualmodels", ns, name)
    assert obj is not None
    return obj


async def jobs(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return sorted(await cluster.list("jobs", ns), key=lambda j: j["metadata"]["name"])


async def wait_job(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return await wait_for(lambda: cluster.get("jobs", ns, name), 15, what=f"Job {ns}/{name}")


async def finish_job(cluster: Cluster, ns: str, name: str, message: dict[str, Any] | str | None,
                     *, succeeded: bool = True, reason: str = "BackoffLimitExceeded") -> None:
    """Play kubelet and the Job controller for one finished training pod."""
    job = await cluster.get("jobs", ns, name)
    assert job is not None
    uid = job["metadata"]["uid"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{name}-x7k2p", "namespace": ns,
                        "labels": {"job-name": name, "controller-uid": uid},
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                                             "controller": True}]},
           "spec": job["spec"]["template"]["spec"]}
    await cluster.create(pod)
    terminated: dict[str, Any] = {"exitCode": 0 if succeeded else 1, "reason": "Completed" if succeeded else "Error"}
    if message is not None:
        terminated["message"] = message if isinstance(message, str) else json.dumps(message)
    await cluster.patch("pods", ns, pod["metadata"]["name"], {"status": {
        "phase": "Succeeded" if succeeded else "Failed",
        "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}, "ready": False,
                               "restartCount": 0, "image": "kontinual/trainer:test", "imageID": ""}]}},
        subresource="status")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cond = {"type": "Complete", "status": "True"} if succeeded else {"type": "Failed", "status": "True", "reason": reason}
    await cluster.patch("jobs", ns, name, {"status": {
        "conditions": [cond], "startTime": now, "completionTime": now if succeeded else None,
        "succeeded": 1 if succeeded else 0, "failed": 0 if succeeded else 1}}, subresource="status")


async def train_once(cluster: Cluster, ns: str, name: str, version: int, message: dict[str, Any] | str | None,
                     **finish: Any) -> None:
    """Ask for a run (annotation value = the version), wait for its Job, finish it with `message`."""
    await request_training(cluster, ns, name, str(version))
    await wait_job(cluster, ns, f"{name}-train-{version}")
    await finish_job(cluster, ns, f"{name}-train-{version}", message, **finish)


async def status_where(cluster: Cluster, ns: str, name: str, check: Any, what: str, timeout: float = 15) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.get("continualmodels", ns, name)
        return obj if obj and check(obj.get("status") or {}) else None
    return await wait_for(probe, timeout, what=what)


async def reasons(cluster: Cluster, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in await cluster.events(ns, name)]


async def raised(cluster: Cluster, ns: str, name: str, *wanted: str) -> list[str]:
    """Wait for Events with these reasons (kopf posts them asynchronously, after the status write)."""
    async def probe() -> list[str] | None:
        seen = await reasons(cluster, ns, name)
        return seen if set(wanted) <= set(seen) else None
    return await wait_for(probe, 10, what=f"Events {wanted} on {ns}/{name}")


def template_version(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["annotations"]["kontinual.io/model-version"]


async def test_manual_run_promotes_and_rolls_the_server(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-manual"
    await create_model(c, model("soccer", ns))
    await status_where(c, ns, "soccer", lambda s: s.get("observedGeneration"), "first reconcile")
    assert await jobs(c, ns) == []  # no trigger, no run

    await request_training(c, ns, "soccer", "first")
    job = await wait_job(c, ns, "soccer-train-1")
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    # The first run starts where the seed starts: the served stub's transfer checkpoint and recipe.
    transfer = f"{MODEL_URI}?recipe_type=transfer_learn"
    assert args[args.index("--version") + 1] == "1" and args[args.index("--base-weights") + 1] == transfer
    assert args[args.index("--recipe") + 1] == transfer
    # The champion of run 1 is the seed, named by DeepSparse's COCO names.
    assert [args[args.index(f) + 1] for f in ("--baseline-model", "--baseline-version", "--baseline-class-names")] \
        == [MODEL_URI, "0", "coco"]
    seed_config = server_config(await c.get("configmaps", ns, "soccer-server-config"))
    assert seed_config["endpoints"][0]["kwargs"] == {"class_names": "coco"}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["metadata"]["ownerReferences"][0]["name"] == "soccer"
    obj = await status_where(c, ns, "soccer", lambda s: (s.get("training") or {}).get("activeJob"), "activeJob")
    assert condition(obj, "Training")["status"] == "True"
    await raised(c, ns, "soccer", "TrainingStarted")

    await finish_job(c, ns, "soccer-train-1", result(1, 0.42))
    obj = await status_where(c, ns, "soccer", lambda s: s.get("serving", {}).get("version") == 1, "v1 serving")
    [record] = obj["status"]["models"]
    assert (record["version"], record["promoted"], record["metrics"]["mAP50"]) == (1, True, 0.42)
    assert record["reason"] == "FloorPassed" and "the floor is the gate" in record["message"]
    assert record["classNames"] == SOCCER and record["baseline"] == COCO_SEED
    assert obj["status"]["training"]["lastRun"]["result"] == "Succeeded"
    assert obj["status"]["serving"]["sha256"] == f"{1:064x}"
    assert condition(obj, "Training")["status"] == "False"
    deployment = await c.get("deployments", ns, "soccer-server")
    assert template_version(deployment) == "1"
    pod = deployment["spec"]["template"]["spec"]
    verify = next(i for i in pod["initContainers"] if i["name"] == "verify-model")
    assert verify["command"][-2:] == ["/models/v1/model.onnx", f"{1:064x}"]
    config = yaml.safe_load((await c.get("configmaps", ns, "soccer-server-config"))["data"]["server.yaml"])
    assert config["endpoints"][0]["model"] == "/models/v1/model.onnx"
    assert config["endpoints"][0]["kwargs"] == {"class_names": SOCCER}  # v1's own names now
    await raised(c, ns, "soccer", "TrainingSucceeded", "ModelPromoted")
    # GitOps: the operator wrote nothing to metadata but its finalizer (the annotation is the user's).
    assert set(obj["metadata"].get("annotations") or {}) == {"kontinual.io/train-request"}
    assert obj["metadata"]["finalizers"] == ["kontinual.io/finalizer"]

    # Available only once the new template is rolled out.
    assert condition(obj, "Available")["status"] == "False"
    await c.roll_out(ns, "soccer-server")
    obj = await status_where(c, ns, "soccer", lambda s: any(
        x["type"] == "Ready" and x["status"] == "True" for x in s.get("conditions", [])), "Ready after rollout")

    # The second run continues from the serving model and is compared with it on its own split;
    # worse than v1 there (0.30 vs 0.35), it is rejected.
    await request_training(c, ns, "soccer", "second")
    job = await wait_job(c, ns, "soccer-train-2")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--base-weights") + 1] == "/models/v1/model.pt"
    assert args[args.index("--recipe") + 1] == transfer  # the lineage keeps the seed's transfer recipe
    assert [args[args.index(f) + 1] for f in ("--baseline-model", "--baseline-version", "--baseline-class-names")] \
        == ["/models/v1/model.onnx", "1", json.dumps(SOCCER, separators=(",", ":"))]
    await finish_job(c, ns, "soccer-train-2", result(2, 0.30, vs=(1, 0.35), dataset="4"))
    try:
        obj = await status_where(c, ns, "soccer", lambda s: len(s.get("models", [])) == 2, "v2 recorded")
    except AssertionError:
        print("STATUS", json.dumps((await cr(c, ns, "soccer"))["status"]))
        raise
    newest = obj["status"]["models"][0]
    assert (newest["version"], newest["promoted"], newest["reason"]) == (2, False, "GateRejected")
    assert "mAP50 0.3000 vs 0.3500 of v1 on dataset 4 test, 4 images" in newest["message"]
    assert obj["status"]["serving"]["version"] == 1
    assert condition(obj, "Degraded")["status"] == "True" and condition(obj, "Degraded")["reason"] == "GateRejected"
    await raised(c, ns, "soccer", "ModelRejected")
    assert template_version(await c.get("deployments", ns, "soccer-server")) == "1"

    # Run 3 on a harder split: 0.30 is below v1's old 0.42, but v1 scores 0.25 on the same split.
    await train_once(c, ns, "soccer", 3, result(3, 0.30, vs=(1, 0.25), dataset="5"))
    obj = await status_where(c, ns, "soccer", lambda s: s.get("serving", {}).get("version") == 3, "v3 serving")
    newest = obj["status"]["models"][0]
    assert (newest["version"], newest["promoted"], newest["reason"]) == (3, True, "GatePassed")
    assert newest["baseline"] == {"version": 1, "metrics": {"mAP50": 0.25, "mAP50_95": 0.125}}

    async def v3_promoted_event() -> list[str] | None:
        messages = [e["message"] for e in await c.events(ns, "soccer") if e["reason"] == "ModelPromoted"]
        return messages if any("mAP50 0.3000 vs 0.2500 of v1 on dataset 5 test, 4 images" in m
                               for m in messages) else None
    await wait_for(v3_promoted_event, 10, what="the ModelPromoted Event naming both numbers")


async def test_failed_job_and_bad_checksum_keep_the_old_model(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-fail"
    await create_model(c, model("m", ns))
    failed = {"status": "Failed", "reason": "DatasetEmpty", "message": "train/ has no labeled images"}
    await train_once(c, ns, "m", 1, failed, succeeded=False)
    obj = await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("lastRun", {}).get("result") == "Failed",
                             "failed run recorded")
    degraded = condition(obj, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "DatasetEmpty")
    assert "train/ has no labeled images" in degraded["message"]
    assert obj["status"]["serving"]["version"] == 0 and obj["status"]["models"] == []
    await raised(c, ns, "m", "TrainingFailed")

    # A trainer that died without a result: the log tail (FallbackToLogsOnError) is the reason's context.
    await train_once(c, ns, "m", 2, "Traceback ...\nMemoryError", succeeded=False)
    obj = await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("lastRun", {}).get("job") == "m-train-2"
                             and s["training"]["lastRun"].get("finishedAt"), "crash recorded")
    assert obj["status"]["training"]["lastRun"]["reason"] == "TrainerCrashed"
    assert "MemoryError" in obj["status"]["training"]["lastRun"]["message"]

    # A result without a sha256 is never promoted.
    await train_once(c, ns, "m", 3, {**result(3, 0.9), "sha256": ""})
    obj = await status_where(c, ns, "m", lambda s: len(s.get("models", [])) == 1, "v3 recorded")
    assert obj["status"]["models"][0]["promoted"] is False
    assert obj["status"]["serving"]["version"] == 0
    assert template_version(await c.get("deployments", ns, "m-server")) == "0"

    # A first model below the floor never replaces the seed, though the seed has no number.
    await train_once(c, ns, "m", 4, result(4, 0.05))
    obj = await status_where(c, ns, "m", lambda s: len(s.get("models", [])) == 2, "v4 recorded")
    assert (obj["status"]["models"][0]["promoted"], obj["status"]["models"][0]["reason"]) == (False, "BelowFloor")
    assert obj["status"]["serving"]["version"] == 0


async def test_pinning_and_unpinning(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-pin"
    await create_model(c, model("m", ns))
    for version, score, vs in ((1, 0.4, None), (2, 0.5, (1, 0.4))):
        await train_once(c, ns, "m", version, result(version, score, vs=vs))
        await status_where(c, ns, "m", lambda s, v=version: s.get("serving", {}).get("version") == v, f"v{version}")
    await c.patch("continualmodels", ns, "m", {"spec": {"rollout": {"pinnedVersion": 1}}})
    await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 1, "pinned v1")
    assert template_version(await c.get("deployments", ns, "m-server")) == "1"
    await c.patch("continualmodels", ns, "m", {"spec": {"rollout": {"pinnedVersion": None}}})
    await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 2, "back to v2")
    assert template_version(await c.get("deployments", ns, "m-server")) == "2"


async def test_stalled_rollout_is_rolled_back_and_not_retried(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-rollback"
    await create_model(c, model("m", ns))
    await train_once(c, ns, "m", 1, result(1, 0.5))
    await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 1, "v1 promoted")
    deployment = await c.get("deployments", ns, "m-server")
    # The Deployment controller gives up on the new pods: progress deadline exceeded.
    await c.patch("deployments", ns, "m-server", {"status": {
        "observedGeneration": deployment["metadata"]["generation"], "replicas": 2, "updatedReplicas": 1,
        "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "m-server-2" has timed out progressing.'}]}}, subresource="status")
    obj = await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 0, "rolled back to seed")
    assert template_version(await c.get("deployments", ns, "m-server")) == "0"
    record = obj["status"]["models"][0]
    assert (record["rolledBack"], record["promoted"], record["reason"]) == (True, False, "RolloutFailed")
    assert condition(obj, "Degraded")["reason"] == "RolloutFailed"
    await raised(c, ns, "m", "RolledBack")
    await c.roll_out(ns, "m-server")
    await status_where(c, ns, "m", lambda s: any(x["type"] == "Available" and x["status"] == "True"
                                                 for x in s.get("conditions", [])), "seed available again")
    assert template_version(await c.get("deployments", ns, "m-server")) == "0"  # v1 is not retried


async def test_trigger_during_a_run_is_served_once_after_it(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-queue"
    await create_model(c, model("m", ns))
    await request_training(c, ns, "m", "a")
    await wait_job(c, ns, "m-train-1")
    await request_training(c, ns, "m", "b")
    await request_training(c, ns, "m", "c")
    await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("pending"), "pending trigger")
    assert [j["metadata"]["name"] for j in await jobs(c, ns)] == ["m-train-1"]
    await finish_job(c, ns, "m-train-1", result(1, 0.5))
    await wait_job(c, ns, "m-train-2")
    obj = await status_where(c, ns, "m", lambda s: not (s.get("training") or {}).get("pending"), "pending served")
    await finish_job(c, ns, "m-train-2", result(2, 0.6, vs=(1, 0.5)))
    await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 2, "v2 serving")
    await status_where(c, ns, "m", lambda s: s.get("training", {}).get("runs") == 2, "two runs")
    assert [j["metadata"]["name"] for j in await jobs(c, ns)] == ["m-train-1", "m-train-2"]
    assert obj["status"]["training"]["runs"] == 2


async def test_operator_restart_mid_run_adopts_the_job(api: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    c, ns = api, "t-restart"
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "1")
    async with running_operator(registry, api.kubeconfig):
        await create_model(c, model("m", ns))
        await request_training(c, ns, "m", "go")
        await wait_job(c, ns, "m-train-1")
    # The operator is down: the Job finishes meanwhile.
    await finish_job(c, ns, "m-train-1", result(1, 0.5))
    async with running_operator(registry, api.kubeconfig):
        obj = await status_where(c, ns, "m", lambda s: s.get("serving", {}).get("version") == 1, "result after restart")
        await raised(c, ns, "m", "ModelPromoted")  # posted asynchronously: wait while this operator runs
    async with running_operator(registry, api.kubeconfig):  # and once more: nothing recorded twice
        await status_where(c, ns, "m", lambda s: s.get("observedGeneration"), "reconciled again")
        await asyncio.sleep(3)  # several resyncs (every 1 s): none may record or promote again
    obj = await cr(c, ns, "m")
    assert [m["version"] for m in obj["status"]["models"]] == [1]
    assert [j["metadata"]["name"] for j in await jobs(c, ns)] == ["m-train-1"]
    assert obj["status"]["training"]["runs"] == 1
    promoted = [r for r in await reasons(c, ns, "m") if r == "ModelPromoted"]
    assert len(promoted) == 1


async def test_schedule_missed_while_down_runs_once(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-cron"
    await create_model(c, model("m", ns, {"trigger": {"schedule": "0 3 * * *"}}))
    obj = await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("nextScheduledRun"), "next run")
    assert obj["status"]["training"]["nextScheduledRun"].endswith("T03:00:00Z")
    # Pretend the operator slept through three ticks: the run is due since long ago.
    await c.patch("continualmodels", ns, "m", {"status": {"training": {"nextScheduledRun": "2026-01-01T03:00:00Z"}}},
                  subresource="status")
    await wait_job(c, ns, "m-train-1")
    obj = await status_where(c, ns, "m", lambda s: s["training"].get("nextScheduledRun", "").startswith("20")
                             and s["training"]["nextScheduledRun"] > "2026-01-02", "rescheduled")
    assert "schedule" in obj["status"]["training"]["lastRun"]["trigger"]
    assert [j["metadata"]["name"] for j in await jobs(c, ns)] == ["m-train-1"]


async def test_new_labeled_images_start_a_run(api: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    c, ns = api, "t-labeled"
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "1")
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_POLL_SECONDS", "1")
    with RoboflowDouble() as rf:
        # The test's own operator configuration allows the local double (and nothing else).
        monkeypatch.setenv("KONTINUAL_ROBOFLOW_API_URLS", rf.url)
        rf.set_annotated("soccer", 100)
        dataset = {**ROBOFLOW, "apiUrl": rf.url}
        async with running_operator(registry, api.kubeconfig):
            await create_model(c, model("m", ns, {"dataset": dataset, "trigger": {"minNewLabeledImages": 50}}),
                               api_key=rf.api_key)
            obj = await status_where(c, ns, "m", lambda s: (s.get("training") or {}).get("labeledImagesAtLastRun") == 100,
                                     "baseline from the first poll")
            rf.set_annotated("soccer", 130)
            await status_where(c, ns, "m", lambda s: s["training"].get("lastLabeledImages") == 130, "second poll")
            assert await jobs(c, ns) == []
            rf.set_annotated("soccer", 160)
            await wait_job(c, ns, "m-train-1")
            obj = await status_where(c, ns, "m", lambda s: s["training"].get("labeledImagesAtLastRun") == 160,
                                     "new baseline")
            assert "60 new labeled images" in obj["status"]["training"]["lastRun"]["trigger"]
            assert rf.api_key not in json.dumps(obj)
            assert all(rf.api_key not in json.dumps(e) for e in await c.events(ns))
