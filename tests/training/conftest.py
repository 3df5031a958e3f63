"""Training tier helpers: run `kontinual train` as the Job does (a subprocess), and a tiny model config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.synthetic import make_dataset

KONTINUAL = Path(sys.executable).with_name("kontinual")
IMAGE_SIZE = 64


@dataclass
class Run:
    code: int
    result: dict
    log: str


def run_train(args: list[str], *, result_file: Path, env: dict[str, str] | None = None,
              timeout: float = 300) -> Run:
    """`kontinual train ARGS` in a fresh process (API_URL must be in its env before roboflow is imported)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTINUAL_", "ROBOFLOW_"))}
    full_env.update({"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}, **(env or {}))
    done = subprocess.run([str(KONTINUAL), "train", *args, "--result-file", str(result_file)],
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    text = result_file.read_text() if result_file.exists() else "{}"
    return Run(done.returncode, json.loads(text), done.stdout + done.stderr)


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolov5n's architecture at 1/8 width: same layers, trains in seconds on 2 cores."""
    import yolov5

    cfg = yaml.safe_load((Path(yolov5.__file__).parent / "models" / "yolov5n.yaml").read_text())
    cfg.update(depth_multiple=0.33, width_multiple=0.125)
    path = tmp_path_factory.mktemp("cfg") / "yolov5-tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def soccer_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("soccer"), n_train=16, n_valid=4, n_test=4, size=IMAGE_SIZE)
