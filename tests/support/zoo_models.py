"""SparseZoo-style model folders for the SparseZoo double, built with the real trainer: a tiny YOLOv5 pruned
and quantized by `kontinual train`, laid out as SparseZoo ships a model (deployment ONNX, training
checkpoint in SparseML's yolov5 format, transfer recipe card). Also a YOLOv5 checkpoint saved the way
YOLOv5's own train.py saves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

from tests.support.models import build_yolo_onnx


KONTINUAL = Path(sys.executable).with_name("kontinual")
SPORTS_BALL = 32  # a COCO class id beyond the four soccer classes
STUB = "zoo:cv/detection/yolov5-tiny/pytorch/ultralytics/soccer/pruned60_quant"
SPARSITY = 0.6

# How the model was sparsified: GMP pruning to 60 %, then QAT (this is the checkpoint_recipe).
SPARSIFY_RECIPE = """\
version: 1.1.0
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.6
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
    leave_enabled: True
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 1.0
"""

# The stub's sparse transfer recipe, as a SparseZoo recipe card (Markdown with YAML front matter).
TRANSFER_RECIPE_CARD = """\
---
version: 1.1.0
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 0.0
---
# Sparse transfer learning for the tiny soccer YOLOv5

Keeps every layer's sparsity (ConstantPruningModifier) and fine-tunes in INT8 (QAT) from the start.
"""


def coco_stand_in(root: Path, image_size: int = 320) -> Path:
    """A SparseZoo model folder as the zoo ships a deployment: model.onnx, deployment/model.onnx, a card.
    The ONNX is an 80-class YOLOv5 that sees a COCO "sports ball" everywhere (random weights, biased)."""
    onnx = build_yolo_onnx(root / "coco.onnx", nc=80, image_size=image_size, confident_class=SPORTS_BALL)
    folder = root / "zoo-model"
    (folder / "deployment").mkdir(parents=True)
    for target in (folder / "model.onnx", folder / "deployment" / "model.onnx"):
        target.write_bytes(onnx.read_bytes())
    (folder / "model.md").write_text("---\ndomain: cv\ntask: detection\n---\n# a COCO YOLOv5 stand-in\n")
    return folder


def _train(args: list[str], work: Path, timeout: float = 900) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTINUAL_", "ROBOFLOW_"))}
    env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1", NM_DISABLE_ANALYTICS="1")
    done = subprocess.run([str(KONTINUAL), "train", *args, "--result-file", str(work / "result.json")],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"building the zoo model failed:\n{(done.stdout + done.stderr)[-4000:]}")


def build_zoo_model(root: Path, dataset: Path, model_config: Path, image_size: int = 64) -> Path:
    """Train (prune to 60 % + QAT) with `kontinual train`, then write the SparseZoo folder under `root`."""
    import torch

    work = root / "build"
    work.mkdir(parents=True)
    (work / "sparsify.yaml").write_text(SPARSIFY_RECIPE)
    _train(["--dataset-dir", str(dataset), "--output-dir", str(work), "--version", "1", "--epochs", "2",
            "--base-weights", str(model_config), "--recipe", str(work / "sparsify.yaml"),
            "--image-size", str(image_size), "--batch-size", "8", "--workers", "0", "--device", "cpu"], work)
    trained = torch.load(work / "v1/model.pt", map_location="cpu", weights_only=True)
    folder = root / "zoo-model"
    for sub in ("training", "deployment", "recipe"):
        (folder / sub).mkdir(parents=True)
    # SparseML's yolov5 integration checkpoint: state dict in half precision, the model config, and the
    # recipe the weights were sparsified with (its load_sparsified_model recreates the QAT structure).
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in trained["state_dict"].items()}
    torch.save({"epoch": -1, "best_fitness": None, "model": state, "ema": None, "updates": None,
                "optimizer": None, "yaml": trained["yaml"], "nc": len(trained["names"]),
                "checkpoint_recipe": SPARSIFY_RECIPE, "date": datetime.now().isoformat()},
               folder / "training/model.pt")
    shutil.copyfile(work / "v1/model.onnx", folder / "model.onnx")
    shutil.copyfile(work / "v1/model.onnx", folder / "deployment/model.onnx")
    (folder / "deployment/config.json").write_text(json.dumps({"names": trained["names"]}))
    (folder / "recipe/recipe_transfer_learn.md").write_text(TRANSFER_RECIPE_CARD)
    (folder / "model.md").write_text("---\ndomain: cv\ntask: detection\n---\n# tiny soccer YOLOv5, 60 % + INT8\n")
    return folder


def checkpoint_conv_masks(path: Path) -> list:
    """The zero mask (numpy bool array) of every conv weight in a checkpoint's state dict."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict") or ckpt.get("ema") or ckpt["model"]
    return [(v == 0).numpy() for k, v in state.items() if k.endswith("weight") and v.ndim == 4]



def onnx_conv_masks(path: Path) -> list:
    """The zero mask (numpy bool array) of every conv weight in an ONNX file (INT8: weight == zero point),
    read independently of the trainer."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in init:
            weight, zero_point = init[node.input[1]], 0
        elif node.op_type == "ConvInteger" and node.input[1] in init:
            weight, zero_point = init[node.input[1]], init[node.input[3]] if len(node.input) > 3 else 0
        elif node.op_type == "QLinearConv" and node.input[3] in init:
            weight, zero_point = init[node.input[3]], init[node.input[5]]
        else:
            continue
        found.append(weight == zero_point)
    return found

_YOLOV5_TRAIN_SAVE = textwrap.dedent('''
    """Save a checkpoint as YOLOv5's train.py does (run from the yolov5 repository: modules models.*)."""
    import sys, importlib
    from copy import deepcopy
    from datetime import datetime
    import torch, yaml
    import kontinual.trainer  # noqa: F401 - keeps ultralytics' import-time is_online() from connecting
    import yolov5.models.yolo, yolov5.models.common, yolov5.utils.general
    from yolov5.models.yolo import Model
    # In the YOLOv5 repository the model classes live in `models.yolo` / `models.common`: pickle them so.
    for name in ("models", "models.yolo", "models.common"):
        sys.modules[name] = importlib.import_module("yolov5." + name)
    for module_name in ("models.yolo", "models.common"):
        module = sys.modules[module_name]
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == "yolov5." + module_name:
                value.__module__ = module_name
    cfg, nc, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    model = Model(yaml.safe_load(open(cfg)), ch=3, nc=nc)
    model.names = [f"class{i}" for i in range(nc)]
    ckpt = {"epoch": 299, "best_fitness": 0.5, "model": deepcopy(model).half(), "ema": deepcopy(model).half(),
            "updates": 1000, "optimizer": torch.optim.SGD(model.parameters(), lr=0.01).state_dict(),
            "opt": {"weights": "", "cfg": cfg, "imgsz": 640}, "git": None, "date": datetime.now().isoformat()}
    torch.save(ckpt, out)
    yolov5.utils.general.strip_optimizer(out)  # what train.py does to the final best.pt / last.pt
''')


def save_yolov5_checkpoint(path: Path, model_config: Path, nc: int = 80) -> Path:
    """A YOLOv5 checkpoint with `nc` classes saved as YOLOv5's train.py saves it (pickled model, half)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTINUAL_")}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # strip_optimizer's torch.load predates weights_only
    done = subprocess.run([sys.executable, "-c", _YOLOV5_TRAIN_SAVE, str(model_config), str(nc), str(path)],
                          env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return path
