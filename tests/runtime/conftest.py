"""Fixtures of the runtime tier: the serving tier's YOLOv5 ONNX."""

from tests.serving.conftest import yolo_onnx  # noqa: F401  (the same session model as the serving tier)
