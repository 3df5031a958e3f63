"""New labels reach training: `kontinual train --generate-version` has Roboflow generate a dataset version
(the roboflow SDK's generate_version, through the Roboflow double), waits for it, trains on it and names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.roboflow_double import RoboflowDouble
from tests.support.synthetic import make_dataset
from tests.training.conftest import IMAGE_SIZE, Run, run_train


# What the operator's Job passes (controller.jobs.generation_settings): resize to imageSize, no augmentation.
SETTINGS = {"augmentation": {}, "preprocessing": {"auto-orient": True,
                                                  "resize": {"format": "Stretch to", "height": IMAGE_SIZE,
                                                             "width": IMAGE_SIZE}}}


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images people labeled in the project since version 1: more of them, at camera size (96 px)."""
    return make_dataset(tmp_path_factory.mktemp("labeled"), n_train=20, n_valid=4, n_test=6, size=96, seed=3)


def _train(rf: RoboflowDouble, tmp_path: Path, model_config: Path, *extra: str, epochs: int = 1) -> Run:
    return run_train(["--base-weights", str(model_config), "--image-size", str(IMAGE_SIZE), "--batch-size", "8",
                      "--workers", "0", "--device", "cpu", "--epochs", str(epochs),
                      "--roboflow-workspace", rf.workspace, "--roboflow-project", "soccer",
                      "--output-dir", str(tmp_path / "claim"), "--version", "4",
                      "--generate-version", json.dumps(SETTINGS), *extra],
                     result_file=tmp_path / "result.json", env={"API_URL": rf.url, "ROBOFLOW_API_KEY": rf.api_key},
                     timeout=600)


def _generate_requests(rf: RoboflowDouble) -> list:
    return [r for r in rf.requests if r.method == "POST" and r.path == f"/{rf.workspace}/soccer/generate"]


@pytest.mark.slow
def test_new_labels_are_generated_into_a_version_that_the_run_trains_on(
        tmp_path: Path, soccer_dataset: Path, labeled: Path, tiny_model_config: Path) -> None:
    with RoboflowDouble() as rf:
        rf.add_version("soccer", 1, soccer_dataset)  # the last run trained on this one
        rf.label_images("soccer", labeled)  # 30 annotated images now
        rf.generation_polls = 1  # generation takes a while: the run waits for it
        run = _train(rf, tmp_path, tiny_model_config, "--labeled-at-last-run", "24")
    assert run.code == 0, run.log[-3000:]
    (request,) = _generate_requests(rf)  # one generation, with the settings as the SDK sends them
    assert json.loads(request.body) == SETTINGS and request.api_key == rf.api_key
    assert rf.generated("soccer") == {2: SETTINGS}
    downloads = [r.path for r in rf.requests if r.path.startswith("/download/")]
    assert downloads == ["/download/soccer/2/yolov5pytorch.zip"]  # the new version, not the old latest
    result = run.result
    assert result["datasetVersion"] == "2" and result["datasetGenerated"] is True
    assert result["images"] == {"train": 20, "valid": 4, "test": 6}  # the labeled images, all of them
    assert result["evaluatedOn"] == {"split": "test", "images": 6, "datasetVersion": "2",
                                     "file": "v4/model.onnx", "runtime": "deepsparse"}  # the file DeepSparse serves
    manifest = json.loads((tmp_path / "claim" / "v4" / "manifest.json").read_text())
    assert manifest["dataset"]["version"] == "2" and manifest["dataset"]["generated"] is True
    assert "generating a new version of acme/soccer from 30 annotated images" in run.log
    assert "Roboflow generated acme/soccer version 2" in run.log
    assert rf.api_key not in run.log


@pytest.mark.slow
def test_without_new_labels_nothing_is_generated_and_the_run_trains_on_latest(
        tmp_path: Path, soccer_dataset: Path, labeled: Path, tiny_model_config: Path) -> None:
    with RoboflowDouble() as rf:
        rf.add_version("soccer", 1, soccer_dataset)
        rf.label_images("soccer", labeled)
        run = _train(rf, tmp_path, tiny_model_config, "--labeled-at-last-run", "30")
    assert run.code == 0, run.log[-3000:]
    assert not _generate_requests(rf) and rf.generated("soccer") == {}
    assert run.result["datasetVersion"] == "1" and run.result["datasetGenerated"] is False
    assert "30 annotated images, 30 at the last run: no new version generated" in run.log


def _generate(rf: RoboflowDouble, timeout: float = 60) -> dict:
    """The trainer's generation step alone (kontinual.trainer.dataset.generate, what `kontinual train
    --generate-version` runs before the download), in a fresh process without torch: seconds, not minutes."""
    code = ("import json, sys\n"
            "from kontinual.trainer.dataset import generate\n"
            "from kontinual.trainer.errors import TrainingError\n"
            "try:\n"
            f"    out = {{'version': generate('acme', 'soccer', {SETTINGS!r}, timeout={timeout},"
            " labeled_at_last_run=None, poll_seconds=1)}\n"
            "except TrainingError as exc:\n"
            "    out = {'reason': exc.reason, 'message': exc.message}\n"
            "print('RESULT ' + json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTINUAL_", "ROBOFLOW_"))}
    env.update(API_URL=rf.url, ROBOFLOW_API_KEY=rf.api_key)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout + 120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    assert rf.api_key not in done.stdout + done.stderr
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.fixture
def project(soccer_dataset: Path, labeled: Path) -> Iterator[RoboflowDouble]:
    with RoboflowDouble() as rf:
        rf.add_version("soccer", 1, soccer_dataset)
        rf.label_images("soccer", labeled)
        yield rf


@pytest.mark.parametrize("status, body, says", [
    (400, b'{"error": {"message": "Your plan does not allow more versions.", "type": "QuotaException"}}',
     "Roboflow answered: Your plan does not allow more versions."),
    (502, b"<html>Bad Gateway</html>", "Error when requesting to generate a new version"),
    (200, b'{"message": "ok"}', "lacks what the API returns (KeyError: 'version')"),
], ids=["refused", "not-json", "no-version"])
def test_a_bad_answer_to_generate_is_a_clear_generation_failure(project: RoboflowDouble, status: int, body: bytes,
                                                                says: str) -> None:
    project.generate_answer = (status, body)
    out = _generate(project)
    assert out["reason"] == "DatasetGenerationFailed", out
    assert out["message"].startswith("Roboflow did not generate a new version of acme/soccer: ") and \
        says in out["message"], out
    assert project.api_key not in out["message"]


def test_a_generation_that_never_finishes_fails_at_the_timeout(project: RoboflowDouble) -> None:
    project.never_finish = True
    started = time.monotonic()
    out = _generate(project, timeout=6)
    elapsed = time.monotonic() - started
    assert out["reason"] == "DatasetGenerationFailed", out
    assert "did not finish generating acme/soccer version 2 within 6s (progress 50%)" in out["message"]
    assert "generateTimeoutSeconds" in out["message"]
    statuses = [r for r in project.requests if r.method == "GET" and r.path == "/acme/soccer/2"]
    assert len(statuses) >= 3  # it kept asking until the bound, then gave up
    print(f"gave up on the generation after {elapsed:.1f} s (6 s bound, the rest is start-up)")


def test_the_generation_step_waits_for_a_slow_generation(project: RoboflowDouble) -> None:
    project.generation_polls = 3
    assert _generate(project) == {"version": "2"}
    assert [r.query.get("nocache") for r in project.requests if r.path == "/acme/soccer/2"] == [["true"]] * 4
