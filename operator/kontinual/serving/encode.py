"""Turn a request image into JPEG bytes and the model's boxes into a YOLO pre-annotation for Roboflow."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy
from PIL import Image

JPEG_QUALITY = 90


def to_pil(image: Any) -> Image.Image:
    """An RGB PIL image from what DeepSparse's YOLOInput holds: an HxW[xC] array or a file path."""
    if isinstance(image, str):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    array = numpy.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"not an image array: shape {array.shape}")
    if array.dtype != numpy.uint8:
        scale = 255.0 if array.dtype.kind == "f" and float(array.max(initial=0)) <= 1.0 else 1.0
        array = numpy.clip(array.astype(numpy.float32) * scale, 0, 255).astype(numpy.uint8)
    return Image.fromarray(numpy.ascontiguousarray(array)).convert("RGB")


def encode_jpeg(image: Any) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height) of a request image."""
    pil = to_pil(image)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), pil.width, pil.height


def labelmap(class_names: Sequence[str]) -> dict[str, str]:
    """Roboflow's labelmap for YOLO text annotations: class index (as text) -> class name."""
    return {str(index): name for index, name in enumerate(class_names)}


def yolo_annotation(boxes: Sequence[Sequence[float]], labels: Sequence[Any], width: int, height: int,
                    class_names: Sequence[str]) -> tuple[str, dict[str, str]]:
    """A YOLO darknet annotation (`class cx cy w h`, normalised) and its labelmap.

    DeepSparse gives boxes as pixel `[x1, y1, x2, y2]` in the request image and labels as class
    names (with `class_names`) or numeric strings; boxes are clipped to the image and empty ones skipped.
    """
    index = {name: i for i, name in enumerate(class_names)}
    names = list(class_names)
    lines = []
    for box, label in zip(boxes, labels):
        text = str(label)
        if text in index:
            cls = index[text]
        else:
            try:
                cls = int(float(text))
            except ValueError:
                names.append(text)
                cls = index[text] = len(names) - 1
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
        y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        lines.append(f"{cls} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    while len(names) < max((int(line.split()[0]) for line in lines), default=-1) + 1:
        names.append(str(len(names)))
    return "\n".join(lines) + ("\n" if lines else ""), labelmap(names)
