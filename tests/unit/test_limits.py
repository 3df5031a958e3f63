"""Every list, string and map of the spec is bounded, in the CRD and in the parser alike, with the field named."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest

from kontinual.controller.limits import LIMITS
from kontinual.controller.settings import Settings
from kontinual.controller.spec import parse
from kontinual.controller.specfields import SpecError
from tests.support.crd import errors, schema

ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
ROBOFLOW = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "roboflow"}}
BOUNDS = ("maxItems", "maxLength", "maxProperties")
# etcd's default object limit; kopf keeps a copy of the spec in the status, so a spec must fit twice.
ETCD_LIMIT = 1_572_864
# Bounds that are rules, not sizes: the parser states them in its own words.
RULES = {"training.recipe"}  # maxProperties 1: configMapRef or uri, not both


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    if node.get("type") == "array":
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    for key, sub in node.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{key}" if path else key)


def spec_schema() -> dict[str, Any]:
    return schema()["properties"]["spec"]


def test_the_parser_enforces_exactly_the_crds_bounds() -> None:
    crd = {path: next(node[b] for b in BOUNDS if b in node) for path, node in nodes(spec_schema())
           if any(b in node for b in BOUNDS) and path not in RULES}
    assert crd == LIMITS


def test_every_list_string_and_map_of_the_spec_is_bounded() -> None:
    unbounded = []
    for path, node in nodes(spec_schema()):
        kind = node.get("type")
        free_string = (kind == "string" or node.get("x-kubernetes-int-or-string")) and "enum" not in node
        is_map = isinstance(node.get("additionalProperties"), dict) or (
            node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node)
        if (free_string and "maxLength" not in node) or (kind == "array" and "maxItems" not in node) or (
                is_map and "maxProperties" not in node):
            unbounded.append(path)
    assert unbounded == []


def body(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": "big", "namespace": "vision"}, "spec": {"model": {"uri": ZOO}, **spec}}


# The ~820 KB classNames that once overflowed etcd on kopf's status write, and a few more.
OVERSIZED = [
    (body(classNames=[f"class-{i:06d}-" + "x" * 80 for i in range(9000)]), "spec.classNames",
     "spec.classNames has 9000 entries; at most 400 are allowed"),
    (body(classNames=["ball", "b" * 101]), "spec.classNames[1]",
     "spec.classNames[1] is 101 characters long; at most 100 are allowed"),
    (body(model={"uri": "https://models.example.com/" + "m" * 2100 + ".onnx"}), "spec.model.uri",
     "spec.model.uri is 2132 characters long; at most 2048"),
    (body(serving={"nodeSelector": {f"k{i}": "v" for i in range(40)}}), "spec.serving.nodeSelector",
     "spec.serving.nodeSelector has 40 keys; at most 32"),
    (body(serving={"nodeSelector": {"pool": "p" * 64}}), "spec.serving.nodeSelector.pool",
     "spec.serving.nodeSelector.pool is 64 characters long; at most 63"),
    (body(dataLogging={"roboflow": dict(ROBOFLOW, tags=["t"] * 33)}), "spec.dataLogging.roboflow.tags",
     "spec.dataLogging.roboflow.tags has 33 entries; at most 32"),
    (body(serving={"networkPolicy": {"metricsFrom": [
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["v"] * 65}]}}]}}),
     "spec.serving.networkPolicy.metricsFrom[0].podSelector.matchExpressions[0].values",
     "spec.serving.networkPolicy.metricsFrom[0].podSelector.matchExpressions[0].values has 65 entries; at most 64"),
    (body(training={"tolerations": [{"key": "k" * 318, "operator": "Exists"}]}), "spec.training.tolerations[0].key",
     "spec.training.tolerations[0].key is 318 characters long; at most 317"),
]


@pytest.mark.parametrize(("cr", "field", "message"), OVERSIZED, ids=[f for _, f, _ in OVERSIZED])
def test_an_oversized_value_is_refused_by_the_parser_naming_the_field(cr: dict[str, Any], field: str,
                                                                      message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse(copy.deepcopy(cr), Settings())
    assert message in str(error.value)


@pytest.mark.parametrize(("cr", "field", "message"), OVERSIZED, ids=[f for _, f, _ in OVERSIZED])
def test_an_oversized_value_is_refused_by_the_crd_naming_the_field(cr: dict[str, Any], field: str,
                                                                   message: str) -> None:
    found = errors(copy.deepcopy(cr))
    assert [e.path for e in found] == [field], found


def test_values_at_the_bounds_are_accepted_and_fit_etcd_twice() -> None:
    import json

    cr = body(classNames=[f"{i:03d}" + "c" * 97 for i in range(400)],
              model={"uri": ZOO, "classNames": [f"{i:03d}" + "m" * 97 for i in range(400)]},
              dataLogging={"roboflow": dict(ROBOFLOW, tags=["t" * 64] * 32)})
    assert errors(copy.deepcopy(cr)) == []
    spec = parse(copy.deepcopy(cr), Settings())
    assert len(spec.class_names) == 400 and len(spec.model_class_names) == 400
    assert 2 * len(json.dumps(cr)) < ETCD_LIMIT / 8  # the largest lists leave etcd ample room
