"""Fixtures of the serving tier: one small YOLOv5 ONNX per session, image helpers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy
import pytest
from PIL import Image

from tests.support.models import build_yolo_onnx

CONFIDENT_CLASS = 2  # "player": the test model predicts boxes of this class on every image


@pytest.fixture(scope="session")
def yolo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolov5n, 4 classes, 320 px, random weights biased to see players everywhere."""
    return build_yolo_onnx(tmp_path_factory.mktemp("model") / "model.onnx", confident_class=CONFIDENT_CLASS)


def jpeg(width: int, height: int, seed: int) -> bytes:
    """A distinct noise JPEG of the given size (distinct content: Roboflow would call equal ones duplicates)."""
    rng = numpy.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8")).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
