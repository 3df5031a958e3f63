"""Evaluation of the exported ONNX: onnxruntime inference, NMS and yolov5's mAP50 / mAP50-95."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from kontinual.trainer.errors import EVALUATION_FAILED, TrainingError
from kontinual.trainer.export import _feed
from kontinual.trainer.pictures import Evidence

_LOG = logging.getLogger(__name__)
CONF_THRESHOLD = 0.001  # yolov5 val.py's thresholds for mAP
IOU_THRESHOLD = 0.6


def evaluate_onnx(onnx_path: Path, images: Path, image_size: int, workers: int, nc: int,
                  evidence: Evidence | None = None) -> dict[str, float]:
    """mAP50 and mAP50_95 (plus precision and recall) of the ONNX on a split, images letterboxed to S;
    `evidence`, when given, keeps the first images' detections and the statistics for the pictures."""
    try:
        return _evaluate(onnx_path, images, image_size, workers, nc, evidence)
    except TrainingError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(EVALUATION_FAILED, f"evaluating {onnx_path.name} on {images} failed: "
                            f"{type(exc).__name__}: {exc}") from exc


def _evaluate(onnx_path: Path, images: Path, image_size: int, workers: int, nc: int,
              evidence: Evidence | None) -> dict[str, float]:
    import onnxruntime
    from yolov5.utils.dataloaders import create_dataloader
    from yolov5.utils.general import non_max_suppression, xywh2xyxy
    from yolov5.utils.metrics import ap_per_class
    from yolov5.val import process_batch

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    loader, dataset = create_dataloader(str(images), image_size, 1, 32, rect=False, pad=0.5,
                                        workers=workers, prefix="eval: ")
    iouv = torch.linspace(0.5, 0.95, 10)
    stats: list[tuple[torch.Tensor, ...]] = []
    started = time.monotonic()
    for batch, targets, paths, _shapes in loader:
        pixels = batch.numpy().astype(np.uint8)
        output = session.run(None, _feed(session, pixels))[0]
        pred = non_max_suppression(torch.from_numpy(output), CONF_THRESHOLD, IOU_THRESHOLD, max_det=300)[0]
        if evidence is not None:
            evidence.keep(Path(paths[0]).name, pixels[0], pred.numpy())
        labels = targets[:, 1:].clone()
        labels[:, 1:] = xywh2xyxy(labels[:, 1:] * image_size)
        if len(pred) == 0:
            if len(labels):
                stats.append((torch.zeros(0, len(iouv), dtype=torch.bool), torch.zeros(0), torch.zeros(0),
                              labels[:, 0]))
            continue
        correct = process_batch(pred, labels, iouv) if len(labels) else \
            torch.zeros(len(pred), len(iouv), dtype=torch.bool)
        stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
    metrics = {"mAP50": 0.0, "mAP50_95": 0.0, "precision": 0.0, "recall": 0.0}
    if stats:
        arrays = [torch.cat(x, 0).numpy() for x in zip(*stats)]
        if evidence is not None:
            evidence.stats = (arrays[0], arrays[1], arrays[2], arrays[3])
        if arrays[0].any():
            _tp, _fp, p, r, _f1, ap, _cls = ap_per_class(*arrays, plot=False, names={i: str(i) for i in range(nc)})
            metrics = {"mAP50": float(ap[:, 0].mean()), "mAP50_95": float(ap.mean(1).mean()),
                       "precision": float(p.mean()), "recall": float(r.mean())}
    metrics = {k: round(v, 5) for k, v in metrics.items()}
    _LOG.info("evaluation of %s on %d images (%s): mAP50 %.4f mAP50-95 %.4f precision %.4f recall %.4f "
              "(%.1fs)", onnx_path.name, len(dataset), images.parent.name, metrics["mAP50"],
              metrics["mAP50_95"], metrics["precision"], metrics["recall"], time.monotonic() - started)
    return metrics
