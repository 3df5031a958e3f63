"""The ContinualModel CRD is a valid structural schema, teaches the API, and accepts exactly the right CRs."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import re
from typing import Any, Callable, Iterator

import jsonschema
import pytest
import yaml

from kontinual.common import contract
from kontinual.common.contract import BUILTIN_RECIPES
from kontinual.controller import decisions, status, statusdata
from kontinual.controller.statusdata import TrainingStatus
from kontinual.controller import spec as specs
from tests.support.crd import (
    EXAMPLES, CRValidationError, apply_defaults, default_in_place, errors, load_crd, load_examples, schema,
    to_json_schema, validate,
)

# The spec field names are a contract with operator/kontinual/controller/spec.py, the docs and users.
SPEC_FIELDS = """
task classNames model model.uri
serving serving.replicas serving.image serving.port serving.batchSize serving.numCores
serving.resources serving.resources.limits serving.resources.requests serving.nodeSelector
serving.tolerations serving.affinity serving.imagePullSecrets serving.progressDeadlineSeconds
serving.networkPolicy serving.networkPolicy.from serving.networkPolicy.metricsFrom
dataLogging dataLogging.frequency dataLogging.maxPerMinute dataLogging.uploadPredictions
dataLogging.queueSize dataLogging.metricsPort dataLogging.roboflow
dataLogging.roboflow.workspace dataLogging.roboflow.project dataLogging.roboflow.apiKeySecretRef
dataLogging.roboflow.apiKeySecretRef.name dataLogging.roboflow.apiKeySecretRef.key
dataLogging.roboflow.apiUrl dataLogging.roboflow.split dataLogging.roboflow.batch
dataLogging.roboflow.tags
training training.trigger training.trigger.schedule training.trigger.minNewLabeledImages
training.dataset training.dataset.version training.dataset.workspace training.dataset.project
training.dataset.apiKeySecretRef training.dataset.apiKeySecretRef.name
training.dataset.apiKeySecretRef.key training.dataset.apiUrl training.baseWeights
training.recipe training.recipe.configMapRef training.recipe.configMapRef.name
training.recipe.configMapRef.key training.recipe.uri training.epochs training.imageSize
training.batchSize training.device training.image training.resources training.nodeSelector
training.tolerations training.activeDeadlineSeconds training.backoffLimit
training.ttlSecondsAfterFinished
storage storage.pvc storage.pvc.claimName storage.pvc.size storage.pvc.storageClassName
storage.pvc.accessModes
rollout rollout.gate rollout.gate.metric rollout.gate.minDelta rollout.historyLimit
rollout.pinnedVersion
""".split()

# Keywords a structural apiextensions/v1 schema may not use (or that we never need).
FORBIDDEN_KEYWORDS = {"$ref", "definitions", "dependencies", "patternProperties", "uniqueItems",
                      "id", "$schema", "additionalItems"}
VALUE_ONLY_FORBIDDEN = {"type", "description", "default", "nullable", "additionalProperties",
                        "x-kubernetes-preserve-unknown-fields"}
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node` with its field path (items as path[])."""
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def spec_node(path: str) -> dict[str, Any]:
    node = schema()["properties"]["spec"]
    for part in path.split("."):
        node = node["properties"][part]
    return node


def example(name: str) -> dict[str, Any]:
    return copy.deepcopy(load_examples()[name])


# --- the CRD object itself -------------------------------------------------------------------

def test_names_scope_and_version() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "continualmodels.kontinual.io"
    spec = crd["spec"]
    assert spec["group"] == "kontinual.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ContinualModel", "listKind": "ContinualModelList", "plural": "continualmodels",
        "singular": "continualmodel", "shortNames": ["cmodel"], "categories": ["kontinual"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_readiness_version_and_training() -> None:
    [version] = load_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Serving", "Training", "Age", "Reason", "Message"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert (columns["Serving"]["type"], columns["Serving"]["jsonPath"]) == ("integer", ".status.serving.version")
    assert columns["Training"]["jsonPath"] == '.status.conditions[?(@.type=="Training")].status'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Message"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].message'
    assert {n: c.get("priority", 0) for n, c in columns.items()} == {
        "Ready": 0, "Serving": 0, "Training": 0, "Age": 0, "Reason": 1, "Message": 1}


def test_every_contract_field_is_in_the_schema() -> None:
    missing = []
    for path in SPEC_FIELDS:
        try:
            spec_node(path)
        except KeyError:
            missing.append(path)
    assert not missing, f"spec fields missing from the CRD: {missing}"
    assert schema()["required"] == ["spec"]
    assert spec_node("model")["required"] == ["uri"] and schema()["properties"]["spec"]["required"] == ["model"]


def test_schema_is_structural_and_described() -> None:
    """Rules of apiextensions/v1 structural schemas, plus: every field has a description."""
    problems = []
    for path, node in walk(schema()):
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        if int_or_string:
            if node.get("anyOf") != INT_OR_STRING or "type" in node:
                problems.append(f"{path}: int-or-string must be anyOf [integer, string] without type")
        elif "type" not in node:
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties together with additionalProperties")
        if FORBIDDEN_KEYWORDS & set(node):
            problems.append(f"{path}: forbidden keywords {FORBIDDEN_KEYWORDS & set(node)}")
        for key in ("anyOf", "allOf", "oneOf"):
            for sub in node.get(key, []) if not int_or_string else []:
                if VALUE_ONLY_FORBIDDEN & set(sub):
                    problems.append(f"{path}.{key}: only value validations allowed inside")
        is_field = path not in ("", "metadata") and not path.endswith(("[]", ".*"))
        if is_field and not node.get("description", "").strip():
            problems.append(f"{path}: no description (kubectl explain would show nothing)")
    assert not problems, "\n".join(problems)


def test_root_metadata_only_restricts_the_name() -> None:
    metadata = schema()["properties"]["metadata"]
    assert set(metadata) == {"type", "properties"} and set(metadata["properties"]) == {"name"}


def test_patterns_compile_and_are_re2_compatible() -> None:
    for path, node in walk(schema()):
        if "pattern" in node:
            re.compile(node["pattern"])
            assert not re.search(r"\(\?[=!<]|\\[1-9]", node["pattern"]), f"{path}: not RE2-compatible"


def test_every_default_is_valid_for_its_field() -> None:
    """The API server rejects a CRD whose (defaulted) defaults do not validate."""
    for path, node in walk(schema()):
        if "default" in node:
            holder = {"x": copy.deepcopy(node["default"])}
            default_in_place(holder, {"type": "object", "properties": {"x": node}})
            problems = list(jsonschema.Draft7Validator(to_json_schema(node)).iter_errors(holder["x"]))
            assert not problems, f"{path}: default {node['default']!r}: {problems[0].message}"


def test_status_keeps_unknown_fields_for_kopf() -> None:
    status = schema()["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert {"observedGeneration", "conditions", "serving", "training", "models"} <= set(status["properties"])
    kopf_bookkeeping = {"status": {"kopf": {"progress": {"h": {"retries": 1}}}, "reconcile": None}}
    cr = {**example("minimal.yaml:demo"), **kopf_bookkeeping}
    assert validate(cr)["status"]["kopf"] == {"progress": {"h": {"retries": 1}}}


# --- the examples ------------------------------------------------------------------------------

def test_examples_exist() -> None:
    assert set(load_examples()) >= {"minimal.yaml:demo", "soccer.yaml:soccer"}


@pytest.mark.parametrize("name", sorted(load_examples()))
def test_example_validates_against_the_crd(name: str) -> None:
    validate(example(name))


def test_minimal_example_is_serve_only_and_gets_the_documented_defaults() -> None:
    cr = example("minimal.yaml:demo")
    assert set(cr["spec"]) == {"model"}
    spec = validate(cr)["spec"]
    assert spec["task"] == "yolo"
    assert spec["serving"] == {"replicas": 1, "runtime": "deepsparse", "image": "", "port": 5543, "batchSize": 1,
                               "progressDeadlineSeconds": 600}
    assert spec["storage"] == {"pvc": {"claimName": "", "size": "10Gi",
                                       "accessModes": ["ReadWriteOnce"]}}
    assert spec["rollout"] == {"gate": {"metric": "mAP50", "minDelta": 0.0, "minValue": 0.1}, "historyLimit": 5}
    assert "dataLogging" not in spec and "training" not in spec


def test_soccer_example_uses_the_whole_loop() -> None:
    spec = validate(example("soccer.yaml:soccer"))["spec"]
    roboflow = spec["dataLogging"]["roboflow"]
    assert roboflow["apiKeySecretRef"] == {"name": "roboflow", "key": "apiKey"}
    assert spec["training"]["trigger"] == {"schedule": "0 3 * * 0", "minNewLabeledImages": 200}
    assert "recipe" not in spec["training"] and spec["training"]["baseWeights"] == ""  # the stub's transfer
    assert spec["training"]["dataset"] == {"version": "latest", "generate": True, "augmentation": {},
                                           "generateTimeoutSeconds": 900}
    assert spec["rollout"]["gate"] == {"metric": "mAP50", "minDelta": 0.0, "minValue": 0.2}
    assert spec["dataLogging"]["queueSize"] == 100 and spec["dataLogging"]["metricsPort"] == 9101


def soccer_extras() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((EXAMPLES / "soccer-extras.yaml").read_text(encoding="utf-8"))
    return {d["kind"]: d for d in docs}


def test_soccer_extras_hold_what_the_cr_refers_to_without_a_real_key() -> None:
    extras, spec = soccer_extras(), example("soccer.yaml:soccer")
    namespace = spec["metadata"]["namespace"]
    assert extras["Namespace"]["metadata"]["name"] == namespace
    secret = extras["Secret"]
    ref = spec["spec"]["dataLogging"]["roboflow"]["apiKeySecretRef"]
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == (ref["name"], namespace)
    assert secret["stringData"] == {ref["key"]: "replace-me"}
    assert set(extras) == {"Namespace", "Secret"}


# --- defaulting, as the API server does it ---------------------------------------------------------

def test_nested_defaults_apply_only_where_the_parent_exists() -> None:
    cr = example("minimal.yaml:demo")
    cr["spec"]["dataLogging"] = {"roboflow": {"workspace": "w", "project": "p",
                                              "apiKeySecretRef": {"name": "rf"}}}
    cr["spec"]["training"] = {"recipe": {"configMapRef": {"name": "r"}}}
    spec = apply_defaults(cr)["spec"]
    logging = spec["dataLogging"]
    assert (logging["frequency"], logging["maxPerMinute"], logging["uploadPredictions"]) == (100, 60, False)
    assert logging["roboflow"] == {"workspace": "w", "project": "p",
                                   "apiKeySecretRef": {"name": "rf", "key": "apiKey"},
                                   "split": "train", "batch": "production", "tags": ["production"]}
    training = spec["training"]
    assert training["trigger"] == {}
    assert training["dataset"] == {"version": "latest", "generate": True, "generateTimeoutSeconds": 900}
    assert training["recipe"] == {"configMapRef": {"name": "r", "key": "recipe.yaml"}}
    assert (training["epochs"], training["imageSize"], training["batchSize"], training["device"]) == (50, 640, 16, "auto")
    assert (training["activeDeadlineSeconds"], training["backoffLimit"], training["ttlSecondsAfterFinished"]) == (86400, 1, 86400)
    assert "apiKeySecretRef" not in training["dataset"], "dataset credentials default in Python, not in the CRD"


def test_defaulting_keeps_user_values_nulls_and_the_input() -> None:
    cr = example("minimal.yaml:demo")
    cr["spec"]["serving"] = {"replicas": 0, "numCores": None, "image": None, "nodeSelector": {"disk": None, "zone": "a"}}
    cr["spec"]["rollout"] = {"pinnedVersion": None, "gate": None}
    cr["spec"]["dataLogging"] = None
    before = copy.deepcopy(cr)
    spec = apply_defaults(cr)["spec"]
    assert cr == before
    assert spec["serving"]["replicas"] == 0 and spec["serving"]["numCores"] is None
    assert spec["serving"]["image"] == "", "a null in a non-nullable field takes the default"
    assert spec["serving"]["nodeSelector"] == {"zone": "a"}, "non-nullable nulls without a default are pruned"
    assert "dataLogging" not in spec
    assert spec["rollout"]["pinnedVersion"] is None
    assert spec["rollout"]["gate"] == {"metric": "mAP50", "minDelta": 0.0, "minValue": 0.1}
    assert apply_defaults(apply_defaults(cr)) == apply_defaults(cr)


# --- what the API server rejects, and how it names the field ---------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(cr: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = cr
        for part in parents:
            node = node.setdefault(part, {})
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return mutate


BAD = [
    ("missing model.uri", _set("spec.model.uri", KeyError), "spec.model.uri", "required"),
    ("negative replicas", _set("spec.serving.replicas", -1), "spec.serving.replicas", "minimum"),
    ("s3 model uri", _set("spec.model.uri", "s3://bucket/model.onnx"), "spec.model.uri", "s3://"),
    ("http model uri", _set("spec.model.uri", "http://host/m.onnx"), "spec.model.uri", "http://"),
    ("relative file uri", _set("spec.model.uri", "file://models/m.onnx"), "spec.model.uri", "file://"),
    ("pvc claim not a DNS label", _set("spec.model.uri", "pvc://My_Claim/m.onnx"), "spec.model.uri", "My_Claim"),
    ("pvc uri without path", _set("spec.model.uri", "pvc://models"), "spec.model.uri", "pvc://"),
    ("dataset version v7", _set("spec.training.dataset.version", "v7"), "spec.training.dataset.version", "v7"),
    ("dataset version 0", _set("spec.training.dataset.version", "0"), "spec.training.dataset.version", "'0'"),
    ("dataset version as integer", _set("spec.training.dataset.version", 7), "spec.training.dataset.version", "string"),
    ("gate metric", _set("spec.rollout.gate.metric", "accuracy"), "spec.rollout.gate.metric", "accuracy"),
    ("image size not a multiple of 32", _set("spec.training.imageSize", 100), "spec.training.imageSize", "multiple"),
    ("both recipe sources", _set("spec.training.recipe", {"configMapRef": {"name": "r"}, "uri": "https://x/r.yaml"}),
     "spec.training.recipe", "too many properties"),
    ("unknown built-in recipe", _set("spec.training.recipe", {"uri": "builtin:prune-harder"}),
     "spec.training.recipe.uri", "builtin:prune-harder"),
    ("port out of range", _set("spec.serving.port", 70000), "spec.serving.port", "maximum"),
    ("typo in a field name", _set("spec.serving.replica", 2), "spec.serving.replica", "unknown field"),
    ("no Secret for Roboflow", _set("spec.dataLogging", {"roboflow": {"workspace": "w", "project": "p"}}),
     "spec.dataLogging.roboflow.apiKeySecretRef", "required"),
    ("cron with three fields", _set("spec.training.trigger.schedule", "0 3 *"), "spec.training.trigger.schedule", "0 3 *"),
    ("split", _set("spec.dataLogging", {"roboflow": {"workspace": "w", "project": "p",
                                                     "apiKeySecretRef": {"name": "k"}, "split": "dev"}}),
     "spec.dataLogging.roboflow.split", "dev"),
    ("claim name with capitals", _set("spec.storage.pvc.claimName", "Models"), "spec.storage.pvc.claimName", "Models"),
    ("size not a quantity", _set("spec.storage.pvc.size", "ten gigs"), "spec.storage.pvc.size", "ten gigs"),
    ("history limit too long", _set("spec.rollout.historyLimit", 51), "spec.rollout.historyLimit", "maximum"),
    ("name too long for the children", _set("metadata.name", "m" * 46), "metadata.name", "too long"),
    ("unsupported task", _set("spec.task", "segmentation"), "spec.task", "segmentation"),
    ("quantity not a quantity", _set("spec.serving.resources", {"limits": {"cpu": "lots"}}),
     "spec.serving.resources.limits.cpu", "lots"),
]


@pytest.mark.parametrize("mutate, field, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_cr_is_rejected_naming_the_field(mutate: Mutation, field: str, fragment: str) -> None:
    cr = example("minimal.yaml:demo")
    mutate(cr)
    with pytest.raises(CRValidationError) as caught:
        validate(cr)
    assert caught.value.path == field, str(caught.value)
    assert fragment in str(caught.value) and str(caught.value).startswith(field + ":")


def test_all_problems_are_reported_not_just_the_first() -> None:
    cr = example("minimal.yaml:demo")
    cr["spec"]["serving"] = {"replicas": -1, "port": 0}
    assert [e.path for e in errors(cr)] == ["spec.serving.port", "spec.serving.replicas"]


@pytest.mark.parametrize("uri", [
    "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94",
    "https://models.example.com/yolov5s.onnx?sig=abc",
    "pvc://models/v3/model.onnx",
    "file:///opt/models/yolov5s.onnx",
])
def test_each_documented_model_uri_form_is_accepted(uri: str) -> None:
    cr = example("minimal.yaml:demo")
    cr["spec"]["model"]["uri"] = uri
    validate(cr)


@pytest.mark.parametrize("weights", ["", "yolov5s.yaml", "pvc://models/base/yolov5s.pt",
                                     "https://example.com/w/yolov5s.pt", "file:///opt/weights/yolov5s.pt",
                                     "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94",
                                     "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none?recipe_type=transfer"])
def test_base_weights_forms_are_accepted(weights: str) -> None:
    cr = example("minimal.yaml:demo")
    cr["spec"]["training"] = {"baseWeights": weights}
    validate(cr)


@pytest.mark.parametrize("name", BUILTIN_RECIPES)
def test_every_builtin_recipe_is_accepted_by_name(name: str) -> None:
    cr = example("minimal.yaml:demo")
    cr["spec"]["training"] = {"recipe": {"uri": f"builtin:{name}"}}
    validate(cr)


def test_resources_take_integers_and_quantities() -> None:
    cr = example("minimal.yaml:demo")
    cr["spec"]["serving"] = {"resources": {"limits": {"cpu": 2, "memory": "4Gi"}, "requests": {"cpu": "500m"}}}
    cr["spec"]["training"] = {"resources": {"limits": {"nvidia.com/gpu": 1}}, "device": "cuda",
                              "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    validate(cr)


# --- the CRD's defaults and the Python parser's defaults agree -------------------------------------

def _with(*changes: tuple[str, Any]) -> dict[str, Any]:
    cr = example("minimal.yaml:demo")
    for path, value in changes:
        _set(path, value)(cr)
    return cr


ROBOFLOW = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "rf"}}
AGREEMENT = {
    **{name: cr for name, cr in load_examples().items()},
    "dataLogging with only roboflow": _with(("spec.dataLogging", {"roboflow": ROBOFLOW})),
    "training with only a recipe ConfigMap": _with(("spec.training", {
        "recipe": {"configMapRef": {"name": "r"}},
        "dataset": {"workspace": "w", "project": "p", "apiKeySecretRef": {"name": "k"}}})),
    "existing claim": _with(("spec.storage", {"pvc": {"claimName": "shared-models"}})),
    "pinned version and a gate delta": _with(("spec.rollout", {"pinnedVersion": 3, "gate": {"minDelta": 0.01}})),
    # `training: {}` turns training on: the API server defaults it into a full section.
    "empty training section": _with(("spec.dataLogging", {"roboflow": ROBOFLOW}), ("spec.training", {})),
}


@pytest.mark.parametrize("name", sorted(AGREEMENT))
def test_parser_reads_the_same_spec_with_or_without_the_api_servers_defaults(name: str) -> None:
    """`kontinual render` parses files that never met an API server: its defaults must match the CRD's."""
    cr = copy.deepcopy(AGREEMENT[name])
    assert specs.parse(cr) == specs.parse(apply_defaults(cr))


def _unlisted(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """Keys in `value` the schema does not list (x-kubernetes-preserve-unknown-fields would keep them
    silently, but `kubectl explain` cannot show them)."""
    if isinstance(value, dict) and "properties" in node:
        out = []
        for key, sub in value.items():
            if key not in node["properties"]:
                out.append(f"{path}.{key}")
            else:
                out += _unlisted(sub, node["properties"][key], f"{path}.{key}")
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [p for i, v in enumerate(value) for p in _unlisted(v, node["items"], f"{path}[{i}]")]
    return []


def _written_status() -> dict[str, Any]:
    """A status as the writers produce it, every field set: conditions, serving, training, models."""
    now = "2026-11-27T22:00:00Z"
    t0 = datetime.datetime(2026, 11, 27, 22, 0, tzinfo=datetime.timezone.utc)
    conditions = status.merge_conditions(
        [status.Condition("Reconciled", True, "ChildrenApplied", "ok"),
         status.Condition("Available", True, "RolledOut", "1 of 1 pods ready"),
         status.Condition("Training", False, "Idle", ""),
         status.Condition("Degraded", False, "ModelPromoted", "v2 promoted")], None, 4, now)
    result = contract.TrainingResult(status="Succeeded", version=2, onnx="v2/model.onnx", sha256="ab" * 32,
                                     metrics={"mAP50": 0.61, "mAP50_95": 0.33}, sparsity=0.9,
                                     datasetVersion="7", images={"train": 520, "valid": 98, "test": 45},
                                     classNames=["ball", "player"], datasetGenerated=True,
                                     baseline={"version": 1, "metrics": {"mAP50": 0.5}},
                                     evaluatedOn={"split": "test", "images": 45, "datasetVersion": "7"})
    model = decisions.model_record(result, "soccer-train-2", now, decisions.Verdict(True, "GatePassed", "0.61 >= 0.5"))
    rolled_back = decisions.mark_rolled_back([dataclasses.replace(model, version=1)], 1, "pods never became ready")
    spec = specs.parse(example("soccer.yaml:soccer"))
    assert spec.training is not None
    spec = dataclasses.replace(spec, training=dataclasses.replace(
        spec.training, trigger=dataclasses.replace(spec.training.trigger, schedule="0 3 * * *")))
    training = decisions.evaluate_triggers(spec, TrainingStatus(), now=t0, train_request="go", labeled=640).training
    training = decisions.polled(training, error="Roboflow answered 503", finished=t0, poll_seconds=300)
    training = decisions.adopted(training, [], decisions.RunJob("soccer-train-3", "uid-3", 3, now, "schedule", "go"))
    training = decisions.recorded(training.replace(active_job="soccer-train-3", pending="schedule"), "uid-2")
    last = training.last_run
    assert last is not None
    training = training.replace(last_run=dataclasses.replace(
        last, finished_at=now, result="Failed", reason="DatasetEmpty", message="no images", promoted=False))
    serving = statusdata.ServingStatus(version=2, uri="pvc://soccer-models/v2/model.onnx", sha256="ab" * 32,
                                       url="http://soccer-server.vision.svc:5543/v2/models/soccer/infer/from_files",
                                       ready_replicas=1, class_names=("ball", "player"))
    return {"observedGeneration": 4, "conditions": conditions, "serving": serving.to_dict(),
            "training": training.to_dict(), "models": [model.to_dict(), *(m.to_dict() for m in rolled_back)]}


def test_every_status_field_the_operator_writes_is_in_the_status_schema() -> None:
    """`kubectl explain continualmodel.status` shows all of it: every typed status field is listed."""
    written = _written_status()
    node = schema()["properties"]["status"]
    assert _unlisted(written, node, "status") == []
    for kind, path in ((statusdata.TrainingStatus, ("training",)), (statusdata.LastRun, ("training", "lastRun")),
                       (statusdata.ModelRecord, ("models", None)), (statusdata.ServingStatus, ("serving",))):
        here = node
        for key in path:
            here = here["items"] if key is None else here["properties"][key]
        keys = {statusdata._camel(f.name) for f in dataclasses.fields(kind)}  # noqa: SLF001
        assert keys <= set(here["properties"]), f"{kind.__name__}: {sorted(keys - set(here['properties']))}"
        assert all(here["properties"][k].get("description") for k in keys)
    # Every field is set in the written status, so the check above covered each of them.
    assert set(written["training"]) == {statusdata._camel(f.name) for f in dataclasses.fields(TrainingStatus)}  # noqa: SLF001


def test_typed_status_round_trips() -> None:
    written = _written_status()
    assert statusdata.TrainingStatus.from_dict(written["training"]).to_dict() == written["training"]
    assert [m.to_dict() for m in statusdata.models_from(written["models"])] == written["models"]
    assert statusdata.ServingStatus.from_dict(written["serving"]).to_dict() == written["serving"]  # type: ignore[union-attr]
    # Status is the operator's memory: a field of the wrong type reads as unset, never a crash.
    odd = statusdata.TrainingStatus.from_dict({"runs": "three", "lastRun": [], "recordedJobs": "x"})
    assert (odd.runs, odd.last_run, odd.recorded_jobs) == (None, None, None)
    assert statusdata.models_from([{"sha256": "no version"}, "junk", {"version": 2}]) == \
        [statusdata.ModelRecord(version=2)]


def test_status_the_operator_writes_passes_the_status_schema() -> None:
    """The API server validates status patches against the known fields: the writers' shapes must fit."""
    cr = example("soccer.yaml:soccer")
    cr["status"] = {**_written_status(), "kopf": {"progress": {}}}
    validated = validate(cr)["status"]
    assert validated["models"][0]["metrics"] == {"mAP50": 0.61, "mAP50_95": 0.33}
    with pytest.raises(CRValidationError, match=r"status\.serving\.version"):
        validate({**cr, "status": {**cr["status"], "serving": {"version": "two"}}})
