"""spec.serving.networkPolicy: parsed with field paths, built into a NetworkPolicy that guards each server port."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from kontinual.controller import builders
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec, parse
from kontinual.controller.specfields import SpecError
from tests.support.crd import errors

ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
ROBOFLOW = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "roboflow"}}
CLIENTS = {"namespaceSelector": {"matchLabels": {"team": "vision"}},
           "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["client", "ui"]}]}}
SCRAPER = {"ipBlock": {"cidr": "10.8.0.0/16", "except": ["10.8.1.0/24"]}}


def body(serving: dict[str, Any] | None = None, logging: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": ZOO}, "serving": copy.deepcopy(serving or {})}
    if logging:
        spec["dataLogging"] = {"roboflow": ROBOFLOW}
    return {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": "guarded", "namespace": "vision", "uid": "uid-1", "generation": 1}, "spec": spec}


def spec_of(serving: dict[str, Any] | None = None, logging: bool = True) -> Spec:
    return parse(body(serving, logging), Settings())


def built(serving: dict[str, Any], logging: bool = True) -> dict[str, Any]:
    policy = builders.network_policy(spec_of(serving, logging))
    assert policy is not None
    return policy


def test_no_policy_unless_asked_for() -> None:
    spec = spec_of()
    assert spec.serving.network_policy is None and builders.network_policy(spec) is None
    assert "NetworkPolicy" not in [c["kind"] for c in builders.serving_children(spec, Settings())]


def test_defaults_admit_this_namespaces_pods_to_each_port_and_nothing_else() -> None:
    policy = built({"networkPolicy": {}})
    deployment = builders.deployment(spec_of({"networkPolicy": {}}), Settings())
    assert policy["metadata"]["name"] == "guarded-server" and policy["metadata"]["namespace"] == "vision"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    # It selects exactly the server pods (the Deployment's own selector), never another workload.
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 5543}]},
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 9101}]},
    ]


def test_each_port_gets_its_own_sources() -> None:
    policy = built({"port": 8000, "networkPolicy": {"from": [CLIENTS], "metricsFrom": [SCRAPER]}})
    assert policy["spec"]["ingress"] == [
        {"from": [CLIENTS], "ports": [{"protocol": "TCP", "port": 8000}]},
        {"from": [SCRAPER], "ports": [{"protocol": "TCP", "port": 9101}]},
    ]


def test_an_empty_list_admits_nobody_to_that_port() -> None:
    # (A NetworkPolicy rule with an empty `from` would admit everyone: the builder never writes one.)
    assert built({"networkPolicy": {"from": [CLIENTS], "metricsFrom": []}})["spec"]["ingress"] == [
        {"from": [CLIENTS], "ports": [{"protocol": "TCP", "port": 5543}]}]
    assert built({"networkPolicy": {"from": [], "metricsFrom": []}})["spec"]["ingress"] == []


def test_without_data_logging_there_is_no_metrics_rule() -> None:
    assert built({"networkPolicy": {"metricsFrom": [SCRAPER]}}, logging=False)["spec"]["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 5543}]}]


def test_the_policy_comes_before_the_pods_it_guards() -> None:
    kinds = [c["kind"] for c in builders.serving_children(spec_of({"networkPolicy": {}}), Settings())]
    assert kinds.index("NetworkPolicy") < kinds.index("Deployment")


@pytest.mark.parametrize("version", ["1.25.0", "1.37.0"])
def test_built_policy_is_a_valid_kubernetes_object(version: str) -> None:
    for serving in ({"networkPolicy": {}}, {"networkPolicy": {"from": [CLIENTS], "metricsFrom": [SCRAPER]}},
                    {"networkPolicy": {"from": [], "metricsFrom": []}}):
        kubernetes_validate.validate(built(serving), version, strict=True)


@pytest.mark.parametrize(("peer", "fragment"), [
    ({}, "spec.serving.networkPolicy.from[0] must set podSelector"),
    ({"podSelectr": {}}, "spec.serving.networkPolicy.from[0] must set podSelector"),
    ({"podSelector": {"matchLabels": {"app": 1}}}, "from[0].podSelector.matchLabels must map"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Maybe"}]}}, "from[0].podSelector.matchExpressions"),
    ({"namespaceSelector": "team-a"}, "from[0].namespaceSelector must be a label selector"),
    ({"ipBlock": {"cidr": "10.0.0.0/33"}}, "from[0].ipBlock.cidr must be a CIDR"),
    ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["nope"]}}, "from[0].ipBlock.except[0] must be a CIDR"),
    ({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}, "ipBlock cannot be combined"),
])
def test_bad_sources_are_refused_naming_the_field(peer: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError) as error:
        spec_of({"networkPolicy": {"from": [peer]}})
    assert fragment in str(error.value)


def test_the_crd_accepts_the_documented_shapes_and_refuses_others() -> None:
    good = body({"networkPolicy": {"from": [CLIENTS, {"podSelector": {}}], "metricsFrom": [SCRAPER]}})
    assert errors(good) == []
    assert errors(body({"networkPolicy": {}})) == []
    bad = body({"networkPolicy": {"from": [{}], "metricsFrom": [{"ipBlock": {}}]}})
    fields = {e.path for e in errors(bad)}
    assert {"spec.serving.networkPolicy.from[0]", "spec.serving.networkPolicy.metricsFrom[0].ipBlock.cidr"} <= fields, fields
    # A list long enough to matter is refused by the API server, not by etcd later.
    many = body({"networkPolicy": {"from": [{"podSelector": {}}] * 33}})
    assert any(e.path == "spec.serving.networkPolicy.from" for e in errors(many))
