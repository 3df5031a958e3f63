"""The chart's RBAC grants every API call the operator's code declares, and nothing else.

The required rules are not copied by hand: `kontinual.controller.k8s.API_USAGE` is filled where each API
resource the operator's reconcile uses is declared, and `kontinual.controller.handlers.FRAMEWORK_API_USAGE`
lists what kopf itself does (CRD and namespace observation, events, finalizers, status).
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

import pytest

from tests.chart.render import RELEASE_NAMESPACE, by_kind, one, render

# Resources that have no namespace: they can only be granted by a ClusterRole.
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
WATCHED = ("team-a", "team-b")

Usage = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def _flatten(entries: Iterable[tuple[str, str, Iterable[str]]]) -> set[Usage]:
    return {(group, resource, verb) for group, resource, verbs in entries for verb in verbs}


def application_usage() -> set[Usage]:
    k8s = importlib.import_module("kontinual.controller.k8s")
    usage = _flatten(k8s.API_USAGE)
    assert usage, "kontinual.controller.k8s.API_USAGE is empty: the operator declares no API calls"
    return usage


def framework_usage() -> set[Usage]:
    try:
        handlers = importlib.import_module("kontinual.controller.handlers")
    except ModuleNotFoundError as exc:
        if exc.name != "kontinual.controller.handlers":
            raise
        pytest.skip("kontinual.controller.handlers does not exist yet (it declares FRAMEWORK_API_USAGE)")
    if not hasattr(handlers, "FRAMEWORK_API_USAGE"):
        pytest.skip("kontinual.controller.handlers.FRAMEWORK_API_USAGE is not declared yet")
    return _flatten(handlers.FRAMEWORK_API_USAGE)


def granted(rules: list[dict[str, Any]]) -> set[Usage]:
    """Every (group, resource, verb) a list of PolicyRules grants; wildcards are refused outright."""
    out: set[Usage] = set()
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in {field} of rule {rule}"
        assert not rule.get("resourceNames"), "resourceNames would not cover objects the users name"
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def _cluster_grants(manifests: list[dict[str, Any]]) -> set[Usage]:
    sa = one(manifests, "ServiceAccount")["metadata"]["name"]
    roles = {r["metadata"]["name"]: r for r in by_kind(manifests, "ClusterRole")}
    grants: set[Usage] = set()
    for binding in by_kind(manifests, "ClusterRoleBinding"):
        if {"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NAMESPACE} in binding["subjects"]:
            grants |= granted(roles[binding["roleRef"]["name"]]["rules"])
    return grants


def _namespace_grants(manifests: list[dict[str, Any]], namespace: str) -> set[Usage]:
    sa = one(manifests, "ServiceAccount")["metadata"]["name"]
    roles = {r["metadata"]["name"]: r for r in by_kind(manifests, "Role") if r["metadata"]["namespace"] == namespace}
    grants: set[Usage] = set()
    for binding in by_kind(manifests, "RoleBinding"):
        if binding["metadata"]["namespace"] != namespace:
            continue
        if {"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NAMESPACE} in binding["subjects"]:
            assert binding["roleRef"]["kind"] == "Role"
            grants |= granted(roles[binding["roleRef"]["name"]]["rules"])
    return grants


def _missing(needed: set[Usage], grants: set[Usage]) -> list[str]:
    return sorted(f"{g or 'core'}/{r}: {v}" for g, r, v in needed - grants)


def test_cluster_wide_rbac_covers_application_calls() -> None:
    grants = _cluster_grants(render())
    assert _missing(application_usage(), grants) == []


def test_cluster_wide_rbac_covers_framework_calls() -> None:
    grants = _cluster_grants(render())
    assert _missing(framework_usage(), grants) == []


def test_namespaced_rbac_covers_application_calls_in_each_namespace() -> None:
    manifests = render({"watchNamespaces": "{" + ",".join(WATCHED) + "}"})
    cluster = _cluster_grants(manifests)
    for namespace in WATCHED:
        grants = _namespace_grants(manifests, namespace)
        needed = {u for u in application_usage() if (u[0], u[1]) not in CLUSTER_SCOPED}
        assert _missing(needed, grants) == [], f"Role in {namespace} misses calls"
    # Namespaced mode gives no namespaced resource cluster-wide.
    assert {(g, r) for g, r, _ in cluster} <= CLUSTER_SCOPED


def test_namespaced_rbac_covers_framework_calls() -> None:
    manifests = render({"watchNamespaces": "{" + ",".join(WATCHED) + "}"})
    cluster = _cluster_grants(manifests)
    for namespace in WATCHED:
        grants = _namespace_grants(manifests, namespace) | cluster
        assert _missing(framework_usage(), grants) == [], f"framework calls not granted for {namespace}"


def leader_usage() -> set[Usage]:
    return _flatten(importlib.import_module("kontinual.controller.k8s").LEADER_API_USAGE)


@pytest.mark.parametrize("values", [None, {"watchNamespaces": "{" + ",".join(WATCHED) + "}"}])
def test_the_leader_lease_is_granted_in_the_release_namespace_only(values: dict[str, str] | None) -> None:
    manifests = render(values)
    assert _missing(leader_usage(), _namespace_grants(manifests, RELEASE_NAMESPACE)) == []
    assert not {u for u in _cluster_grants(manifests) if u[1] == "leases"}, "Leases are granted cluster-wide"
    for namespace in WATCHED:
        assert not {u for u in _namespace_grants(manifests, namespace) if u[1] == "leases"}
    assert not {u for u in _namespace_grants(render({**(values or {}), "leaderElection.enabled": "false",
                                                     "replicaCount": "1"}), RELEASE_NAMESPACE)
                if u[1] == "leases"}, "Leases are granted without leader election"


def test_rbac_grants_nothing_the_code_does_not_use() -> None:
    """Least privilege: every granted verb is one the operator or kopf declares it uses."""
    needed = application_usage() | framework_usage() | leader_usage()
    for values in (None, {"watchNamespaces": "{" + ",".join(WATCHED) + "}"}):
        manifests = render(values)
        grants = _cluster_grants(manifests) | _namespace_grants(manifests, RELEASE_NAMESPACE)
        for namespace in WATCHED:
            grants |= _namespace_grants(manifests, namespace)
        extra = sorted(f"{g or 'core'}/{r}: {v}" for g, r, v in grants - needed)
        assert extra == [], f"chart grants more than the code uses ({values or 'default values'})"


def test_operator_gets_no_secret_list_or_write() -> None:
    """The Roboflow key lives in user Secrets: the operator must never list or change Secrets."""
    for values in (None, {"watchNamespaces": "{team-a}"}):
        manifests = render(values)
        grants = _cluster_grants(manifests) | _namespace_grants(manifests, "team-a")
        assert not {v for g, r, v in grants if (g, r) == ("", "secrets")} - {"get"}
