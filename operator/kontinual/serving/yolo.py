"""DeepSparse 1.8.0's YOLO pre- and post-processing in numpy, so another engine answers like DeepSparse Server.

Ported from deepsparse/yolo/pipelines.py and deepsparse/yolo/utils/utils.py (read, and checked
against a live DeepSparse Server by tests/runtime):
* from_files decodes each upload with PIL as RGB, then `cv2.resize` to the model size (a stretch,
  not a letterbox), HWC -> CHW; float32 /255, or uint8 as is when the model's input is uint8
  (DeepSparse's `is_quantized`).
* the single output `[B, N, 5 + nc]` goes through yolov5's NMS with DeepSparse's defaults:
  conf 0.45, IoU 0.25 (the reverse of yolov5's), best class only, class offset 4096, at most
  300 detections, greedy in descending score order; boxes are rescaled per axis to the
  original size and not clipped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy
from PIL import Image

CONF_THRES, IOU_THRES = 0.45, 0.25
MAX_WH, MAX_DET, MAX_NMS = 4096, 300, 30000


@dataclass(frozen=True)
class Detections:
    """One image's answer: xyxy boxes in original pixels, scores, class ids (floats), sorted by score."""

    boxes: numpy.ndarray  # [n, 4]
    scores: numpy.ndarray  # [n]
    classes: numpy.ndarray  # [n]


def decode(data: bytes) -> numpy.ndarray:
    """An uploaded file as an HxWx3 uint8 RGB array (what DeepSparse's from_files route builds)."""
    with Image.open(io.BytesIO(data)) as image:
        return numpy.asarray(image.convert("RGB"))


def preprocess(image: numpy.ndarray, size: tuple[int, int], uint8: bool = False) -> numpy.ndarray:
    """HxWx3 -> 3xHxW at the model's (height, width): cv2.resize stretch, /255 unless the model takes uint8."""
    resized = cv2.resize(image, dsize=(size[1], size[0]))
    chw = numpy.ascontiguousarray(resized.transpose(2, 0, 1))
    return chw if uint8 else chw.astype(numpy.float32) / 255


def _xywh2xyxy(x: numpy.ndarray) -> numpy.ndarray:
    y = numpy.empty_like(x)
    y[:, 0] = x[:, 0] - x[:, 2] / 2
    y[:, 1] = x[:, 1] - x[:, 3] / 2
    y[:, 2] = x[:, 0] + x[:, 2] / 2
    y[:, 3] = x[:, 1] + x[:, 3] / 2
    return y


def _nms(boxes: numpy.ndarray, scores: numpy.ndarray, iou_thres: float) -> numpy.ndarray:
    """Greedy NMS as torchvision.ops.nms: indices kept, in descending score order."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = numpy.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = numpy.clip(numpy.minimum(x2[i], x2[rest]) - numpy.maximum(x1[i], x1[rest]), 0, None)
        h = numpy.clip(numpy.minimum(y2[i], y2[rest]) - numpy.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_thres)]  # NaN IoU (empty boxes) keeps the box, like torchvision
    return numpy.asarray(keep, dtype=numpy.int64)


def nms(prediction: numpy.ndarray, conf_thres: float = CONF_THRES, iou_thres: float = IOU_THRES
        ) -> list[numpy.ndarray]:
    """yolov5's non_max_suppression as DeepSparse ports it (multi_label off): per image [n, 6] xyxy, conf, cls."""
    out = []
    for x in prediction.astype(numpy.float32, copy=False):
        x = x[x[:, 4] > conf_thres]
        if not x.shape[0]:
            out.append(numpy.zeros((0, 6), numpy.float32))
            continue
        x = x.copy()
        x[:, 5:] *= x[:, 4:5]
        box = _xywh2xyxy(x[:, :4])
        cls = x[:, 5:].argmax(1)
        conf = x[numpy.arange(len(x)), 5 + cls]
        det = numpy.concatenate([box, conf[:, None], cls[:, None].astype(numpy.float32)], 1)[conf > conf_thres]
        if not det.shape[0]:
            out.append(numpy.zeros((0, 6), numpy.float32))
            continue
        if det.shape[0] > MAX_NMS:
            det = det[numpy.argsort(-det[:, 4], kind="stable")[:MAX_NMS]]
        keep = _nms(det[:, :4] + det[:, 5:6] * MAX_WH, det[:, 4], iou_thres)[:MAX_DET]
        out.append(det[keep])
    return out


def postprocess(output: numpy.ndarray, original_shapes: Sequence[tuple[int, int]], size: tuple[int, int]
                ) -> list[Detections]:
    """The engine output of a batch -> per image detections in original pixels (per-axis scale, unclipped)."""
    results = []
    for det, (height, width) in zip(nms(output), original_shapes):
        scale = numpy.array([width / size[1], height / size[0]] * 2, dtype=numpy.float64)
        results.append(Detections(det[:, :4].astype(numpy.float64) * scale, det[:, 4], det[:, 5]))
    return results


def response(detections: Sequence[Detections], class_names: Sequence[str] | None) -> dict[str, Any]:
    """DeepSparse's YOLOOutput body: labels are class names when the endpoint has them, floats otherwise."""
    labels: list[list[Any]] = []
    for d in detections:
        ids = d.classes.tolist()
        labels.append([class_names[int(i)] for i in ids] if class_names else ids)
    return {"boxes": [d.boxes.tolist() for d in detections], "scores": [d.scores.tolist() for d in detections],
            "labels": labels, "intermediate_outputs": None}
