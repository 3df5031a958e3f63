"""The champion: the serving model evaluated by the same code on the candidate's split, or why it cannot be."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kontinual.common.classnames import COCO_NAMES
from kontinual.trainer.errors import INVALID_ARGUMENTS, TrainingError

_LOG = logging.getLogger(__name__)
# baseline.reason values the operator's gate reads (kontinual.controller.decisions.BASELINE_CLASSES_DIFFER).
CLASSES_DIFFER = "ClassesDiffer"
MODEL_MISSING = "ModelMissing"
EVALUATION_FAILED = "EvaluationFailed"


@dataclass(frozen=True)
class BaselineModel:
    """--baseline-model / --baseline-version / --baseline-class-names, parsed."""

    location: str  # a path to an ONNX file, or a zoo: stub
    version: int
    class_names: tuple[str, ...] | None  # None: unknown (then the model's class count must match)


def parse_class_names(text: str | None) -> tuple[str, ...] | None:
    """'coco' (DeepSparse's COCO names) or a JSON list of names; None when not given."""
    if not text:
        return None
    if text == "coco":
        return COCO_NAMES
    try:
        names = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainingError(INVALID_ARGUMENTS, f"--baseline-class-names must be 'coco' or a JSON list of "
                            f"names, got {text[:80]!r}: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise TrainingError(INVALID_ARGUMENTS, f"--baseline-class-names must be a JSON list of names, got {text[:80]!r}")
    return tuple(names)


def onnx_shape(path: Path) -> tuple[int | None, int | None]:
    """(input size S of [1,3,S,S] or None if dynamic, class count from the [1,N,5+nc] output or None)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [d.dim_value or None for d in graph.input[0].type.tensor_type.shape.dim]
    out = [d.dim_value or None for d in graph.output[0].type.tensor_type.shape.dim]
    size = dims[-1] if len(dims) == 4 else None
    nc = out[-1] - 5 if out and out[-1] else None
    return size, nc


def _resolve(location: str) -> Path:
    """A local ONNX file for the baseline (a zoo: stub is fetched with sparsezoo, as DeepSparse would)."""
    if location.startswith("zoo:"):
        from sparsezoo import Model

        return Path(Model(location).onnx_model.path)
    return Path(location)


def evaluate_baseline(baseline: BaselineModel, names: list[str], split_images: Path, *, image_size: int,
                      evaluate: Callable[[Path, int, int], dict[str, float]]) -> dict[str, Any]:
    """{"version", "metrics"} or {"version", "error", "reason"}; never raises for a baseline it cannot use.

    `evaluate(onnx, image_size, nc)` is the candidate's own evaluator, run on the same split.
    """
    version = baseline.version
    who = "the seed model" if version == 0 else f"v{version}"

    def unusable(reason: str, error: str) -> dict[str, Any]:
        _LOG.warning("baseline %s not evaluated: %s", who, error)
        return {"version": version, "reason": reason, "error": error}

    if baseline.class_names is not None and list(baseline.class_names) != list(names):
        shown = list(baseline.class_names) if len(baseline.class_names) <= 8 else \
            f"{len(baseline.class_names)} classes ({', '.join(baseline.class_names[:3])}, ...)"
        return unusable(CLASSES_DIFFER, f"{who} predicts {shown}, the dataset has {names}")
    try:
        path = _resolve(baseline.location)
    except Exception as exc:  # noqa: BLE001 - sparsezoo raises anything from HTTP errors to ValueError
        return unusable(MODEL_MISSING, f"{who} ({baseline.location}) could not be fetched: {type(exc).__name__}: {exc}")
    if not path.is_file():
        return unusable(MODEL_MISSING, f"{who}'s ONNX {path} is not in the trainer's container")
    try:
        size, nc = onnx_shape(path)
    except Exception as exc:  # noqa: BLE001
        return unusable(EVALUATION_FAILED, f"{who}'s ONNX {path} cannot be read: {type(exc).__name__}: {exc}")
    if nc is not None and nc != len(names):
        return unusable(CLASSES_DIFFER, f"{who} predicts {nc} classes, the dataset has {len(names)} ({names})")
    try:
        metrics = evaluate(path, size or image_size, len(names))
    except TrainingError as exc:
        return unusable(EVALUATION_FAILED, exc.message)
    return {"version": version, "metrics": {"mAP50": metrics["mAP50"], "mAP50_95": metrics["mAP50_95"]}}
