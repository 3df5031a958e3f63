"""Spec parsing: defaults, every cross-field rule (with the field named), URI forms, frozenness."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from kontinual.controller.settings import Settings
from kontinual.common.capture_settings import DEFAULT_METRICS_PORT
from kontinual.controller.spec import DEFAULT_PORT, ModelSource, SpecError, parse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
ROBOFLOW = {"workspace": "acme", "project": "soccer-players", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}
SETTINGS = Settings()


def cr(spec: dict[str, Any] | None = None, name: str = "soccer", **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
                            "metadata": {"name": name, **meta}, "spec": {"model": {"uri": ZOO}}}
    body["spec"].update(copy.deepcopy(spec or {}))
    return body


def error(spec: dict[str, Any], name: str = "soccer", settings: Settings = SETTINGS) -> str:
    with pytest.raises(SpecError) as info:
        parse(cr(spec, name), settings)
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------


def test_minimal_spec_gets_every_default() -> None:
    spec = parse(cr(), SETTINGS)
    assert (spec.name, spec.namespace, spec.task) == ("soccer", "default", "yolo")
    assert spec.model == ModelSource(uri=ZOO, scheme="zoo", path=ZOO)
    s = spec.serving
    assert (s.replicas, s.image, s.port, s.batch_size, s.num_cores) == (1, "", DEFAULT_PORT, 1, None)
    assert (dict(s.resources), dict(s.node_selector), s.tolerations, dict(s.affinity), s.image_pull_secrets) == (
        {}, {}, (), {}, ())
    assert spec.storage.claim_name == "soccer-models" and spec.storage.create
    assert (spec.storage.size, spec.storage.storage_class, spec.storage.access_modes) == ("10Gi", None, ("ReadWriteOnce",))
    assert (spec.rollout.gate.metric, spec.rollout.gate.min_delta) == ("mAP50", 0.0)
    assert (spec.rollout.history_limit, spec.rollout.pinned_version) == (5, None)
    assert spec.class_names == () and spec.data_logging is None and spec.training is None


def test_metadata_identity_is_kept() -> None:
    spec = parse(cr(name="demo", namespace="vision", uid="u-1", generation=4), SETTINGS)
    assert (spec.name, spec.namespace, spec.uid, spec.generation) == ("demo", "vision", "u-1", 4)


def test_data_logging_defaults_and_api_url_from_settings() -> None:
    settings = Settings(roboflow_api_url="https://roboflow.internal.example")
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}}), settings)
    dl = spec.data_logging
    assert dl is not None
    assert (dl.frequency, dl.max_per_minute, dl.upload_predictions, dl.queue_size, dl.metrics_port) == (
        100, 60, False, 100, DEFAULT_METRICS_PORT)
    rf = dl.roboflow
    assert (rf.workspace, rf.project, rf.split, rf.batch, rf.tags) == ("acme", "soccer-players", "train", "production",
                                                                       ("production",))
    assert (rf.api_key.name, rf.api_key.key) == ("roboflow", "apiKey")
    assert rf.api_url == "https://roboflow.internal.example"


def test_api_key_ref_key_defaults_to_apiKey_and_url_loses_trailing_slash() -> None:
    rf = dict(ROBOFLOW, apiKeySecretRef={"name": "rf"}, apiUrl="http://127.0.0.1:8080/")
    spec = parse(cr({"dataLogging": {"roboflow": rf}}), Settings(roboflow_api_urls=("http://127.0.0.1:8080",)))
    assert spec.data_logging is not None
    assert spec.data_logging.roboflow.api_key.key == "apiKey"
    assert spec.data_logging.roboflow.api_url == "http://127.0.0.1:8080"


def test_training_defaults() -> None:
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"epochs": 50}}), SETTINGS)
    t = spec.training
    assert t is not None
    assert (t.dataset_version, t.epochs, t.image_size, t.batch_size, t.device, t.image) == ("latest", 50, 640, 16,
                                                                                            "auto", "")
    assert (t.trigger.schedule, t.trigger.min_new_labeled_images) == (None, None)
    assert (t.recipe.config_map, t.recipe.uri, t.base_weights) == (None, None, "")
    assert (t.active_deadline_seconds, t.backoff_limit) == (86400, 1)


def test_training_dataset_falls_back_to_data_logging_roboflow() -> None:
    logging_rf = dict(ROBOFLOW, apiUrl="https://rf.example")
    spec = parse(cr({"dataLogging": {"roboflow": logging_rf}, "training": {"dataset": {"version": 7}}}),
                 Settings(roboflow_api_urls=("https://rf.example",)))
    assert spec.training is not None and spec.data_logging is not None
    ds = spec.training.dataset
    assert (ds.workspace, ds.project, ds.api_key, ds.api_url) == (
        "acme", "soccer-players", spec.data_logging.roboflow.api_key, "https://rf.example")
    assert spec.training.dataset_version == "7"


def test_training_dataset_overrides_win_field_by_field() -> None:
    dataset = {"project": "labeled-soccer", "apiKeySecretRef": {"name": "other", "key": "k"}}
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"dataset": dataset}}), SETTINGS)
    assert spec.training is not None
    ds = spec.training.dataset
    assert (ds.workspace, ds.project, ds.api_key.name, ds.api_key.key) == ("acme", "labeled-soccer", "other", "k")


def test_training_without_data_logging_needs_its_own_roboflow_coordinates() -> None:
    dataset = dict(ROBOFLOW, version="3")
    spec = parse(cr({"training": {"dataset": dataset}}), SETTINGS)
    assert spec.training is not None and spec.data_logging is None
    assert spec.training.dataset.project == "soccer-players"
    assert spec.training.dataset.api_url == SETTINGS.roboflow_api_url


@pytest.mark.parametrize("dataset, field", [
    ({}, "spec.training.dataset.apiKeySecretRef"),
    ({"workspace": "acme", "project": "p"}, "spec.training.dataset.apiKeySecretRef"),
    ({"apiKeySecretRef": {"name": "rf"}, "project": "p"}, "spec.training.dataset.workspace"),
    ({"apiKeySecretRef": {"name": "rf"}, "workspace": "acme"}, "spec.training.dataset.project"),
])
def test_training_without_roboflow_coordinates_names_the_missing_field(dataset: dict, field: str) -> None:
    message = error({"training": {"epochs": 3, "dataset": dataset}})
    assert field in message
    assert "spec.dataLogging.roboflow" in message  # says where else it could come from


def test_examples_parse() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ContinualModel":
                spec = parse(doc, SETTINGS)
                assert spec.name == doc["metadata"]["name"], path


def test_soccer_example_parses_to_what_it_says() -> None:
    doc = yaml.safe_load((EXAMPLES / "soccer.yaml").read_text())
    spec = parse(doc, SETTINGS)
    assert spec.namespace == "vision" and spec.class_names == ("ball", "goalkeeper", "player", "referee")
    assert spec.data_logging is not None and spec.data_logging.upload_predictions
    assert spec.training is not None
    assert spec.training.trigger.schedule == "0 3 * * 0" and spec.training.trigger.min_new_labeled_images == 200
    assert spec.training.recipe.config_map is None and spec.training.recipe.uri is None
    assert spec.training.base_weights == "" and spec.model.scheme == "zoo"  # starts from the served stub
    assert spec.training.dataset.project == "soccer-players"  # from dataLogging.roboflow


# --- cross-field rules and their messages --------------------------------------------------


def test_recipe_config_map_and_uri_are_exclusive() -> None:
    recipe = {"configMapRef": {"name": "r", "key": "recipe.yaml"}, "uri": "https://example.com/recipe.yaml"}
    message = error({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"recipe": recipe}})
    assert "spec.training.recipe" in message and "configMapRef" in message and "uri" in message


def test_an_unknown_builtin_recipe_is_named_with_the_ones_there_are() -> None:
    message = error({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"recipe": {"uri": "builtin:prune-90"}}})
    assert "spec.training.recipe.uri 'builtin:prune-90'" in message
    assert "builtin:prune-quantize-aggressive" in message and "builtin:keep-sparsity-quantize" in message


def test_recipe_config_map_key_defaults() -> None:
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"recipe": {"configMapRef": {"name": "r"}}}}),
                 SETTINGS)
    assert spec.training is not None and spec.training.recipe.config_map is not None
    assert spec.training.recipe.config_map.key == "recipe.yaml"


@pytest.mark.parametrize("schedule", ["0 3 * *", "* * * * * *", "every sunday", "61 3 * * *", "0 25 * * *",
                                      "a b c d e"])
def test_bad_cron_is_rejected_naming_the_field(schedule: str) -> None:
    message = error({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"trigger": {"schedule": schedule}}})
    assert "spec.training.trigger.schedule" in message and repr(schedule) in message


@pytest.mark.parametrize("schedule", ["0 0 31 2 *", "0 0 30 2 *", "0 12 31 4,6,9,11 *"])
def test_cron_naming_no_real_date_is_rejected_naming_the_field(schedule: str) -> None:
    # croniter accepts these and then raises on every next-run computation: the reconcile crash-looped.
    message = error({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"trigger": {"schedule": schedule}}})
    assert "spec.training.trigger.schedule" in message and repr(schedule) in message and "never fires" in message


@pytest.mark.parametrize("schedule", ["0 3 * * 0", "*/15 * * * *", "0 0 1 1-6 mon-fri", "0 0 29 2 *"])
def test_good_cron_is_kept(schedule: str) -> None:
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"trigger": {"schedule": schedule}}}), SETTINGS)
    assert spec.training is not None and spec.training.trigger.schedule == schedule


@pytest.mark.parametrize("size", [100, 641, 650])
def test_image_size_must_be_a_multiple_of_32(size: int) -> None:
    message = error({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"imageSize": size}})
    assert "spec.training.imageSize" in message and "32" in message and str(size) in message


def test_image_size_multiple_of_32_is_kept() -> None:
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"imageSize": 320}}), SETTINGS)
    assert spec.training is not None and spec.training.image_size == 320


def test_upload_predictions_needs_class_names() -> None:
    message = error({"dataLogging": {"uploadPredictions": True, "roboflow": ROBOFLOW}})
    assert "spec.classNames" in message and "uploadPredictions" in message
    spec = parse(cr({"classNames": ["ball"], "dataLogging": {"uploadPredictions": True, "roboflow": ROBOFLOW}}),
                 SETTINGS)
    assert spec.data_logging is not None and spec.data_logging.upload_predictions


@pytest.mark.parametrize("version", ["v2", "0", "-1", "latest2"])
def test_dataset_version_must_be_latest_or_a_number(version: str) -> None:
    message = error({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"dataset": {"version": version}}})
    assert "spec.training.dataset.version" in message


def test_data_logging_needs_its_roboflow_secret_ref() -> None:
    rf = {k: v for k, v in ROBOFLOW.items() if k != "apiKeySecretRef"}
    assert "spec.dataLogging.roboflow.apiKeySecretRef" in error({"dataLogging": {"roboflow": rf}})


def test_api_url_must_be_http() -> None:
    message = error({"dataLogging": {"roboflow": dict(ROBOFLOW, apiUrl="ftp://rf")}})
    assert "spec.dataLogging.roboflow.apiUrl" in message and "ftp://rf" in message


# --- model URIs ------------------------------------------------------------------------------


def test_pvc_uri_is_split_into_claim_and_path() -> None:
    spec = parse(cr({"model": {"uri": "pvc://model-store/soccer/v3/model.onnx"}}), SETTINGS)
    assert (spec.model.scheme, spec.model.claim, spec.model.path) == ("pvc", "model-store", "soccer/v3/model.onnx")


@pytest.mark.parametrize("uri, scheme, path", [
    (ZOO, "zoo", ZOO),
    ("https://models.example.com/yolo/model.onnx", "https", "https://models.example.com/yolo/model.onnx"),
    ("file:///opt/models/yolov5s.onnx", "file", "/opt/models/yolov5s.onnx"),
])
def test_model_uri_forms(uri: str, scheme: str, path: str) -> None:
    model = parse(cr({"model": {"uri": uri}}), SETTINGS).model
    assert (model.uri, model.scheme, model.path) == (uri, scheme, path)


@pytest.mark.parametrize("uri", [
    "zoo:", "https://", "http://models.example.com/m.onnx", "s3://bucket/m.onnx", "/models/m.onnx",
    "file://relative/m.onnx", "file:///", "pvc://", "pvc://claim", "pvc://claim/", "pvc://Bad_Claim/m.onnx",
    "models/m.onnx",
])
def test_bad_model_uri_is_rejected_naming_the_field(uri: str) -> None:
    message = error({"model": {"uri": uri}})
    assert "spec.model.uri" in message and repr(uri) in message


def test_model_uri_is_required() -> None:
    assert "spec.model.uri is required" in error({"model": {}})


# --- names and structural errors -------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Soccer", "soccer_1", "-soccer", "soccer-", "a" * 46])
def test_bad_name_is_rejected(name: str) -> None:
    message = error({}, name=name)
    assert "metadata.name" in message


def test_45_character_name_is_accepted() -> None:
    assert parse(cr(name="a" * 45), SETTINGS).name == "a" * 45


@pytest.mark.parametrize("spec, field", [
    ({"serving": {"replicas": -1}}, "spec.serving.replicas"),
    ({"serving": {"replicas": "2"}}, "spec.serving.replicas"),
    ({"serving": {"port": 70000}}, "spec.serving.port"),
    ({"serving": {"numCores": 0}}, "spec.serving.numCores"),
    ({"serving": []}, "spec.serving"),
    ({"task": "segmentation"}, "spec.task"),
    ({"classNames": ["ball", ""]}, "spec.classNames"),
    ({"storage": {"pvc": {"claimName": "Bad_Claim"}}}, "spec.storage.pvc.claimName"),
    ({"rollout": {"gate": {"metric": "f1"}}}, "spec.rollout.gate.metric"),
    ({"rollout": {"historyLimit": 0}}, "spec.rollout.historyLimit"),
    ({"dataLogging": {"frequency": 0, "roboflow": ROBOFLOW}}, "spec.dataLogging.frequency"),
    ({"dataLogging": {"uploadPredictions": "yes", "roboflow": ROBOFLOW}}, "spec.dataLogging.uploadPredictions"),
    ({"dataLogging": {"roboflow": dict(ROBOFLOW, split="prod")}}, "spec.dataLogging.roboflow.split"),
    ({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"epochs": 0}}, "spec.training.epochs"),
    ({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"device": "tpu"}}, "spec.training.device"),
])
def test_field_errors_name_the_field(spec: dict, field: str) -> None:
    assert field in error(spec)


def test_existing_claim_is_used_and_not_created() -> None:
    spec = parse(cr({"storage": {"pvc": {"claimName": "shared-models", "storageClassName": "fast"}}}), SETTINGS)
    assert (spec.storage.claim_name, spec.storage.create, spec.storage.storage_class) == ("shared-models", False,
                                                                                          "fast")


def test_serving_scheduling_fields_are_kept() -> None:
    tol = [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}]
    spec = parse(cr({"serving": {"nodeSelector": {"pool": "cpu"}, "tolerations": tol,
                                 "imagePullSecrets": [{"name": "regcred"}]}}), SETTINGS)
    assert dict(spec.serving.node_selector) == {"pool": "cpu"}
    assert [dict(t) for t in spec.serving.tolerations] == tol
    assert spec.serving.image_pull_secrets == ("regcred",)


# --- frozen ---------------------------------------------------------------------------------


def test_spec_is_frozen() -> None:
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {}}), SETTINGS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.serving.replicas = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.model.uri = "zoo:other"  # type: ignore[misc]
    assert spec.data_logging is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.data_logging.roboflow.project = "other"  # type: ignore[misc]


def test_parse_does_not_change_its_input() -> None:
    body = cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {"epochs": 3}})
    before = copy.deepcopy(body)
    parse(body, SETTINGS)
    assert body == before


def test_empty_training_section_turns_training_on_with_defaults() -> None:
    spec = parse(cr({"dataLogging": {"roboflow": ROBOFLOW}, "training": {}}), SETTINGS)
    assert spec.training is not None and spec.training.epochs == 50
    assert spec.training.dataset.project == "soccer-players"


def test_empty_data_logging_section_asks_for_its_roboflow_coordinates() -> None:
    assert "spec.dataLogging.roboflow" in error({"dataLogging": {}})


def test_absent_and_null_sections_are_off() -> None:
    spec = parse(cr({"dataLogging": None, "training": None}), SETTINGS)
    assert spec.data_logging is None and spec.training is None


@pytest.mark.parametrize("metadata, field", [
    ("soccer", "metadata"),
    ({"name": 123}, "metadata.name"),
    ({"name": "soccer", "namespace": 5}, "metadata.namespace"),
    ({"name": "soccer", "namespace": "Vision_Team"}, "metadata.namespace"),
    ({"name": "soccer", "generation": "x"}, "metadata.generation"),
])
def test_bad_metadata_is_a_spec_error_naming_the_field(metadata: Any, field: str) -> None:
    body = cr()
    body["metadata"] = metadata
    with pytest.raises(SpecError) as info:
        parse(body, SETTINGS)
    assert field in str(info.value)


@pytest.mark.parametrize("serving, field", [
    ({"nodeSelector": {"pool": 1}}, "spec.serving.nodeSelector"),
    ({"imagePullSecrets": [{"name": 5}]}, "spec.serving.imagePullSecrets"),
])
def test_values_kubernetes_needs_as_strings_are_checked(serving: dict, field: str) -> None:
    # Otherwise `kontinual render` prints an object the API server rejects.
    assert field in error({"serving": serving})


def test_gate_floor_seed_names_and_generation_are_parsed() -> None:
    body = {"metadata": {"name": "m"}, "spec": {
        "model": {"uri": "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base", "classNames": ["a", "b"]},
        "rollout": {"gate": {"minValue": 0.25}},
        "dataLogging": {"roboflow": {"workspace": "w", "project": "p", "apiKeySecretRef": {"name": "rf"}}},
        "training": {"dataset": {"generate": False, "augmentation": {"flip": {"horizontal": True}}}}}}
    spec = parse(body)
    assert spec.rollout.gate.min_value == 0.25 and spec.seed_class_names == ("a", "b")
    assert spec.training is not None and spec.training.generation.enabled is False
    assert spec.training.generation.augmentation == {"flip": {"horizontal": True}}
    del body["spec"]["model"]["classNames"]
    assert len(parse(body).seed_class_names) == 80  # DeepSparse's COCO names for a COCO stub


@pytest.mark.parametrize("field,value,message", [
    (("rollout", "gate", "minValue"), 1.5, "spec.rollout.gate.minValue must be between 0 and 1"),
    (("model", "classNames"), ["a", "a"], "spec.model.classNames must not repeat a name"),
    (("classNames",), ["x", "x"], "spec.classNames must not repeat a name"),
])
def test_gate_and_class_name_errors_name_the_field(field, value, message) -> None:
    body: dict = {"metadata": {"name": "m"}, "spec": {"model": {"uri": "zoo:x"}}}
    node = body["spec"]
    for key in field[:-1]:
        node = node.setdefault(key, {})
    node[field[-1]] = value
    with pytest.raises(SpecError, match=message):
        parse(body)
