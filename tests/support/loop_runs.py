"""Two real training runs of the loop, as the operator's Jobs run them, judged by the operator's own gate.

Run 1 starts from a YOLOv5 checkpoint with 80 classes (the form of the COCO seed's weights) on the
Roboflow project's version 1; the served seed is the soccer example's COCO stub, which cannot be
evaluated on the project's 4 classes, so the floor (`rollout.gate.minValue`) decides. Then people
label more images - busier scenes with smaller players - and run 2 has Roboflow generate version 2
from them, continues from v1's model.pt, and is judged against v1 evaluated on version 2's harder
test split. Used by the training tier's test and by benchmarks/two_runs.py (which prints the figures).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kontinual.common.contract import TrainingResult
from kontinual.controller import decisions, jobs, spec as specs
from kontinual.controller.settings import Settings
from tests.support.roboflow_double import RoboflowDouble
from tests.support.synthetic import make_dataset
from tests.support.zoo_models import save_yolov5_checkpoint

KONTINUAL = Path(sys.executable).with_name("kontinual")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "soccer.yaml"
# Dense training; the learning rate as a recipe may set it (SparseML's LearningRateFunctionModifier wins over
# the trainer's default schedule at every step): yolov5's 0.01 is made for COCO-pretrained weights, and
# this checkpoint's are random - at 0.01 the tiny model is still at mAP50 0.05 after 80 epochs.
RECIPE = """\
version: 1.1.0
num_epochs: 1
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
    lr_func: linear
    init_lr: 0.1
    final_lr: 0.002
"""


@dataclass
class LoopRun:
    result: TrainingResult
    verdict: decisions.Verdict
    seconds: float
    log: str


@dataclass
class TwoRuns:
    spec: specs.Spec
    runs: list[LoopRun] = field(default_factory=list)
    generate_requests: int = 0

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"floor": self.spec.rollout.gate.min_value}
        for n, run in enumerate(self.runs, 1):
            out[f"run{n}"] = {"datasetVersion": run.result.datasetVersion, "generated": run.result.datasetGenerated,
                              "images": run.result.images, "mAP50": run.result.metrics.get("mAP50"),
                              "baseline": run.result.baseline, "reason": run.verdict.reason,
                              "promoted": run.verdict.promoted, "message": run.verdict.message,
                              "seconds": round(run.seconds, 1)}
        return out


def soccer_spec(rf_url: str, image_size: int, epochs: int) -> specs.Spec:
    """examples/soccer.yaml's spec (its gate: mAP50, minDelta 0, minValue 0.2), Roboflow at the double,
    smaller images and fewer epochs (a tiny model on 2 cores)."""
    docs = yaml.safe_load_all(EXAMPLE.read_text())
    cr = copy.deepcopy(next(d for d in docs if d and d.get("kind") == "ContinualModel"))
    cr["spec"]["dataLogging"]["roboflow"]["apiUrl"] = rf_url
    cr["spec"]["training"].update(imageSize=image_size, epochs=epochs)
    return specs.parse(cr, Settings(roboflow_api_urls=(rf_url,)))


def _train(args: list[str], work: Path, env: dict[str, str]) -> tuple[TrainingResult, str, float]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTINUAL_", "ROBOFLOW_"))}
    full_env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1", NM_DISABLE_ANALYTICS="1", **env)
    result_file = work / "result.json"
    result_file.unlink(missing_ok=True)
    started = time.monotonic()
    done = subprocess.run([str(KONTINUAL), "train", *args, "--result-file", str(result_file)], env=full_env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - started
    log = done.stdout + done.stderr
    if done.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"kontinual train failed ({done.returncode}):\n{log[-4000:]}")
    return TrainingResult.from_json(result_file.read_text()), log, seconds


def two_runs(work: Path, model_config: Path, *, epochs: int = 70, image_size: int = 64, n_train: int = 48,
             n_eval: int = 24) -> TwoRuns:
    """Both runs through the Roboflow double; the verdicts are `decisions.judge`'s on the real results.

    Version 1: `n_train` / `n_eval` / `n_eval` images; version 2 adds `n_train` / `n_eval // 2` busy
    scenes to train and valid, and its test split is `n_eval` busy scenes only."""
    work.mkdir(parents=True, exist_ok=True)
    v1 = make_dataset(work / "v1", n_train=n_train, n_valid=n_eval, n_test=n_eval, size=image_size, seed=11)
    # The project after people labeled the new, harder images: version 1's train and valid images
    # plus busy scenes; the held-out test split is busy scenes only (a harder exam).
    grown = make_dataset(work / "grown", n_train=n_train, n_valid=n_eval // 2, n_test=n_eval,
                         size=image_size, seed=12, hard=True, prefix="busy_")
    for split in ("train", "valid"):
        for kind in ("images", "labels"):
            for file in (v1 / split / kind).iterdir():
                shutil.copyfile(file, grown / split / kind / f"easy_{file.name}")
    base = save_yolov5_checkpoint(work / "yolov5-coco-form.pt", model_config, nc=80)
    (work / "recipe.yaml").write_text(RECIPE)
    claim = work / "claim"
    with RoboflowDouble() as rf:
        spec = soccer_spec(rf.url, image_size, epochs)
        assert spec.training is not None
        project = spec.training.dataset.project
        rf.add_version(project, 1, v1)
        rf.label_images(project, v1)
        rf.generation_polls = 1
        settings = json.dumps(jobs.generation_settings(spec))  # what the Job passes: resize, no augmentation
        common = ["--roboflow-workspace", rf.workspace, "--roboflow-project", project, "--output-dir", str(claim),
                  "--recipe", str(work / "recipe.yaml"), "--epochs", str(epochs), "--image-size", str(image_size),
                  "--batch-size", "8", "--workers", "0", "--device", "cpu", "--generate-version", settings]
        env = {"API_URL": rf.url, "ROBOFLOW_API_KEY": rf.api_key}
        loop = TwoRuns(spec)
        labeled_v1 = sum(1 for _ in v1.rglob("*.jpg"))
        # Run 1: the poll's count is version 1's, so nothing new to generate; the seed is the COCO stub.
        result, log, seconds = _train(["--version", "1", "--base-weights", str(base), "--labeled-at-last-run",
                                       str(labeled_v1), "--baseline-model", spec.model.uri, "--baseline-version",
                                       "0", "--baseline-class-names", "coco", *common], work, env)
        loop.runs.append(LoopRun(result, decisions.judge(spec, result, 1, 0), seconds, log))
        # People labeled the busy scenes: run 2 generates version 2 and is judged against v1 on it.
        rf.label_images(project, grown)
        result, log, seconds = _train(["--version", "2", "--base-weights", str(claim / "v1" / "model.pt"),
                                       "--labeled-at-last-run", str(labeled_v1), "--baseline-model",
                                       str(claim / "v1" / "model.onnx"), "--baseline-version", "1",
                                       "--baseline-class-names", json.dumps(loop.runs[0].result.classNames),
                                       *common], work, env)
        loop.runs.append(LoopRun(result, decisions.judge(spec, result, 2, 1), seconds, log))
        loop.generate_requests = sum(1 for r in rf.requests if r.method == "POST" and r.path.endswith("/generate"))
    return loop
