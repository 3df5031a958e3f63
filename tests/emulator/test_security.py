"""The operator as a deputy: it never modifies objects it does not control and never uses Secrets not marked for it."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kontinual.controller.access import SECRET_LABEL
from kontinual.controller.handlers import registry
from tests.emulator.cluster import Cluster, condition, running_operator, wait_for
from tests.emulator.test_reconcile import continual_model, cr_where
from tests.support.roboflow_double import RoboflowDouble

KEY = "team-b-database-password-123"
ROBOFLOW = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "team-b-db", "key": "apiKey"}}


@pytest.fixture
async def deputy(api: Cluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """The operator with a 1 s resync, so that a Secret labelled later is picked up quickly."""
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "1")
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_POLL_SECONDS", "1")
    async with running_operator(registry, api.kubeconfig):
        yield api


def foreign_service(ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"team": "b"}},
            "spec": {"type": "ClusterIP", "selector": {"app": "team-b-api"},
                     "ports": [{"name": "web", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}


def secret(ns: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-b-db", "namespace": ns,
                                                               "labels": labels or {}},
            "data": {"apiKey": base64.b64encode(KEY.encode()).decode()}}


def unchanged(before: dict[str, Any], after: dict[str, Any] | None) -> bool:
    return after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_children_controlled_by_someone_else_are_left_alone_and_reported(deputy: Cluster) -> None:
    c, ns = deputy, "t-hijack"
    service = await c.create(foreign_service(ns, "demo-server"))
    other = await c.create(continual_model("other", ns))
    other_uid = other["metadata"]["uid"]
    config = await c.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "demo-server-config", "namespace": ns, "ownerReferences": [{
            "apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel", "name": "other", "uid": other_uid,
            "controller": True}]}, "data": {"server.yaml": "theirs"}})

    await c.create(continual_model("demo", ns))
    model = await cr_where(c, ns, "demo", "Reconciled", "False", reason="ChildConflict")
    message = condition(model, "Reconciled")["message"]
    assert f"Service {ns}/demo-server exists and is not controlled by this ContinualModel (it has no controller)" in message
    assert f"ConfigMap {ns}/demo-server-config exists" in message and "ContinualModel other" in message
    assert condition(model, "Ready")["reason"] == "ChildConflict"
    async def both() -> list[dict[str, Any]] | None:  # kopf posts Events asynchronously, one by one
        found = await _warnings(c, ns, "demo", "ChildConflict")
        return found if len(found) >= 2 else None
    warnings = await wait_for(both, what="two ChildConflict Warnings")
    assert {w["message"].split(" exists")[0] for w in warnings} == {f"Service {ns}/demo-server",
                                                                     f"ConfigMap {ns}/demo-server-config"}

    # Their objects are exactly as they were; the children nobody else has were still made, and are ours.
    assert unchanged(service, await c.get("services", ns, "demo-server"))
    assert unchanged(config, await c.get("configmaps", ns, "demo-server-config"))
    uid = model["metadata"]["uid"]
    child = await c.get("deployments", ns, "demo-server")
    assert child is not None and child["metadata"]["ownerReferences"][0]["uid"] == uid
    assert await c.get("persistentvolumeclaims", ns, "demo-models") is None  # serve-only: no claim to make
    assert not [r for r in c.requests("PATCH", "services", "demo-server")]
    assert not [r for r in c.requests("PATCH", "configmaps", "demo-server-config")]

    # Deleting the model garbage-collects its own children only.
    await c.delete("continualmodels", ns, "demo")
    await wait_for(lambda: _gone(c, "deployments", ns, "demo-server"), what="demo's Deployment collected")
    assert unchanged(service, await c.get("services", ns, "demo-server"))
    assert unchanged(config, await c.get("configmaps", ns, "demo-server-config"))


async def test_a_conflict_is_warned_once_not_on_every_reconcile(deputy: Cluster) -> None:
    c, ns = deputy, "t-hijack-once"
    await c.create(foreign_service(ns, "demo-server"))
    await c.create(continual_model("demo", ns))
    await cr_where(c, ns, "demo", "Reconciled", "False", reason="ChildConflict")
    await wait_for(lambda: _warnings(c, ns, "demo", "ChildConflict"), what="a ChildConflict Warning")
    await wait_for(lambda: len(c.requests("GET", "services", "demo-server")) >= 4, 15,
                   what="several resyncs (every 1 s)")
    assert len(await _warnings(c, ns, "demo", "ChildConflict")) == 1
    # Once the other object is gone, the model takes the name and becomes whole.
    await c.delete("services", ns, "demo-server")
    await cr_where(c, ns, "demo", "Reconciled", "True", timeout=15)
    service = await c.get("services", ns, "demo-server")
    assert service is not None and service["spec"]["selector"]["app.kubernetes.io/instance"] == "demo"


async def test_a_job_name_taken_by_someone_else_is_not_adopted(deputy: Cluster) -> None:
    c, ns = deputy, "t-hijack-job"
    await c.create(secret(ns, {SECRET_LABEL: "true"}))
    job = await c.create({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "demo-train-1", "namespace": ns},
                          "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                         "containers": [{"name": "x", "image": "busybox"}]}}}})
    await c.create(continual_model("demo", ns, training={"dataset": ROBOFLOW}))
    await cr_where(c, ns, "demo", "Reconciled", "True")
    await c.patch("continualmodels", ns, "demo", {"metadata": {"annotations": {"kontinual.io/train-request": "1"}}})
    model = await cr_where(c, ns, "demo", "Degraded", "True", reason="ChildConflict")
    assert f"Job {ns}/demo-train-1 exists and is not controlled by this ContinualModel" in condition(model, "Degraded")["message"]
    assert not (model["status"].get("training") or {}).get("activeJob")
    assert unchanged(job, await c.get("jobs", ns, "demo-train-1"))


async def test_an_unlabelled_secret_is_never_read_nor_referenced(deputy: Cluster) -> None:
    c, ns = deputy, "t-secret"
    await c.create(secret(ns))
    # Everything else about this model is allowed: only the Secret's missing mark stops it.
    body = continual_model("demo", ns, dataLogging={"roboflow": ROBOFLOW})
    await c.create(body)
    model = await cr_where(c, ns, "demo", "Reconciled", "False", reason="InvalidSpec")
    message = condition(model, "Reconciled")["message"]
    assert f"Secret {ns}/team-b-db is not marked for use by ContinualModels" in message
    assert f"label secret team-b-db {SECRET_LABEL}=true" in message
    warnings = await wait_for(lambda: _warnings(c, ns, "demo", "InvalidSpec"), what="an InvalidSpec Warning")
    assert SECRET_LABEL in warnings[0]["message"]
    await wait_for(lambda: len(c.requests("GET", "continualmodels", "demo")) >= 4, 15, what="several resyncs")
    for plural in ("deployments", "configmaps", "jobs"):
        assert await c.list(plural, ns) == [], f"{plural} built for a model whose Secret is not allowed"
    reads = c.requests("GET", "secrets", "team-b-db")
    assert reads, "the operator never checked the Secret's labels"
    assert all("as=PartialObjectMetadata" in r.headers.get("Accept", "") for r in reads), (
        "the operator fetched the values of a Secret it may not use")

    # Its owner marks the Secret for Kontinual: the next resync builds the children.
    await c.patch("secrets", ns, "team-b-db", {"metadata": {"labels": {SECRET_LABEL: "true"}}})
    await cr_where(c, ns, "demo", "Reconciled", "True", timeout=15)
    deployment = await c.get("deployments", ns, "demo-server")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "ROBOFLOW_API_KEY", "valueFrom": {"secretKeyRef": {"name": "team-b-db", "key": "apiKey"}}} in env


async def test_an_api_url_outside_the_allow_list_never_receives_the_key(deputy: Cluster) -> None:
    c, ns = deputy, "t-exfiltrate"
    await c.create(secret(ns, {SECRET_LABEL: "true"}))
    with RoboflowDouble() as listener:  # the attacker's listener (this operator does not allow its URL)
        await c.create(continual_model("demo", ns, training={
            "dataset": {**ROBOFLOW, "apiUrl": listener.url}, "trigger": {"minNewLabeledImages": 1}}))
        model = await cr_where(c, ns, "demo", "Reconciled", "False", reason="InvalidSpec")
        message = condition(model, "Reconciled")["message"]
        assert "spec.training.dataset.apiUrl" in message and listener.url in message
        assert "https://api.roboflow.com" in message
        await wait_for(lambda: len(c.requests("GET", "continualmodels", "demo")) >= 4, 15, what="several resyncs")
        assert not listener.requests
        assert not c.requests("GET", "secrets"), "the operator read a Secret for a refused model"
        for plural in ("deployments", "configmaps", "jobs"):
            assert await c.list(plural, ns) == []


async def _warnings(c: Cluster, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in await c.events(ns, name) if e["type"] == "Warning" and e["reason"] == reason]


async def _gone(c: Cluster, plural: str, ns: str, name: str) -> bool:
    return await c.get(plural, ns, name) is None
