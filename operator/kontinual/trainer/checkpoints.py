"""Reading a base checkpoint: Kontinual's model.pt, or a YOLOv5 checkpoint as YOLOv5's train.py (pickled
model) or SparseML's yolov5 integration (state dict + yaml + checkpoint_recipe) save it."""

from __future__ import annotations

import logging
import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kontinual.trainer.errors import BASE_WEIGHTS_INVALID, TrainingError

_LOG = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "kontinual-yolov5/1"
# Classes a YOLOv5 checkpoint may name: torch, the yolov5 model classes, numpy arrays, train.py's
# options. Anything else (os.system, subprocess, ...) is refused instead of run at load time.
_ALLOWED_ROOTS = {"torch", "yolov5", "collections", "numpy", "argparse", "pathlib", "_codecs", "copyreg",
                  "datetime", "__builtin__", "builtins"}
_ALLOWED_BUILTINS = {"set", "frozenset", "slice", "dict", "list", "tuple", "int", "float", "str", "bytes",
                     "bytearray", "complex", "bool", "range", "object"}


@dataclass
class BaseCheckpoint:
    """A base read from disk before the dataset is known: what the model is and the weights it had."""

    kind: str  # "kontinual" | "yolov5"
    source: str
    cfg: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    names: list[str]
    quantization_recipe: str | None = None  # recreate this QAT structure before loading the weights
    structure_epoch: float = float("inf")
    history: list[dict[str, Any]] = field(default_factory=list)


class _Unpickler(pickle.Unpickler):
    """YOLOv5's repository pickles `models.yolo.DetectionModel`; the yolov5 package has it as
    `yolov5.models.yolo.DetectionModel`. Only allow-listed modules may be named."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in ("models", "utils"):
            module = f"yolov5.{module}"
        root = module.split(".")[0]
        if root not in _ALLOWED_ROOTS or (root in ("builtins", "__builtin__") and name not in _ALLOWED_BUILTINS):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a YOLOv5/torch class)")
        return super().find_class(module, name)


_PICKLE = types.ModuleType("kontinual_yolov5_pickle")
_PICKLE.Unpickler = _Unpickler  # type: ignore[attr-defined]
_PICKLE.load = lambda f, **kw: _Unpickler(f, **kw).load()  # type: ignore[attr-defined]
_PICKLE.__dict__.update({k: getattr(pickle, k) for k in ("dump", "dumps", "loads", "HIGHEST_PROTOCOL")})


def _torch_load(path: Path, source: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a pickled model: try the restricted YOLOv5 unpickler
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {source}: cannot be read as a PyTorch "
                            f"checkpoint: {type(exc).__name__}: {str(exc)[:300]}") from exc


def _names(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value)]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def read_checkpoint(path: Path, source: str) -> BaseCheckpoint:
    """Any supported checkpoint format -> BaseCheckpoint; BaseWeightsInvalid naming the source otherwise."""
    ckpt = _torch_load(path, source)
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        return BaseCheckpoint("kontinual", source, ckpt["yaml"], ckpt["state_dict"], list(ckpt["names"]),
                              ckpt.get("quantization_recipe"), history=list(ckpt.get("history", [])))
    if _is_state_dict(ckpt):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict) or not any(ckpt.get(k) is not None for k in ("ema", "model")):
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {source}: not a YOLOv5 checkpoint (expected "
                            "a dict with 'model' or 'ema', as YOLOv5's train.py or SparseML save it, or a "
                            "Kontinual model.pt)")
    weights = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt["model"]
    recipe = ckpt.get("checkpoint_recipe") or ckpt.get("recipe")
    recipe = recipe if isinstance(recipe, str) and "QuantizationModifier" in recipe else None
    epoch = ckpt.get("epoch", -1)
    structure_epoch = float(epoch) if isinstance(epoch, (int, float)) and epoch >= 0 else float("inf")
    cfg: Any
    state: dict[str, torch.Tensor]
    if isinstance(weights, torch.nn.Module):
        cfg = getattr(weights, "yaml", None)
        state = weights.float().state_dict()
        names = _names(getattr(weights, "names", None))
    elif _is_state_dict(weights):
        cfg, names = ckpt.get("yaml"), _names(ckpt.get("names"))
        state = weights  # type: ignore[assignment]  # _is_state_dict checked it
        if cfg is None:
            cfg = _guess_config(state, source)
    else:
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {source}: its 'model' is a "
                            f"{type(weights).__name__}, expected a YOLOv5 model or its state dict")
    if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {source}: the checkpoint carries no YOLOv5 "
                            "model config (its model's .yaml or a 'yaml' entry)")
    return BaseCheckpoint("yolov5", source, dict(cfg), _float_state(state), names, recipe, structure_epoch)


def head_classes(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> int | None:
    """Classes of a YOLOv5 Detect head, from its output convs (anchors x (5 + nc) channels)."""
    anchors = cfg.get("anchors")
    na = len(anchors[0]) // 2 if isinstance(anchors, list) and anchors and isinstance(anchors[0], list) else 3
    heads = sorted(k for k in state if ".m.0.weight" in k and state[k].ndim == 4)
    if not heads:
        return None
    return int(state[heads[-1]].shape[0]) // na - 5


def _guess_config(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """A bare state dict names no architecture: find the packaged yolov5 config whose shapes it fits."""
    import yaml
    import yolov5
    from yolov5.models.yolo import Model

    for name in ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x"):
        cfg = yaml.safe_load((Path(yolov5.__file__).parent / "models" / f"{name}.yaml").read_text())
        nc = head_classes(state, cfg)
        if nc is None or nc < 1:
            break
        cfg["nc"] = nc
        own = Model(cfg, ch=3, nc=nc).state_dict()
        if own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own):
            _LOG.info("base weights: a bare state dict; its shapes are %s.yaml's with %d classes", name, nc)
            return cfg
    raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {source}: a bare state dict that fits none of "
                        "yolov5n/s/m/l/x; save it with its config (a checkpoint with 'yaml', or the pickled model)")
