"""spec.serving.runtime: one builder picks the server's image, command, probes and server.yaml for the runtime."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kontinual.common.classnames import COCO_NAMES
from kontinual.controller import builders
from kontinual.controller.builders import ModelTarget
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec, SpecError, parse
from kontinual.common.capture_settings import CaptureSettings
from tests.unit.test_render import documents, run

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(server_image="registry.example/kontinual/server:1.2.3",
                    openvino_server_image="registry.example/kontinual/server-openvino:1.2.3")
ONNX = "https://models.example.com/yolov5s.onnx"
ROBOFLOW = {"workspace": "acme", "project": "soccer-players", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}


def make_spec(runtime: str | None = "openvino", uri: str = ONNX, **extra: Any) -> Spec:
    serving = {"runtime": runtime} if runtime else {}
    spec: dict[str, Any] = {"model": {"uri": uri}, "serving": serving, **copy.deepcopy(extra)}
    return parse({"metadata": {"name": "soccer", "namespace": "vision", "uid": "u1"}, "spec": spec}, SETTINGS)


def server_yaml(spec: Spec, target: ModelTarget | None = None) -> dict[str, Any]:
    return yaml.safe_load(builders.config_map(spec, target)["data"]["server.yaml"])


def container(spec: Spec, target: ModelTarget | None = None) -> dict[str, Any]:
    (server,) = builders.deployment(spec, SETTINGS, target)["spec"]["template"]["spec"]["containers"]
    return server


def test_deepsparse_is_the_default_and_unchanged() -> None:
    spec = make_spec(runtime=None, uri="zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none")
    assert spec.serving.runtime == "deepsparse"
    server = container(spec)
    assert server["image"] == SETTINGS.server_image
    assert server["command"][0] == "deepsparse.server"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "endpoints" in server_yaml(spec) and "runtime" not in server_yaml(spec)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_kserve_runtime_container(engine: str) -> None:
    server = container(make_spec(engine))
    assert server["image"] == SETTINGS.openvino_server_image
    assert server["command"] == ["python", "-m", "kontinual.serving.kserve_runtime",
                                 "--config-file", "/etc/kontinual/server.yaml", "--http_port", "5543"]
    assert server["ports"][0] == {"name": "http", "containerPort": 5543, "protocol": "TCP"}
    # Ready once the model is (kserve's own /v2/health/ready is true as soon as it listens); alive as DeepSparse.
    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/models/soccer/ready", "port": "http"}
    deepsparse = container(make_spec(None, uri="zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none"))
    assert server["livenessProbe"] == deepsparse["livenessProbe"]
    assert server["startupProbe"] == deepsparse["startupProbe"]
    assert server["securityContext"] == deepsparse["securityContext"]
    names = {e["name"] for e in server["env"]}
    assert "NM_DISABLE_ANALYTICS" not in names and "SPARSEZOO_API_URL" not in names and "HOME" in names


def test_spec_image_wins_over_the_runtime_default() -> None:
    assert container(make_spec(serving={"runtime": "openvino", "image": "mine/ov:1"}))["image"] == "mine/ov:1"


def test_server_yaml_for_the_kserve_runtime() -> None:
    spec = make_spec("openvino", serving={"runtime": "openvino", "numCores": 2, "batchSize": 4},
                     model={"uri": ONNX, "classNames": ["ball", "player"]})
    config = server_yaml(spec)
    assert config == {"runtime": "openvino", "name": "soccer", "model": "/model-cache/model.onnx", "batch_size": 4,
                      "num_cores": 2, "class_names": ["ball", "player"]}
    # The model is fetched as for DeepSparse: an init container in the runtime's own image.
    (fetch,) = builders.deployment(spec, SETTINGS)["spec"]["template"]["spec"]["initContainers"]
    assert fetch["image"] == SETTINGS.openvino_server_image and ONNX in fetch["command"]


def test_coco_names_are_the_full_list_not_deepsparse_builtin() -> None:
    spec = make_spec(model={"uri": ONNX, "classNames": list(COCO_NAMES)})
    assert server_yaml(spec)["class_names"] == list(COCO_NAMES)


def test_trained_version_is_served_from_the_claim_and_verified_in_the_runtime_image() -> None:
    spec = make_spec(classNames=["ball", "player"])
    target = ModelTarget.trained(spec, 3, sha256="ab" * 32)
    assert server_yaml(spec, target)["model"] == "/models/v3/model.onnx"
    (verify,) = builders.deployment(spec, SETTINGS, target)["spec"]["template"]["spec"]["initContainers"]
    assert verify["name"] == "verify-model" and verify["image"] == SETTINGS.openvino_server_image


def test_data_capture_reuses_the_capture_core_settings() -> None:
    spec = make_spec(classNames=["ball", "player"], model={"uri": ONNX, "classNames": ["ball", "player"]},
                     dataLogging={"frequency": 25, "uploadPredictions": True, "roboflow": ROBOFLOW})
    capture = server_yaml(spec)["capture"]
    settings = CaptureSettings.from_mapping(capture)  # what the kserve runtime parses it with
    assert settings.to_mapping() == capture
    assert (capture["workspace"], capture["project"], capture["frequency"]) == ("acme", "soccer-players", 25)
    assert capture["upload_predictions"] is True and capture["class_names"] == ["ball", "player"]
    assert capture["api_key_env"] == "ROBOFLOW_API_KEY"
    # The same keywords as the DeepSparse logger's, less the plugin path.
    deepsparse = make_spec(None, uri="zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none",
                           classNames=["ball", "player"],
                           model={"uri": "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none",
                                  "classNames": ["ball", "player"]},
                           dataLogging={"frequency": 25, "uploadPredictions": True, "roboflow": ROBOFLOW})
    logger = dict(server_yaml(deepsparse)["loggers"]["roboflow"])
    logger.pop("path")
    assert logger == capture
    server = container(spec)
    key = [e for e in server["env"] if e["name"] == "ROBOFLOW_API_KEY"]
    assert key == [{"name": "ROBOFLOW_API_KEY", "valueFrom": {"secretKeyRef": {"name": "roboflow", "key": "apiKey"}}}]
    assert {"name": "metrics", "containerPort": 9101, "protocol": "TCP"} in server["ports"]
    assert "apiKey" not in builders.config_map(spec)["data"]["server.yaml"]


def test_no_pre_annotations_from_a_model_of_other_classes() -> None:
    spec = make_spec(classNames=["ball", "player"], model={"uri": ONNX, "classNames": ["cat"]},
                     dataLogging={"uploadPredictions": True, "roboflow": ROBOFLOW})
    assert server_yaml(spec)["capture"]["upload_predictions"] is False


def test_changing_the_runtime_rolls_the_pods() -> None:
    hashes = {builders.config_hash(builders.config_map(make_spec(engine))) for engine in ("openvino", "onnxruntime")}
    assert len(hashes) == 2


def test_a_zoo_stub_needs_deepsparse() -> None:
    with pytest.raises(SpecError) as error:
        make_spec("openvino", uri="zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none")
    message = str(error.value)
    assert "spec.model.uri" in message and "spec.serving.runtime openvino" in message and "https://" in message


def test_an_unknown_runtime_names_the_choices() -> None:
    with pytest.raises(SpecError, match=r"spec\.serving\.runtime must be one of deepsparse, openvino, onnxruntime, "
                                        r"got 'tensorrt'"):
        make_spec("tensorrt")


def test_settings_read_the_runtime_image_from_the_environment() -> None:
    settings = Settings.from_env({"KONTINUAL_OPENVINO_SERVER_IMAGE": "registry.local/ov:9"})
    assert settings.openvino_server_image == "registry.local/ov:9"
    assert Settings.from_env({}).openvino_server_image.startswith("kontinual/server-openvino:")


def test_kontinual_render_shows_the_runtime() -> None:
    result = run("-f", "examples/production-runtime.yaml")
    assert result.returncode == 0, result.stderr
    docs = {d["kind"]: d for d in documents(result.stdout)}
    config = yaml.safe_load(docs["ConfigMap"]["data"]["server.yaml"])
    assert config["runtime"] == "openvino"
    (server,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert server["image"].startswith("kontinual/server-openvino:")
    assert server["command"][:3] == ["python", "-m", "kontinual.serving.kserve_runtime"]


def test_render_names_the_field_of_a_bad_runtime() -> None:
    text = "metadata: {name: x}\nspec: {model: {uri: 'https://m.example/x.onnx'}, serving: {runtime: tritonx}}\n"
    result = run("-f", "-", stdin="apiVersion: kontinual.io/v1alpha1\nkind: ContinualModel\n" + text)
    assert result.returncode != 0
    assert "spec.serving.runtime must be one of deepsparse, openvino, onnxruntime" in result.stderr


def test_the_command_names_a_module_of_the_package() -> None:
    """The module the command runs is in this package (importing it needs the runtime venv: tests/runtime does)."""
    module = builders.KSERVE_RUNTIME_MODULE
    assert (ROOT / "operator" / Path(*module.split("."))).with_suffix(".py").is_file(), module
