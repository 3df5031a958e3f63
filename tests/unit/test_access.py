"""What a ContinualModel author may make the operator do: allowed Roboflow URLs, labelled Secrets, no credentials in URIs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kontinual.controller.access import SECRET_LABEL, check_secrets, secret_references
from kontinual.controller.settings import Settings
from kontinual.controller.spec import SpecError, parse

ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
ROBOFLOW = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}
LABELLED = {SECRET_LABEL: "true"}


def cr(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": "soccer", "namespace": "vision", "uid": "u-1"},
            "spec": {"model": {"uri": ZOO}, **copy.deepcopy(spec)}}


def refused(body: dict[str, Any], settings: Settings | None = None) -> str:
    with pytest.raises(SpecError) as info:
        parse(body, settings or Settings())
    return str(info.value)


# --- the Roboflow API URL: only where the operator's administrator allows the key to go -----------


@pytest.mark.parametrize("section", ["dataLogging", "training"])
def test_an_api_url_the_admin_did_not_allow_is_refused_naming_field_url_and_allowed_list(section: str) -> None:
    rf = dict(ROBOFLOW, apiUrl="http://127.0.0.1:4444")
    body = cr(dataLogging={"roboflow": rf}) if section == "dataLogging" else cr(training={"dataset": rf})
    message = refused(body)
    field = "spec.dataLogging.roboflow.apiUrl" if section == "dataLogging" else "spec.training.dataset.apiUrl"
    assert field in message and "http://127.0.0.1:4444" in message and "https://api.roboflow.com" in message


def test_the_training_dataset_cannot_send_the_key_elsewhere_than_data_logging_does() -> None:
    body = cr(dataLogging={"roboflow": ROBOFLOW}, training={"dataset": {"apiUrl": "https://evil.example"}})
    assert "spec.training.dataset.apiUrl 'https://evil.example'" in refused(body)


def test_a_prefix_of_an_allowed_url_is_not_allowed() -> None:
    message = refused(cr(dataLogging={"roboflow": dict(ROBOFLOW, apiUrl="https://api.roboflow.com.evil.example")}))
    assert "not an allowed Roboflow API URL" in message


def test_the_default_and_the_admins_list_are_allowed() -> None:
    settings = Settings.from_env({"KONTINUAL_ROBOFLOW_API_URLS": "http://127.0.0.1:8080/, https://rf.internal"})
    assert settings.allowed_roboflow_urls == ("https://api.roboflow.com", "http://127.0.0.1:8080", "https://rf.internal")
    for url in ("https://api.roboflow.com", "http://127.0.0.1:8080/", "https://rf.internal"):
        spec = parse(cr(dataLogging={"roboflow": dict(ROBOFLOW, apiUrl=url)}), settings)
        assert spec.data_logging is not None and spec.data_logging.roboflow.api_url == url.rstrip("/")
    assert parse(cr(training={"dataset": ROBOFLOW}), Settings()).training.dataset.api_url == "https://api.roboflow.com"


@pytest.mark.parametrize("value", ["ftp://rf.example", "https://user:pw@rf.example", "rf.example"])
def test_the_admins_list_must_hold_plain_http_urls(value: str) -> None:
    with pytest.raises(ValueError, match="KONTINUAL_ROBOFLOW_API_URLS"):
        Settings.from_env({"KONTINUAL_ROBOFLOW_API_URLS": value})


# --- no credentials inside URIs ---------------------------------------------------------------------


@pytest.mark.parametrize("spec, field", [
    ({"model": {"uri": "https://user:secret@models.example/m.onnx"}}, "spec.model.uri"),
    ({"model": {"uri": "https://token@models.example/m.onnx"}}, "spec.model.uri"),
    ({"training": {"dataset": ROBOFLOW, "baseWeights": "https://u:p@models.example/w.pt"}}, "spec.training.baseWeights"),
    ({"training": {"dataset": ROBOFLOW, "recipe": {"uri": "https://u:p@recipes.example/r.yaml"}}},
     "spec.training.recipe.uri"),
    ({"dataLogging": {"roboflow": dict(ROBOFLOW, apiUrl="https://u:p@api.roboflow.com")}},
     "spec.dataLogging.roboflow.apiUrl"),
])
def test_uris_with_userinfo_are_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    message = refused(cr(**spec))
    assert field in message and "credentials" in message
    assert "secret" not in message and ":p@" not in message, "the credentials must not be echoed back"


# --- other input limits ------------------------------------------------------------------------


def test_dotted_secret_and_config_map_names_are_accepted() -> None:
    rf = dict(ROBOFLOW, apiKeySecretRef={"name": "team-a.roboflow"})
    spec = parse(cr(dataLogging={"roboflow": rf},
                    training={"recipe": {"configMapRef": {"name": "recipes.v2"}}}), Settings())
    assert spec.data_logging is not None and spec.data_logging.roboflow.api_key.name == "team-a.roboflow"
    assert spec.training is not None and spec.training.recipe.config_map is not None
    assert spec.training.recipe.config_map.name == "recipes.v2"


@pytest.mark.parametrize("name", ["Team.Key", "a..b", ".key", "key.", "a_b"])
def test_bad_secret_names_are_refused_naming_the_field(name: str) -> None:
    message = refused(cr(dataLogging={"roboflow": dict(ROBOFLOW, apiKeySecretRef={"name": name})}))
    assert "spec.dataLogging.roboflow.apiKeySecretRef.name" in message and repr(name) in message


def test_serving_port_and_metrics_port_must_differ() -> None:
    message = refused(cr(serving={"port": 9101}, dataLogging={"roboflow": ROBOFLOW, "metricsPort": 9101}))
    assert "spec.dataLogging.metricsPort" in message and "spec.serving.port" in message and "9101" in message


# --- Secrets: only those marked for Kontinual -----------------------------------------------------


def spec_naming_secrets() -> Any:
    return parse(cr(dataLogging={"roboflow": ROBOFLOW},
                    training={"dataset": {"apiKeySecretRef": {"name": "labeled-key"}}},
                    serving={"imagePullSecrets": [{"name": "registry"}]}), Settings())


def test_every_secret_the_spec_names_is_checked() -> None:
    assert secret_references(spec_naming_secrets()) == [
        ("spec.dataLogging.roboflow.apiKeySecretRef", "roboflow"),
        ("spec.training.dataset.apiKeySecretRef", "labeled-key"),
        ("spec.serving.imagePullSecrets[0]", "registry"),
    ]


def test_labelled_secrets_pass() -> None:
    asked: list[tuple[str, str]] = []

    def labels(namespace: str, name: str) -> dict[str, str]:
        asked.append((namespace, name))
        return {**LABELLED, "team": "a"}
    check_secrets(spec_naming_secrets(), labels)
    assert asked == [("vision", "roboflow"), ("vision", "labeled-key"), ("vision", "registry")]


@pytest.mark.parametrize("labels, wanted", [
    ({}, "is not marked for use by ContinualModels"),
    ({SECRET_LABEL: "false"}, "is not marked for use by ContinualModels"),
    (None, "not found"),
])
def test_a_secret_without_the_label_is_refused_naming_secret_field_and_label(labels: Any, wanted: str) -> None:
    def lookup(namespace: str, name: str) -> Any:
        return labels if name == "labeled-key" else LABELLED
    with pytest.raises(SpecError) as info:
        check_secrets(spec_naming_secrets(), lookup)
    message = str(info.value)
    assert wanted in message
    assert "spec.training.dataset.apiKeySecretRef" in message and "vision/labeled-key" in message
    assert f"kubectl -n vision label secret labeled-key {SECRET_LABEL}=true" in message
