"""Fixes SparseML 1.8.0 and yolov5 7.0.12 need on torch >= 2.9: QConfig slots, layer routing under QAT wrappers."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.quantization

_LOG = logging.getLogger(__name__)
ROUTING_ATTRS = ("f", "i", "type", "np")


class _QConfig(torch.ao.quantization.QConfig):
    """torch's QConfig gained `__slots__`; SparseML sets `.quantization_scheme` on it."""


def apply_global_fixes() -> None:
    """Process-wide fixes, applied once before SparseML or yolov5 are used."""
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    # SparseML calls `torch.quantization.QConfig(...)` and then sets an attribute on it.
    torch.quantization.QConfig = _QConfig  # type: ignore[misc]
    # yolov5's loaders draw tqdm bars; a training pod's log wants plain lines.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import sparseml  # noqa: F401 - it adds its own console handler at import: log once, via the root
    import sparseml.pytorch  # noqa: F401

    for name in ("sparseml", "sparseml.pytorch.utils.logger"):
        logging.getLogger(name).handlers[:] = []
    logging.getLogger("sparseml.exporters").setLevel(logging.WARNING)


def record_routing(model: Any) -> list[tuple[Any, ...]]:
    """yolov5's forward routes by `.f/.i/.type/.np` on each layer: remember them."""
    return [tuple(getattr(layer, a, None) for a in ROUTING_ATTRS) for layer in model.model]


def restore_routing(model: Any, routing: list[tuple[Any, ...]]) -> None:
    """Copy the routing attributes onto layers that QAT replaced by wrappers (which lack them)."""
    for layer, values in zip(model.model, routing):
        if not hasattr(layer, "f"):
            for name, value in zip(ROUTING_ATTRS, values):
                setattr(layer, name, value)


# Fix 1 (torch.onnx.export defaults to the dynamo exporter) is `dynamo=False` in export.py.
# Fix 4 ('list' object has no attribute 'detach') is `ignore: [Concat, Detect]` in the
# QuantizationModifier: recipes.ensure_quantization_ignores adds it to every recipe.
