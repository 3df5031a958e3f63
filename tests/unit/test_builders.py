"""Serving builders: server.yaml is a real DeepSparse 1.8.0 config; Deployment, Service and PVC as specified."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kontinual.common import names
from kontinual.controller import builders
from kontinual.controller.builders import ModelTarget
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec, parse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
ROBOFLOW = {"workspace": "acme", "project": "soccer-players", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}
SETTINGS = Settings(server_image="registry.example/kontinual/server:1.2.3")
# DeepSparse compiles the model before it listens; yolov5 on a loaded node can take minutes.
MIN_STARTUP_SECONDS = 300


def make_spec(spec: dict[str, Any] | None = None, name: str = "soccer", namespace: str = "vision") -> Spec:
    body: dict[str, Any] = {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
                            "metadata": {"name": name, "namespace": namespace, "uid": "uid-1", "generation": 1},
                            "spec": {"model": {"uri": ZOO}}}
    body["spec"].update(copy.deepcopy(spec or {}))
    return parse(body, SETTINGS)


def logging_spec(**extra: Any) -> Spec:
    # A seed of the project's own classes: its predictions are the project's pre-annotations.
    return make_spec({"classNames": ["ball", "player"], "model": {"uri": ZOO, "classNames": ["ball", "player"]},
                      "dataLogging": {"frequency": 25, "uploadPredictions": True, "roboflow": ROBOFLOW}, **extra})


def server_yaml(spec: Spec, target: ModelTarget | None = None) -> dict[str, Any]:
    return yaml.safe_load(builders.config_map(spec, target)["data"]["server.yaml"])


def pod(deploy: dict[str, Any]) -> dict[str, Any]:
    return deploy["spec"]["template"]["spec"]


def server_container(deploy: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod(deploy)["containers"] if c["name"] == "server"]
    return container


def annotations(deploy: dict[str, Any]) -> dict[str, str]:
    return deploy["spec"]["template"]["metadata"]["annotations"]


# --- server.yaml is a DeepSparse 1.8.0 server config -----------------------------------------


@pytest.fixture(scope="module")
def deepsparse_config() -> Any:
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    from deepsparse.server import config  # ~5 s: loaded once for this module

    return config


def assert_known_keys(model: Any, data: dict[str, Any], where: str) -> None:
    """pydantic ignores unknown keys: a misspelt one would be silently dropped, so check names too."""
    unknown = set(data) - set(model.model_fields)
    assert not unknown, f"{where}: keys DeepSparse 1.8.0 does not know: {sorted(unknown)}"


SPEC_VARIANTS = {
    "minimal": {},
    "num-cores-batch": {"serving": {"numCores": 2, "batchSize": 4}},
    "class-names": {"classNames": ["ball", "goalkeeper", "player", "referee"]},
    "data-logging": {"classNames": ["ball"], "dataLogging": {"frequency": 10, "uploadPredictions": True,
                                                             "roboflow": ROBOFLOW}},
    "logging-inputs-only": {"dataLogging": {"roboflow": ROBOFLOW}},
    "pvc-model": {"model": {"uri": "pvc://store/yolo/model.onnx"}},
    "https-model": {"model": {"uri": "https://models.example.com/yolo.onnx"}},
}


@pytest.mark.parametrize("variant", sorted(SPEC_VARIANTS))
def test_server_yaml_is_a_valid_deepsparse_server_config(deepsparse_config: Any, variant: str) -> None:
    spec = make_spec(SPEC_VARIANTS[variant])
    data = server_yaml(spec)
    config = deepsparse_config.ServerConfig(**data)  # raises pydantic.ValidationError if not
    assert_known_keys(deepsparse_config.ServerConfig, data, "server.yaml")
    for endpoint in data["endpoints"]:
        assert_known_keys(deepsparse_config.EndpointConfig, endpoint, "endpoint")
    (endpoint,) = config.endpoints
    assert (endpoint.task, endpoint.name, endpoint.route) == ("yolo", "soccer", "/soccer")
    assert endpoint.model == builders.model_path(spec.model)
    assert endpoint.batch_size == spec.serving.batch_size
    assert config.num_cores == spec.serving.num_cores
    names = spec.seed_class_names  # the seed's own: COCO's for the COCO zoo stub, whatever classNames says
    expected = {"class_names": "coco"} if spec.model.uri == ZOO else (
        {"class_names": list(names)} if names else {})
    assert endpoint.kwargs == expected


def test_endpoint_route_gives_the_documented_upload_url() -> None:
    spec = make_spec()
    endpoint = server_yaml(spec)["endpoints"][0]
    # DeepSparse 1.8.0 serves route /soccer at /v2/models/soccer/infer/from_files.
    assert builders.server_url(spec) == (
        f"http://soccer-server.vision.svc:5543/v2/models{endpoint['route']}/infer/from_files")


def test_server_yaml_has_no_logging_without_data_logging() -> None:
    data = server_yaml(make_spec())
    assert "loggers" not in data or not data["loggers"]
    assert "data_logging" not in data["endpoints"][0]


def test_data_logging_wires_the_roboflow_logger(deepsparse_config: Any) -> None:
    spec = logging_spec()
    data = server_yaml(spec)
    config = deepsparse_config.ServerConfig(**data)
    assert list(config.loggers) == ["roboflow"]
    logger = config.loggers["roboflow"]
    assert logger is not None
    assert (logger["workspace"], logger["project"], logger["api_url"]) == ("acme", "soccer-players",
                                                                          "https://api.roboflow.com")
    assert logger["endpoint"] == "soccer" and str(logger["model_version"]) == "0"
    rules = config.endpoints[0].data_logging
    assert rules is not None and "pipeline_inputs" in rules and "pipeline_outputs" in rules  # image + predictions
    for target, functions in rules.items():
        for function in functions:
            assert function.target_loggers == ["roboflow"], target
            # The effective sampling is 1 of every spec.dataLogging.frequency requests, whether DeepSparse
            # or the logger does the counting.
            assert function.frequency * int(logger.get("frequency", 1)) == 25, target


def test_logger_path_is_a_file_deepsparse_can_load(deepsparse_config: Any) -> None:
    """DeepSparse 1.8.0 loads `path: <file>:<Class>` with spec_from_file_location: a dotted module path fails."""
    from deepsparse.legacy.loggers import BaseLogger
    from deepsparse.legacy.loggers.build_logger import custom_logger_from_identifier

    logger = server_yaml(logging_spec())["loggers"]["roboflow"]
    file, _, cls = logger["path"].rpartition(":")
    assert file.endswith(".py") and importlib.util.spec_from_file_location("probe", file) is not None, logger["path"]
    assert Path(file).is_file(), f"{file} does not exist"
    assert issubclass(custom_logger_from_identifier(logger["path"]), BaseLogger)
    assert cls


def test_server_yaml_never_holds_the_api_key_only_its_secret_name_elsewhere() -> None:
    text = builders.config_map(logging_spec())["data"]["server.yaml"]
    assert "apiKey" not in text and "secretKeyRef" not in text


# --- model location per URI scheme -----------------------------------------------------------


def test_zoo_model_is_passed_as_is_with_no_volume() -> None:
    spec = make_spec()
    deploy = builders.deployment(spec, SETTINGS)
    assert server_yaml(spec)["endpoints"][0]["model"] == ZOO
    assert {v["name"] for v in pod(deploy)["volumes"]} == {"config", "tmp"}
    assert "initContainers" not in pod(deploy)


def test_file_model_is_its_path_in_the_image() -> None:
    spec = make_spec({"model": {"uri": "file:///opt/models/yolov5s.onnx"}})
    assert server_yaml(spec)["endpoints"][0]["model"] == "/opt/models/yolov5s.onnx"
    assert "initContainers" not in pod(builders.deployment(spec, SETTINGS))


def test_pvc_model_mounts_the_claim_read_only() -> None:
    spec = make_spec({"model": {"uri": "pvc://model-store/yolo/v7/model.onnx"}})
    deploy = builders.deployment(spec, SETTINGS)
    (volume,) = [v for v in pod(deploy)["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    (mount,) = [m for m in server_container(deploy)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    model = server_yaml(spec)["endpoints"][0]["model"]
    assert model == f"{mount['mountPath']}/yolo/v7/model.onnx"


def test_https_model_is_fetched_by_an_init_container_into_an_empty_dir() -> None:
    url = "https://models.example.com/yolo/model.onnx"
    spec = make_spec({"model": {"uri": url}})
    deploy = builders.deployment(spec, SETTINGS)
    (init,) = pod(deploy)["initContainers"]
    assert url in init["command"] + init.get("args", [])
    (cache,) = [v for v in pod(deploy)["volumes"] if "emptyDir" in v and v["name"] != "tmp"]
    (init_mount,) = [m for m in init["volumeMounts"] if m["name"] == cache["name"]]
    assert not init_mount.get("readOnly")
    (server_mount,) = [m for m in server_container(deploy)["volumeMounts"] if m["name"] == cache["name"]]
    model = server_yaml(spec)["endpoints"][0]["model"]
    assert model.startswith(server_mount["mountPath"] + "/")
    assert model in init["command"] + init.get("args", [])  # fetched to exactly where the server reads it


def test_trained_target_serves_from_the_model_claim_and_is_verified() -> None:
    spec = make_spec()
    target = ModelTarget.trained(spec, 3, sha256="ab" * 32)
    deploy = builders.deployment(spec, SETTINGS, target)
    assert server_yaml(spec, target)["endpoints"][0]["model"] == "/models/v3/model.onnx"
    (volume,) = [v for v in pod(deploy)["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == "soccer-models"
    assert annotations(deploy)[names.ANNOTATION_MODEL_VERSION] == "3"
    inits = pod(deploy).get("initContainers", [])
    assert any("ab" * 32 in c["command"] + c.get("args", []) for c in inits)


# --- the Deployment ----------------------------------------------------------------------------


def test_deployment_runs_deepsparse_server_on_the_mounted_config() -> None:
    spec = make_spec({"serving": {"port": 6000}})
    deploy = builders.deployment(spec, SETTINGS)
    container = server_container(deploy)
    argv = container["command"] + container.get("args", [])
    assert argv[0] == "deepsparse.server"
    config_file = argv[argv.index("--config-file") + 1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "6000"
    (mount,) = [m for m in container["volumeMounts"] if config_file.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod(deploy)["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "soccer-server-config"
    assert config_file == f"{mount['mountPath']}/server.yaml"
    assert "server.yaml" in builders.config_map(spec)["data"]
    assert container["ports"][0] == {"name": "http", "containerPort": 6000, "protocol": "TCP"}


def test_probes_hit_the_deepsparse_health_routes_on_the_server_port() -> None:
    container = server_container(builders.deployment(make_spec(), SETTINGS))
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names | {5543}


def test_startup_probe_tolerates_model_compilation() -> None:
    probe = server_container(builders.deployment(make_spec(), SETTINGS))["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    assert budget >= MIN_STARTUP_SECONDS


def test_rolling_update_never_drops_below_the_wanted_replicas() -> None:
    deploy = builders.deployment(make_spec({"serving": {"replicas": 3}}), SETTINGS)
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_a_terminating_server_drains_before_it_stops_listening() -> None:
    """The old pod of a rollout still answers while kube-proxy takes it out of the Service."""
    deploy = builders.deployment(make_spec(), SETTINGS)
    command = server_container(deploy)["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["python", "-c", f"import time; time.sleep({builders.DRAIN_SECONDS})"]
    grace = pod(deploy).get("terminationGracePeriodSeconds", 30)  # the Kubernetes default
    assert 0 < builders.DRAIN_SECONDS < grace


def test_selector_matches_the_pod_template() -> None:
    deploy = builders.deployment(make_spec(), SETTINGS)
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert builders.service(make_spec())["spec"]["selector"] == selector


def test_resources_come_from_the_spec_or_a_default() -> None:
    wanted = {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}}
    assert server_container(builders.deployment(make_spec({"serving": {"resources": wanted}}), SETTINGS))[
        "resources"] == wanted
    default = server_container(builders.deployment(make_spec(), SETTINGS))["resources"]
    assert default == builders.DEFAULT_SERVER_RESOURCES
    assert default["requests"]["cpu"] and default["requests"]["memory"] and default["limits"]["memory"]


def test_image_from_spec_else_settings() -> None:
    assert server_container(builders.deployment(make_spec(), SETTINGS))["image"] == SETTINGS.server_image
    custom = make_spec({"serving": {"image": "mirror.example/server:dev"}})
    assert server_container(builders.deployment(custom, SETTINGS))["image"] == "mirror.example/server:dev"


def test_scheduling_fields_are_passed_through() -> None:
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "cpu", "operator": "In", "values": ["avx512"]}]}]}}}
    spec = make_spec({"serving": {"nodeSelector": {"pool": "cpu"}, "tolerations": tolerations, "affinity": affinity,
                                  "imagePullSecrets": [{"name": "regcred"}]}})
    p = pod(builders.deployment(spec, SETTINGS))
    assert p["nodeSelector"] == {"pool": "cpu"}
    assert p["tolerations"] == tolerations
    assert p["affinity"] == affinity
    assert p["imagePullSecrets"] == [{"name": "regcred"}]
    bare = pod(builders.deployment(make_spec(), SETTINGS))
    assert not {"nodeSelector", "tolerations", "affinity", "imagePullSecrets"} & set(bare)


def test_roboflow_key_comes_only_from_the_secret() -> None:
    container = server_container(builders.deployment(logging_spec(), SETTINGS))
    (env,) = [e for e in container["env"] if e["name"] == "ROBOFLOW_API_KEY"]
    assert env == {"name": "ROBOFLOW_API_KEY", "valueFrom": {"secretKeyRef": {"name": "roboflow", "key": "apiKey"}}}
    plain = server_container(builders.deployment(make_spec(), SETTINGS))
    assert "ROBOFLOW_API_KEY" not in {e["name"] for e in plain["env"]}


def test_metrics_port_only_with_data_logging() -> None:
    spec = make_spec({"dataLogging": {"metricsPort": 9300, "roboflow": ROBOFLOW}})
    container = server_container(builders.deployment(spec, SETTINGS))
    assert {"name": "metrics", "containerPort": 9300, "protocol": "TCP"} in container["ports"]
    assert server_yaml(spec)["loggers"]["roboflow"]["metrics_port"] == 9300
    service_ports = {p["name"]: p for p in builders.service(spec)["spec"]["ports"]}
    assert service_ports["metrics"]["port"] == 9300 and service_ports["metrics"]["targetPort"] == "metrics"
    plain = make_spec()
    assert [p["name"] for p in server_container(builders.deployment(plain, SETTINGS))["ports"]] == ["http"]
    assert [p["name"] for p in builders.service(plain)["spec"]["ports"]] == ["http"]


# --- annotations that roll the pods --------------------------------------------------------------


def test_config_hash_is_stable_when_nothing_changes() -> None:
    first = builders.deployment(logging_spec(), SETTINGS)
    second = builders.deployment(logging_spec(), SETTINGS)
    assert first == second
    assert len(annotations(first)[names.ANNOTATION_CONFIG_HASH]) >= 8


@pytest.mark.parametrize("change", [
    {"classNames": ["ball", "player", "referee"]},
    {"serving": {"batchSize": 2}},
    {"serving": {"numCores": 1}},
    {"dataLogging": {"frequency": 50, "uploadPredictions": True, "roboflow": ROBOFLOW}},
    {"dataLogging": {"frequency": 25, "uploadPredictions": True, "roboflow": dict(ROBOFLOW, project="other")}},
])
def test_config_hash_changes_when_the_config_changes(change: dict[str, Any]) -> None:
    before = builders.deployment(logging_spec(), SETTINGS)
    after = builders.deployment(logging_spec(**change), SETTINGS)
    assert annotations(after)[names.ANNOTATION_CONFIG_HASH] != annotations(before)[names.ANNOTATION_CONFIG_HASH]


def test_config_hash_ignores_changes_outside_the_config() -> None:
    before = builders.deployment(make_spec(), SETTINGS)
    after = builders.deployment(make_spec({"serving": {"replicas": 4, "image": "other:1"}}), SETTINGS)
    assert annotations(after)[names.ANNOTATION_CONFIG_HASH] == annotations(before)[names.ANNOTATION_CONFIG_HASH]


def test_model_version_annotation_follows_the_target() -> None:
    spec = make_spec()
    seed = builders.deployment(spec, SETTINGS)
    v2 = builders.deployment(spec, SETTINGS, ModelTarget.trained(spec, 2))
    v3 = builders.deployment(spec, SETTINGS, ModelTarget.trained(spec, 3))
    assert [annotations(d)[names.ANNOTATION_MODEL_VERSION] for d in (seed, v2, v3)] == ["0", "2", "3"]
    hashes = {annotations(d)[names.ANNOTATION_CONFIG_HASH] for d in (seed, v2, v3)}
    assert len(hashes) == 3  # the model path is in server.yaml, so each version rolls the pods


def test_deployment_config_hash_matches_its_config_map() -> None:
    spec = logging_spec()
    target = ModelTarget.trained(spec, 5)
    children = builders.serving_children(spec, SETTINGS, target)
    (cm,) = [c for c in children if c["kind"] == "ConfigMap"]
    (deploy,) = [c for c in children if c["kind"] == "Deployment"]
    assert annotations(deploy)[names.ANNOTATION_CONFIG_HASH] == builders.config_hash(cm)
    assert "/models/v5/model.onnx" in cm["data"]["server.yaml"]


# --- Service, PVC, names ------------------------------------------------------------------------


def test_service_exposes_the_server_port() -> None:
    svc = builders.service(make_spec({"serving": {"port": 6000}}))
    assert svc["metadata"]["name"] == "soccer-server"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 6000, "targetPort": "http", "protocol": "TCP"}]


TRAINING = {"training": {"dataset": ROBOFLOW}}


def test_model_claim_is_created_only_when_no_claim_is_named() -> None:
    claim = builders.model_claim(make_spec({**TRAINING, "storage": {"pvc": {
        "size": "20Gi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]}}}))
    assert claim is not None
    assert claim["metadata"]["name"] == "soccer-models"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "20Gi"}},
                             "storageClassName": "fast"}
    default = builders.model_claim(make_spec(TRAINING))
    assert default is not None and "storageClassName" not in default["spec"]  # the cluster's default class
    assert default["spec"]["resources"]["requests"]["storage"] == "10Gi"
    existing = make_spec({**TRAINING, "storage": {"pvc": {"claimName": "shared-models"}}})
    assert builders.model_claim(existing) is None
    kinds = [c["kind"] for c in builders.serving_children(existing, SETTINGS)]
    assert "PersistentVolumeClaim" not in kinds


def test_serving_children_order_and_names() -> None:
    children = builders.serving_children(make_spec(TRAINING), SETTINGS)
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("PersistentVolumeClaim", "soccer-models"), ("ConfigMap", "soccer-server-config"),
        ("Service", "soccer-server"), ("Deployment", "soccer-server")]
    assert {c["metadata"]["namespace"] for c in children} == {"vision"}


def test_server_url_is_the_in_cluster_upload_route() -> None:
    assert builders.server_url(make_spec({"serving": {"port": 8080}}, name="demo", namespace="team-a")) == (
        "http://demo-server.team-a.svc:8080/v2/models/demo/infer/from_files")


def test_building_twice_gives_identical_children() -> None:
    spec = logging_spec(serving={"resources": {"requests": {"cpu": "2"}}})
    first = builders.serving_children(spec, SETTINGS)
    snapshot = copy.deepcopy(first)
    assert builders.serving_children(spec, SETTINGS) == snapshot


# --- class names follow the served model ----------------------------------------------------------

SOCCER = ["ball", "goalkeeper", "player", "referee"]


def soccer_logging_spec(**model: Any) -> Spec:
    return make_spec({"classNames": SOCCER, "model": {"uri": ZOO, **model},
                      "dataLogging": {"uploadPredictions": True, "roboflow": ROBOFLOW}})


def test_coco_seed_is_served_with_cocos_names_and_uploads_no_pre_annotations() -> None:
    data = server_yaml(soccer_logging_spec())
    assert data["endpoints"][0]["kwargs"] == {"class_names": "coco"}
    assert "pipeline_outputs" not in data["endpoints"][0]["data_logging"]  # images only
    logger = data["loggers"]["roboflow"]
    assert logger["upload_predictions"] is False and len(logger["class_names"]) == 80


def test_trained_version_is_served_with_its_own_names_and_its_boxes_are_uploaded() -> None:
    spec = soccer_logging_spec()
    data = server_yaml(spec, ModelTarget.trained(spec, 2, "a" * 64, tuple(SOCCER)))
    assert data["endpoints"][0]["kwargs"] == {"class_names": SOCCER}
    assert "pipeline_outputs" in data["endpoints"][0]["data_logging"]
    assert data["loggers"]["roboflow"]["upload_predictions"] is True


def test_version_of_other_classes_than_the_project_uploads_no_pre_annotations() -> None:
    spec = soccer_logging_spec()
    data = server_yaml(spec, ModelTarget.trained(spec, 2, None, ("ball", "player")))
    assert data["endpoints"][0]["kwargs"] == {"class_names": ["ball", "player"]}
    assert data["loggers"]["roboflow"]["upload_predictions"] is False


def test_seed_names_from_the_spec_win_and_the_old_reading_still_works() -> None:
    own = soccer_logging_spec(classNames=["referee", "player", "goalkeeper", "ball"])
    data = server_yaml(own)
    assert data["endpoints"][0]["kwargs"] == {"class_names": ["referee", "player", "goalkeeper", "ball"]}
    assert data["loggers"]["roboflow"]["upload_predictions"] is True  # same classes as the project
    legacy = make_spec({"classNames": SOCCER, "model": {"uri": "pvc://store/soccer.onnx"}})
    assert server_yaml(legacy)["endpoints"][0]["kwargs"] == {"class_names": SOCCER}
