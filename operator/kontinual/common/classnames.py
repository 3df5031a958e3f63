"""Whose class names a served model gets: a trained version's own, the seed's, or COCO for COCO zoo seeds."""

from __future__ import annotations

import re
from typing import Sequence

# DeepSparse 1.8.0's deepsparse.yolo.utils.COCO_CLASSES (the server config names them as "coco"); a
# serving-tier test checks this copy against DeepSparse's own. The operator never imports deepsparse.
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
# A SparseZoo stub of a model trained on COCO: zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/...
COCO_STUB_RE = re.compile(r"^zoo:(.*[/_-])?coco([/_-].*)?$")


def is_coco_zoo(uri: str) -> bool:
    return bool(COCO_STUB_RE.match(uri))


def seed_names(uri: str, model_names: Sequence[str], project_names: Sequence[str]) -> tuple[str, ...]:
    """The seed's class names: spec.model.classNames, else COCO's for a COCO zoo stub, else (the
    deprecated reading) spec.classNames, else none (DeepSparse then labels boxes by class id)."""
    if model_names:
        return tuple(model_names)
    if is_coco_zoo(uri):
        return COCO_NAMES
    return tuple(project_names)


def same_classes(served: Sequence[str], project: Sequence[str]) -> bool:
    """Whether a model's boxes can be pre-annotations in the project: the same set of class names."""
    return bool(served) and set(served) == set(project)


__all__ = ["COCO_NAMES", "is_coco_zoo", "same_classes", "seed_names"]
