"""Class names follow the served model: the COCO seed of the soccer example, served by a real DeepSparse Server."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kontinual.common.classnames import COCO_NAMES
from tests.serving.conftest import jpeg
from tests.serving.server import DeepSparseServer, free_port
from tests.support.models import build_yolo_onnx
from tests.support.roboflow_double import RoboflowDouble
from tests.support.zoo_models import SPORTS_BALL

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def soccer_example(rf_url: str) -> dict[str, Any]:
    """examples/soccer.yaml as a user applies it, with the Roboflow API pointed at the double."""
    docs = yaml.safe_load_all((EXAMPLES / "soccer.yaml").read_text())
    cr = copy.deepcopy(next(d for d in docs if d and d.get("kind") == "ContinualModel"))
    cr["spec"]["dataLogging"].update(frequency=1, metricsPort=free_port())
    cr["spec"]["dataLogging"]["roboflow"]["apiUrl"] = rf_url
    return cr


def test_copy_of_cocos_names_is_deepsparses() -> None:
    from deepsparse.yolo.utils import COCO_CLASSES

    assert list(COCO_NAMES) == list(COCO_CLASSES)


def test_coco_seed_of_the_soccer_example_answers_with_coco_labels(tmp_path: Path) -> None:
    # An 80-class YOLOv5 that sees a "sports ball" (id 32) everywhere, in place of the zoo stub.
    seed = build_yolo_onnx(tmp_path / "coco-seed.onnx", nc=80, image_size=320, confident_class=SPORTS_BALL)
    with RoboflowDouble() as rf:
        cr = soccer_example(rf.url)
        assert cr["spec"]["model"]["uri"].startswith("zoo:") and "coco" in cr["spec"]["model"]["uri"]
        with DeepSparseServer(cr, rf.api_key, tmp_path, model_file=seed) as server:
            assert server.config["endpoints"][0]["kwargs"] == {"class_names": "coco"}
            for i in range(4):
                response = server.infer(jpeg(320, 240, seed=100 + i))
                assert response.status_code == 200, response.text
                labels = response.json()["labels"][0]
                assert labels and set(labels) == {"sports ball"}, labels
            # The images reach Roboflow, the COCO boxes do not: they are not the project's classes.
            counters = server.wait_for(lambda c: c["uploaded"] >= 4)
            assert counters["annotations"] == 0 and counters["failed"] == 0
        assert len(rf.uploads_to("soccer-players")) == 4
        assert not [r for r in rf.requests if "/annotate/" in r.path]


def test_the_old_config_failed_those_requests(tmp_path: Path) -> None:
    """The defect this guards against: the project's four names given to the 80-class seed."""
    seed = build_yolo_onnx(tmp_path / "coco-seed.onnx", nc=80, image_size=320, confident_class=SPORTS_BALL)
    with RoboflowDouble() as rf:
        cr = soccer_example(rf.url)
        del cr["spec"]["dataLogging"], cr["spec"]["training"]
        cr["spec"]["model"]["classNames"] = cr["spec"]["classNames"]  # wrong on purpose
        with DeepSparseServer(cr, rf.api_key, tmp_path, model_file=seed) as server:
            response = server.infer(jpeg(320, 240, seed=200))
            assert response.status_code >= 500  # KeyError '32' inside DeepSparse's yolo pipeline
