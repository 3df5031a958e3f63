"""The emulated API server keeps the Kubernetes API rules the reconcile tests rely on (and kmock 0.8 lacks)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.emulator import semantics
from tests.emulator.cluster import ApiError, Cluster

STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def configmap(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "labels": labels or {}, **extra}, "data": {"k": "v"}}


def deployment(name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "b:1"}]}}}}


async def watch(api: Cluster, path: str, **params: str) -> list[dict[str, Any]]:
    """Read a watch stream until the server ends it (timeoutSeconds)."""
    query = {"watch": "true", "timeoutSeconds": "1", **params}
    async with api.session.get(api.url + path, params=query) as rsp:
        return [json.loads(line) for line in (await rsp.text()).splitlines() if line.strip()]


async def test_resource_versions_grow_and_a_noop_write_changes_nothing(api: Cluster) -> None:
    created = await api.create(configmap("a"))
    assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    changed = await api.patch("configmaps", "ns", "a", {"data": {"k": "w"}})
    assert int(changed["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    same = await api.patch("configmaps", "ns", "a", {"data": {"k": "w"}})
    assert same["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
    events = await watch(api, "/api/v1/namespaces/ns/configmaps", resourceVersion=created["metadata"]["resourceVersion"])
    assert [e["type"] for e in events] == ["MODIFIED"]


async def test_a_watch_resumes_from_the_list_without_losing_or_replaying_events(api: Cluster) -> None:
    await api.create(configmap("before"))
    listed = await api._call("GET", "/api/v1/configmaps")
    await api.create(configmap("between"))  # after the list, before the watch
    events = await watch(api, "/api/v1/configmaps", resourceVersion=listed["metadata"]["resourceVersion"])
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "between")]


async def test_label_selectors_filter_lists_and_watches(api: Cluster) -> None:
    await api.create(configmap("ours", {"app.kubernetes.io/managed-by": "kontinual", "tier": "a"}))
    await api.create(configmap("theirs", {"tier": "b"}))
    ours = await api.list("configmaps", "ns", "app.kubernetes.io/managed-by=kontinual")
    assert [c["metadata"]["name"] for c in ours] == ["ours"]
    assert [c["metadata"]["name"] for c in await api.list("configmaps", "ns", "tier in (a,b),tier!=a")] == ["theirs"]
    events = await watch(api, "/api/v1/configmaps", labelSelector="!app.kubernetes.io/managed-by")
    assert [e["object"]["metadata"]["name"] for e in events] == ["theirs"]


def continual_model(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": "m", "namespace": "ns"}, "spec": {"model": {"uri": "zoo:a"}, **spec}}


async def test_status_subresource_and_generation(api: Cluster) -> None:
    await api.create({**continual_model(), "status": {"observedGeneration": 1}})
    cr = await api.get("continualmodels", "ns", "m")
    assert "status" not in cr and cr["metadata"]["generation"] == 1
    cr = await api.patch("continualmodels", "ns", "m", {"spec": {"model": {"uri": "zoo:b"}}, "status": {"observedGeneration": 2}})
    assert (cr["metadata"]["generation"], cr.get("status")) == (2, None)
    cr = await api.patch("continualmodels", "ns", "m", {"spec": {"model": {"uri": "zoo:c"}}, "status": {"observedGeneration": 3}},
                         subresource="status")
    assert (cr["spec"]["model"]["uri"], cr["status"], cr["metadata"]["generation"]) == ("zoo:b", {"observedGeneration": 3}, 2)


async def test_the_crd_schema_prunes_defaults_and_validates(api: Cluster) -> None:
    created = await api.create(continual_model(typo={"x": 1}))
    assert "typo" not in created["spec"]  # pruned, as a structural schema does
    assert created["spec"]["serving"]["replicas"] == 1  # defaulted from the CRD
    with pytest.raises(ApiError) as invalid:
        await api.create({**continual_model(training={"recipe": {"configMapRef": {"name": "r", "key": "k"},
                                                                  "uri": "https://example.com/r.yaml"}}),
                          "metadata": {"name": "both", "namespace": "ns"}})
    assert invalid.value.status == 422 and "spec.training.recipe" in invalid.value.body["message"]


async def test_preconditions_conflict(api: Cluster) -> None:
    created = await api.create(configmap("a"))
    version = created["metadata"]["resourceVersion"]
    await api.patch("configmaps", "ns", "a", {"data": {"k": "changed"}})
    with pytest.raises(ApiError) as stale:
        await api.patch("configmaps", "ns", "a", {"metadata": {"resourceVersion": version}, "data": {"k": "x"}})
    assert stale.value.status == 409
    with pytest.raises(ApiError) as failed_test:  # kopf's optimistic finalizer patch
        await api.patch("configmaps", "ns", "a", [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
                                                   {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}],
                        content_type=JSON_PATCH)
    assert failed_test.value.status == 422
    with pytest.raises(ApiError) as exists:
        await api.create(configmap("a"))
    assert exists.value.status == 409


async def test_patch_types(api: Cluster) -> None:
    await api.create(deployment())
    merged = await api.patch("deployments", "ns", "web", {"spec": {"template": {"spec": {"containers": [
        {"name": "a", "image": "a:2"}]}}}}, content_type=STRATEGIC)
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"], c.get("env")) for c in containers] == [
        ("a", "a:2", [{"name": "X", "value": "1"}]), ("b", "b:1", None)]
    replaced = await api.patch("deployments", "ns", "web", {"spec": {"template": {"spec": {"containers": [
        {"name": "a", "image": "a:3"}]}}}})
    assert [c["name"] for c in replaced["spec"]["template"]["spec"]["containers"]] == ["a"]  # RFC 7386 replaces lists
    removed = await api.patch("deployments", "ns", "web", {"spec": {"paused": True}})
    assert (await api.patch("deployments", "ns", "web", {"spec": {"paused": None}}))["spec"].get("paused") is None
    assert removed["metadata"]["generation"] == 4
    with pytest.raises(ApiError) as apply:
        await api.patch("deployments", "ns", "web", {"spec": {}}, content_type="application/apply-patch+yaml")
    assert apply.value.status == 415


async def test_finalizers_hold_deletion_until_released(api: Cluster) -> None:
    await api.create(configmap("held", finalizers=["example.com/f"]))
    deleting = await api.delete("configmaps", "ns", "held")
    assert deleting["metadata"]["deletionTimestamp"]
    assert await api.get("configmaps", "ns", "held") is not None
    with pytest.raises(ApiError) as more:
        await api.patch("configmaps", "ns", "held", {"metadata": {"finalizers": ["example.com/f", "other/g"]}})
    assert more.value.status == 422
    await api.patch("configmaps", "ns", "held", {"metadata": {"finalizers": None}})
    assert await api.get("configmaps", "ns", "held") is None


async def test_garbage_collection_by_owner_uid(api: Cluster) -> None:
    owner = await api.create(configmap("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    await api.create(configmap("child", ownerReferences=[ref]))
    await api.delete("configmaps", "ns", "owner")
    assert await api.get("configmaps", "ns", "child") is None
    await api.create(configmap("late", ownerReferences=[ref]))  # its owner is already gone
    assert await api.get("configmaps", "ns", "late") is None


async def test_invalid_objects_are_refused(api: Cluster) -> None:
    for body in (configmap("Upper_Case"), configmap("ok", {"bad": "x" * 64}),
                 {**configmap("ok"), "data": {"n": 1}}):
        with pytest.raises(ApiError) as invalid:
            await api.create(body)
        assert invalid.value.status == 422, body


def test_label_selector_grammar() -> None:
    match = semantics.parse_label_selector("a=1,b!=2,c,!d,e in (x, y),f notin (z)")
    assert match({"a": "1", "b": "3", "c": "", "e": "y", "f": "w"})
    assert not match({"a": "1", "b": "3", "c": "", "e": "y", "f": "z"})
    assert not match({"a": "1", "c": "", "d": "", "e": "x"})
    assert semantics.parse_label_selector("")({"anything": "goes"})
