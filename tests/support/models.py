"""Small YOLOv5 ONNX models for tests: built from the `yolov5` package's model configs, random weights, no downloads."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

_CACHE: dict[tuple[str, int, int, int | None], Path] = {}
_LOCK = threading.Lock()
_CACHE_DIR: Path | None = None


def _export(target: Path, cfg: str, nc: int, image_size: int, confident_class: int | None) -> None:
    import torch
    import yolov5
    from yolov5.models.yolo import Detect, Model

    cfg_path = Path(cfg) if Path(cfg).is_file() else Path(yolov5.__file__).parent / "models" / cfg
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no YOLOv5 model config {cfg!r} (neither a file nor shipped in yolov5/models)")
    torch.manual_seed(0)
    model = Model(str(cfg_path), ch=3, nc=nc).eval()
    detect = model.model[-1]
    assert isinstance(detect, Detect)
    detect.export = True  # one output tensor [1, anchors, 5 + nc], what DeepSparse's yolo pipeline expects
    if confident_class is not None:
        # Bias the head so every anchor is an object of that class: random weights then yield boxes
        # above DeepSparse's default thresholds (conf 0.45) on any image, so data capture tests can
        # check pre-annotations. Box positions and sizes still come from the random weights.
        with torch.no_grad():
            for conv in detect.m:
                bias = conv.bias.view(detect.na, -1)
                bias[:, 4] = 12.0
                bias[:, 5:] = -12.0
                bias[:, 5 + confident_class] = 12.0
    dummy = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        model(dummy)  # builds the grids once
        torch.onnx.export(model, dummy, str(target), dynamo=False, opset_version=13,
                          input_names=["images"], output_names=["output"])


def build_yolo_onnx(path: Path, *, cfg: str = "yolov5n.yaml", nc: int = 4, image_size: int = 320,
                    confident_class: int | None = None) -> Path:
    """Write a YOLOv5 ONNX (static [1, 3, S, S], random weights) to `path`; built once per session.

    `cfg` is a model config shipped inside the `yolov5` package (yolov5n.yaml, yolov5s.yaml, ...).
    `confident_class`: make the model predict boxes of that class index on every image.
    """
    global _CACHE_DIR
    key = (cfg, nc, image_size, confident_class)
    path = Path(path)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None or not cached.is_file():
            if _CACHE_DIR is None:
                _CACHE_DIR = Path(tempfile.mkdtemp(prefix="kontinual-onnx-"))
                atexit.register(shutil.rmtree, _CACHE_DIR, True)
            cached = _CACHE_DIR / f"{Path(cfg).stem}-nc{nc}-s{image_size}-c{confident_class}.onnx"
            _export(cached, cfg, nc, image_size, confident_class)
            _CACHE[key] = cached
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.resolve() != cached.resolve():
        shutil.copyfile(cached, path)
    return path
