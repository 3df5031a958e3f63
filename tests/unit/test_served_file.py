"""Each runtime serves (and the gate evaluates) its own export of a version: DeepSparse model.onnx,
OpenVINO and onnxruntime a quantized run's model.qdq.onnx, verified by its own sha256."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kontinual.common.contract import ResultError, TrainingResult, served_file
from kontinual.controller import builders, decisions, jobs
from kontinual.controller.reconcile import serving_target
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec, parse
from kontinual.controller.statusdata import ModelRecord, ServingStatus, models_from

SETTINGS = Settings(server_image="registry.example/kontinual/server:1.2.3",
                    openvino_server_image="registry.example/kontinual/server-openvino:1.2.3",
                    trainer_image="registry.example/kontinual/trainer:1.2.3")
ONNX_SHA, QDQ_SHA = "a" * 64, "b" * 64
ROBOFLOW = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}


def make_spec(runtime: str) -> Spec:
    spec = {"model": {"uri": "https://models.example/seed.onnx", "classNames": ["ball", "player"]},
            "serving": {"runtime": runtime}, "dataLogging": {"roboflow": ROBOFLOW},
            "training": {"baseWeights": "https://models.example/yolov5s.pt"}}
    return parse({"metadata": {"name": "soccer", "namespace": "vision", "uid": "u1"}, "spec": spec}, SETTINGS)


def quantized_result(version: int = 3, **changes: Any) -> TrainingResult:
    """What `kontinual train` reports for a QAT run (tests/training checks the trainer writes this shape)."""
    data: dict[str, Any] = {
        "status": "Succeeded", "version": version, "onnx": f"v{version}/model.onnx", "sha256": ONNX_SHA,
        "qdqOnnx": f"v{version}/model.qdq.onnx", "qdqSha256": QDQ_SHA, "metrics": {"mAP50": 0.6, "mAP50_95": 0.3},
        "classNames": ["ball", "player"],
        "evaluatedOn": {"split": "test", "images": 4, "file": f"v{version}/model.qdq.onnx", "runtime": "openvino"},
    }
    data.update(changes)
    return TrainingResult.from_json(json.dumps({k: v for k, v in data.items() if v is not None}))


def promoted_record(result: TrainingResult) -> ModelRecord:
    """The status.models[] entry the operator writes, read back from the API as the next reconcile does."""
    record = decisions.model_record(result, "soccer-train-3", "2026-12-06T00:00:00Z",
                                    decisions.Verdict(True, "GatePassed", "ok"))
    (back,) = models_from([record.to_dict()])
    return back


def server_pod(spec: Spec, record: ModelRecord) -> tuple[str, list[str]]:
    """(the model path in server.yaml, the verify-model init container's command) for serving `record`."""
    target = serving_target(spec, [record])
    config = builders.server_config(spec, target)
    model = config["model"] if "model" in config else config["endpoints"][0]["model"]
    (verify,) = builders.deployment(spec, SETTINGS, target)["spec"]["template"]["spec"]["initContainers"]
    assert verify["name"] == "verify-model"
    return model, verify["command"]


def test_served_file_per_runtime() -> None:
    assert served_file("deepsparse", True) == "model.onnx"
    assert served_file("openvino", True) == served_file("onnxruntime", True) == "model.qdq.onnx"
    assert {served_file(r, False) for r in ("deepsparse", "openvino", "onnxruntime")} == {"model.onnx"}


def test_a_quantized_result_round_trips_with_its_qdq_export() -> None:
    result = quantized_result()
    data = json.loads(result.to_json())
    assert data["qdqOnnx"] == "v3/model.qdq.onnx" and data["qdqSha256"] == QDQ_SHA
    assert data["evaluatedOn"]["file"] == "v3/model.qdq.onnx"
    assert TrainingResult.from_json(result.to_json()) == result
    with pytest.raises(ResultError, match="qdqOnnx and qdqSha256"):
        quantized_result(qdqSha256=None)


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_kserve_engines_serve_and_verify_the_qdq_export(runtime: str) -> None:
    spec = make_spec(runtime)
    record = promoted_record(quantized_result())
    assert record.qdq_sha256 == QDQ_SHA and record.to_dict()["qdqSha256"] == QDQ_SHA
    model, verify = server_pod(spec, record)
    assert model == "/models/v3/model.qdq.onnx"
    assert verify[-2:] == ["/models/v3/model.qdq.onnx", QDQ_SHA]  # a wrong file fails the init container
    status = ServingStatus(version=3, uri=serving_target(spec, [record]).source.uri, url="u", sha256=QDQ_SHA)
    assert status.to_dict()["uri"] == "pvc://soccer-models/v3/model.qdq.onnx"


def test_deepsparse_serves_and_verifies_model_onnx_of_the_same_version() -> None:
    model, verify = server_pod(make_spec("deepsparse"), promoted_record(quantized_result()))
    assert model == "/models/v3/model.onnx" and verify[-2:] == ["/models/v3/model.onnx", ONNX_SHA]


def test_a_dense_version_serves_its_one_export_to_every_runtime() -> None:
    dense = promoted_record(quantized_result(qdqOnnx=None, qdqSha256=None,
                                             evaluatedOn={"split": "test", "file": "v3/model.onnx"}))
    assert dense.qdq_sha256 is None and "qdqSha256" not in dense.to_dict()
    for runtime in ("deepsparse", "openvino", "onnxruntime"):
        model, verify = server_pod(make_spec(runtime), dense)
        assert model == "/models/v3/model.onnx" and verify[-1] == ONNX_SHA, runtime


def test_switching_the_runtime_rolls_the_pods_onto_the_other_file() -> None:
    record = promoted_record(quantized_result())
    hashes = {builders.config_hash(builders.config_map(make_spec(r), serving_target(make_spec(r), [record])))
              for r in ("deepsparse", "openvino")}
    assert len(hashes) == 2


@pytest.mark.parametrize(("changes", "reason"), [
    ({"qdqOnnx": "v2/model.qdq.onnx"}, "ResultMismatch"),
    ({"qdqSha256": "not-a-digest"}, "ChecksumMissing"),
])
def test_the_gate_refuses_a_qdq_export_it_cannot_verify(changes: dict[str, Any], reason: str) -> None:
    verdict = decisions.judge(make_spec("openvino"), quantized_result(**changes), 3, 0)
    assert (verdict.promoted, verdict.reason) == (False, reason)
    assert decisions.judge(make_spec("openvino"), quantized_result(), 3, 0).promoted


def test_the_gate_refuses_numbers_of_a_file_the_runtime_will_not_serve() -> None:
    """spec.serving.runtime changed during the run: the QDQ export was evaluated, DeepSparse serves model.onnx."""
    verdict = decisions.judge(make_spec("deepsparse"), quantized_result(), 3, 0)
    assert (verdict.promoted, verdict.reason) == (False, "RuntimeChanged")
    assert "v3/model.qdq.onnx" in verdict.message and "serves v3/model.onnx" in verdict.message
    dense = quantized_result(qdqOnnx=None, qdqSha256=None, evaluatedOn={"split": "test", "file": "v3/model.onnx"})
    assert decisions.judge(make_spec("openvino"), dense, 3, 0).promoted  # one export serves every runtime
    older = quantized_result(evaluatedOn={"split": "test", "images": 4})  # a trainer before evaluatedOn.file
    assert decisions.judge(make_spec("deepsparse"), older, 3, 0).promoted


@pytest.mark.parametrize(("runtime", "file"), [("deepsparse", "model.onnx"), ("openvino", "model.qdq.onnx"),
                                               ("onnxruntime", "model.qdq.onnx")])
def test_the_job_names_the_runtime_and_the_baseline_is_the_file_the_server_runs(runtime: str, file: str) -> None:
    from kontinual.trainer import cli  # light: argparse, no torch

    spec = make_spec(runtime)
    serving = promoted_record(quantized_result())
    manifest = jobs.training_job(spec, SETTINGS, version=4, base_weights=3, baseline=jobs.Baseline.of(spec, serving))
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    args = cli._parse(container["args"])  # noqa: SLF001 - the trainer's own parser and checks
    assert args.runtime == runtime
    assert (args.baseline_model, args.baseline_version) == (f"/models/v3/{file}", 3)
    assert args.base_weights == "/models/v3/model.pt"


def test_the_trainer_refuses_an_unknown_runtime() -> None:
    from kontinual.trainer import cli
    from kontinual.trainer.errors import TrainingError

    with pytest.raises(TrainingError, match="--runtime"):
        cli._parse(["--output-dir", "/m", "--version", "1", "--base-weights", "yolov5n.yaml",  # noqa: SLF001
                    "--dataset-dir", "/d", "--runtime", "tensorrt"])
