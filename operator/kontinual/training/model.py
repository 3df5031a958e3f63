"""Building the YOLOv5 model from a config or a previous run's model.pt, and saving model.pt."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kontinual.training import compat
from kontinual.training.errors import BASE_WEIGHTS_INVALID, TrainingError

_LOG = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "kontinual-yolov5/1"
MODEL_CONFIGS = ("yolov5n.yaml", "yolov5s.yaml", "yolov5m.yaml", "yolov5l.yaml", "yolov5x.yaml")


@dataclass
class LoadedModel:
    """A model ready to train plus what its checkpoint said about it."""

    model: torch.nn.Module
    routing: list[tuple[Any, ...]]
    source: str  # "config" or "checkpoint"
    quantization_recipe: str | None = None  # recipe that made the base quantized (QAT), if any
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier runs of this lineage


def _config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    import yolov5

    packaged = Path(yolov5.__file__).parent / "models" / path.name
    if path.name == name and packaged.is_file():
        return packaged
    raise TrainingError(
        BASE_WEIGHTS_INVALID,
        f"--base-weights {name!r}: no such file, and not a yolov5 model config name "
        f"(one of {', '.join(MODEL_CONFIGS)}); expected a config name or path (*.yaml) or a model.pt "
        "written by an earlier `kontinual train` run",
    )


def _build(cfg: Any, nc: int, names: list[str]) -> torch.nn.Module:
    from yolov5.models.yolo import Model

    model = Model(cfg, ch=3, nc=nc)
    model.names = list(names)
    model.nc = nc
    return model


def load_base(base_weights: str, names: list[str]) -> LoadedModel:
    """The model to train: random init from a yolov5 config, or a previous run's model.pt."""
    nc = len(names)
    if base_weights.endswith((".yaml", ".yml")):
        import yaml

        path = _config_path(base_weights)
        try:
            cfg = yaml.safe_load(path.read_text())
            model = _build(cfg, nc, names)
        except Exception as exc:  # noqa: BLE001 - any config error is the user's input
            raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {base_weights}: not a valid "
                                f"yolov5 model config: {type(exc).__name__}: {exc}") from exc
        _LOG.info("base model: %s (random init), %d classes", path.name, nc)
        return LoadedModel(model, compat.record_routing(model), "config")
    return _load_checkpoint(Path(base_weights), names)


def _load_checkpoint(path: Path, names: list[str]) -> LoadedModel:
    if not path.is_file():
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {path}: no such file (expected a "
                            "model.pt of an earlier run or a yolov5 model config *.yaml)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {path}: cannot be read as a "
                            f"Kontinual model.pt: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {path}: not a Kontinual model.pt "
                            f"(format {CHECKPOINT_FORMAT}); pass a model.pt written by `kontinual train` "
                            "or a yolov5 model config such as yolov5s.yaml")
    if list(ckpt["names"]) != list(names):
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {path} was trained for classes "
                            f"{list(ckpt['names'])}, but the dataset has {list(names)}; start from a "
                            "model config (e.g. yolov5s.yaml) when the classes change")
    model = _build(ckpt["yaml"], len(names), names)
    routing = compat.record_routing(model)
    qrecipe = ckpt.get("quantization_recipe")
    try:
        if qrecipe:
            # Recreate the QAT structure the weights were trained in, then load them.
            from kontinual.training.recipes import sparseml_loggers, structure_manager

            structure_manager(qrecipe).apply_structure(model, epoch=float("inf"), loggers=sparseml_loggers())
            compat.restore_routing(model, routing)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {path}: its weights do not fit its "
                            f"model: {type(exc).__name__}: {exc}") from exc
    _LOG.info("base model: %s (continuing; %s, %d earlier run(s))", path,
              "quantized" if qrecipe else "float", len(ckpt.get("history", [])))
    return LoadedModel(model, routing, "checkpoint", qrecipe, list(ckpt.get("history", [])))


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether QAT (fake quantization) is active in the model."""
    return any(type(m).__name__ == "FakeQuantize" or hasattr(m, "weight_fake_quant") for m in model.modules())


def save_checkpoint(path: Path, model: torch.nn.Module, *, quantization_recipe: str | None,
                    history: list[dict[str, Any]]) -> None:
    """model.pt: the weights plus what the next run needs to rebuild the model (loadable with weights_only)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({
        "format": CHECKPOINT_FORMAT,
        "yaml": model.yaml,
        "names": list(model.names),
        "quantization_recipe": quantization_recipe,
        "history": history,
        "state_dict": state,
    }, path)


def conv_sparsity(model: torch.nn.Module) -> tuple[float, dict[str, float]]:
    """Overall and per-layer fraction of zero conv weights in the PyTorch model."""
    zeros = total = 0
    per_layer: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            weight = module.weight.detach()
            z = int((weight == 0).sum())
            zeros, total = zeros + z, total + weight.numel()
            per_layer[name] = round(z / weight.numel(), 4)
    return (zeros / total if total else 0.0), per_layer
