"""Starting points of `kontinual train`: a SparseZoo stub through the SparseZoo double (sparsity and INT8
kept), a YOLOv5 checkpoint saved as YOLOv5's train.py saves it (80 classes -> 4), and sources that
fail fast, before the dataset download."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from tests.support.roboflow_double import RoboflowDouble
from tests.support.sparsezoo_double import SparseZooDouble
from tests.support.zoo_models import (STUB, build_zoo_model, checkpoint_conv_masks, onnx_conv_masks,
                                      save_yolov5_checkpoint)
from tests.training.conftest import IMAGE_SIZE, Run, run_train

pytestmark = pytest.mark.slow
TRANSFER = f"{STUB}?recipe_type=transfer_learn"
FLAGS = ["--image-size", str(IMAGE_SIZE), "--batch-size", "8", "--workers", "0", "--device", "cpu"]


def per_layer_sparsity_change(checkpoint: list[np.ndarray], exported: list[np.ndarray]) -> list[float]:
    """For each exported conv, |its sparsity - its checkpoint layer's| (the layer of the same shape whose
    zeros sit in the most similar places: graph order differs from state-dict order)."""
    assert len(exported) == len(checkpoint) and exported
    changes, unused = [], list(range(len(checkpoint)))
    for mask in exported:
        same = [i for i in unused if checkpoint[i].shape == mask.shape]
        assert same, f"no checkpoint conv of shape {mask.shape}"
        best = max(same, key=lambda i: float((checkpoint[i] == mask).mean()))
        unused.remove(best)
        changes.append(abs(float(mask.mean()) - float(checkpoint[best].mean())))
    return changes


@pytest.fixture(scope="module")
def zoo_folder(tmp_path_factory: pytest.TempPathFactory, soccer_dataset: Path, tiny_model_config: Path) -> Path:
    return build_zoo_model(tmp_path_factory.mktemp("zoo"), soccer_dataset, tiny_model_config, IMAGE_SIZE)


@pytest.fixture
def zoo(zoo_folder: Path):
    with SparseZooDouble() as double:
        double.add_model(STUB, zoo_folder)
        yield double


def zoo_env(zoo_url: str, tmp_path: Path) -> dict[str, str]:
    return {"SPARSEZOO_API_URL": zoo_url, "SPARSEZOO_MODELS_PATH": str(tmp_path / "zoo-cache"),
            "HOME": str(tmp_path / "home")}


def test_zoo_stub_transfer_keeps_every_layers_sparsity_and_int8(zoo: SparseZooDouble, zoo_folder: Path,
                                                               soccer_dataset: Path, tmp_path: Path) -> None:
    run = run_train(["--dataset-dir", str(soccer_dataset), "--output-dir", str(tmp_path / "m"), "--version", "1",
                     "--epochs", "2", "--base-weights", TRANSFER, "--recipe", TRANSFER, *FLAGS],
                    result_file=tmp_path / "result.json", env=zoo_env(zoo.url, tmp_path))
    assert run.code == 0, run.log[-4000:]
    onnx_file = tmp_path / "m/v1/model.onnx"
    ops = {n.op_type for n in onnx.load(str(onnx_file)).graph.node}
    assert ops & {"ConvInteger", "QLinearConv"}, ops  # the export is INT8
    before = checkpoint_conv_masks(zoo_folder / "training/model.pt")
    assert min(float(m.mean()) for m in before) >= 0.5  # the checkpoint really is sparse, layer by layer
    changes = per_layer_sparsity_change(before, onnx_conv_masks(onnx_file))
    assert max(changes) <= 0.01, changes
    assert abs(run.result["sparsity"] - 0.6) <= 0.01
    # sparsezoo asked the double (GraphQL) and downloaded the checkpoint and the transfer recipe from it.
    assert zoo.graphql_queries() and 'sparseTag: "pruned60_quant"' in zoo.graphql_queries()[0]
    assert any(p.endswith("training/model.pt") for p in zoo.downloads())
    assert any(p.endswith("recipe/recipe_transfer_learn.md") for p in zoo.downloads())
    assert "from SparseZoo" in run.log and "quantized" in run.log
    recipe = (tmp_path / "m/v1/recipe.yaml").read_text()
    assert "ConstantPruningModifier" in recipe and "---" not in recipe  # the card's front matter only


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


def test_yolov5_checkpoint_with_80_classes_fine_tunes_on_4_classes(tmp_path: Path, soccer_dataset: Path,
                                                                  tiny_model_config: Path) -> None:
    save_yolov5_checkpoint(tmp_path / "www/yolov5-tiny-coco.pt", tiny_model_config, nc=80)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Quiet, directory=str(tmp_path / "www")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/yolov5-tiny-coco.pt"
        run = run_train(["--dataset-dir", str(soccer_dataset), "--output-dir", str(tmp_path / "m"), "--version",
                         "1", "--epochs", "1", "--base-weights", url, "--recipe", "keep-sparsity-quantize", *FLAGS],
                        result_file=tmp_path / "result.json")
    finally:
        server.shutdown()
    assert run.code == 0, run.log[-4000:]
    assert "detection head rebuilt for 4 classes (the checkpoint had 80)" in run.log
    transferred = [line for line in run.log.splitlines() if "transferred" in line]
    assert transferred and "model.24.m.0.weight" in transferred[0]  # the head is what was not transferred
    session = onnxruntime.InferenceSession(str(tmp_path / "m/v1/model.onnx"), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    image = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8 if spec.type == "tensor(uint8)" else np.float32)
    assert session.run(None, {spec.name: image})[0].shape[2] == 5 + 4  # boxes, objectness, 4 classes


def assert_fails_before_dataset(run: Run, reason: str, claim: Path, rf: RoboflowDouble, started: float) -> None:
    assert run.code != 0 and run.result["status"] == "Failed" and run.result["reason"] == reason, run.result
    assert not rf.requests, [r.path for r in rf.requests]  # the dataset download never started
    assert not list(claim.glob("*")), list(claim.glob("*"))  # nothing left on the claim
    assert time.monotonic() - started < 120


@pytest.fixture
def roboflow() -> RoboflowDouble:
    with RoboflowDouble() as rf:
        yield rf


def _rf_args(rf: RoboflowDouble, claim: Path) -> tuple[list[str], dict[str, str]]:
    return (["--roboflow-workspace", rf.workspace, "--roboflow-project", "soccer", "--output-dir", str(claim),
             "--version", "1", "--epochs", "1", *FLAGS], {"API_URL": rf.url, "ROBOFLOW_API_KEY": rf.api_key})


def test_sparsezoo_down_fails_fast_with_base_weights_invalid(tmp_path: Path, roboflow: RoboflowDouble) -> None:
    with SparseZooDouble() as zoo:
        url = zoo.url
    (claim := tmp_path / "m").mkdir()
    args, env = _rf_args(roboflow, claim)
    started = time.monotonic()
    run = run_train([*args, "--base-weights", TRANSFER], result_file=tmp_path / "r.json",
                    env={**env, **zoo_env(url, tmp_path)})
    assert_fails_before_dataset(run, "BaseWeightsInvalid", claim, roboflow, started)
    assert STUB in run.result["message"] and url in run.result["message"]
    assert "SPARSEZOO_API_URL" in run.result["message"]


def test_unknown_stub_and_unknown_recipe_type_fail_fast(tmp_path: Path, roboflow: RoboflowDouble,
                                                       zoo: SparseZooDouble) -> None:
    (claim := tmp_path / "m").mkdir()
    args, env = _rf_args(roboflow, claim)
    missing = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
    started = time.monotonic()
    run = run_train([*args, "--base-weights", missing], result_file=tmp_path / "r1.json",
                    env={**env, **zoo_env(zoo.url, tmp_path)})
    assert_fails_before_dataset(run, "BaseWeightsInvalid", claim, roboflow, started)
    assert missing in run.result["message"] and "No matching models" in run.result["message"]
    started = time.monotonic()
    run = run_train([*args, "--base-weights", TRANSFER, "--recipe", f"{STUB}?recipe_type=no_such"],
                    result_file=tmp_path / "r2.json", env={**env, **zoo_env(zoo.url, tmp_path)})
    assert_fails_before_dataset(run, "RecipeInvalid", claim, roboflow, started)
    assert "recipe_type=no_such" in run.result["message"] and "recipe_transfer_learn" in run.result["message"]


class _Evil:
    def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint does at load time
        import os

        return (os.system, ("touch /tmp/kontinual-pwned",))


def test_unreadable_or_unsafe_checkpoints_fail_fast(tmp_path: Path, roboflow: RoboflowDouble) -> None:
    (claim := tmp_path / "m").mkdir()
    args, env = _rf_args(roboflow, claim)
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    started = time.monotonic()
    run = run_train([*args, "--base-weights", f"file://{evil}"], result_file=tmp_path / "r1.json", env=env)
    assert_fails_before_dataset(run, "BaseWeightsInvalid", claim, roboflow, started)
    assert str(evil) in run.result["message"] and "refusing" in run.result["message"]
    run = run_train([*args, "--base-weights", str(tmp_path / "nope.pt")], result_file=tmp_path / "r2.json",
                    env=env)
    assert_fails_before_dataset(run, "BaseWeightsInvalid", claim, roboflow, started)
    assert "zoo:<stub>" in run.result["message"]  # says what is accepted
    run = run_train(args, result_file=tmp_path / "r3.json", env=env)
    assert run.result["reason"] == "InvalidArguments" and "--base-weights is required" in run.result["message"]
