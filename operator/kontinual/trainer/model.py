"""Building the YOLOv5 model to train from its base (config or checkpoint), and saving model.pt."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch

from kontinual.trainer import compat
from kontinual.trainer.checkpoints import CHECKPOINT_FORMAT, BaseCheckpoint, head_classes, read_checkpoint
from kontinual.trainer.errors import BASE_WEIGHTS_INVALID, TrainingError
from kontinual.trainer.sources import BASE_WEIGHTS_FORMS, fetch_base_weights

_LOG = logging.getLogger(__name__)
MODEL_CONFIGS = ("yolov5n.yaml", "yolov5s.yaml", "yolov5m.yaml", "yolov5l.yaml", "yolov5x.yaml")


# A yolov5 DetectionModel: an nn.Module whose .model, .nc, .names, .stride and .yaml yolov5 sets at run
# time, so torch types every one of them as `Tensor | Module`.
YoloModel: TypeAlias = Any

@dataclass
class LoadedModel:
    """A model ready to train plus what its checkpoint said about it."""

    model: YoloModel
    routing: list[tuple[Any, ...]]
    source: str  # "config" or "checkpoint"
    quantization_recipe: str | None = None  # recipe that made the base quantized (QAT), if any
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier runs of this lineage


def _config_path(name: str) -> Path:
    path = Path(name[len("file://"):] if name.startswith("file://") else name)
    if path.is_file():
        return path
    import yolov5

    packaged = Path(yolov5.__file__).parent / "models" / path.name
    if path.name == name and packaged.is_file():
        return packaged
    raise TrainingError(
        BASE_WEIGHTS_INVALID,
        f"--base-weights {name!r}: no such file, and not a yolov5 model config name "
        f"(one of {', '.join(MODEL_CONFIGS)}); expected {BASE_WEIGHTS_FORMS}",
    )


def _build(cfg: Any, nc: int, names: list[str]) -> YoloModel:
    from yolov5.models.yolo import Model

    model = Model(cfg, ch=3, nc=nc)
    model.names = list(names)
    model.nc = nc
    return model


def read_base(base_weights: str, work: Path) -> BaseCheckpoint | dict[str, Any]:
    """Fetch and read --base-weights before the dataset download: a config (dict) or a checkpoint."""
    if base_weights.endswith((".yaml", ".yml")) and not base_weights.startswith(("zoo:", "http://", "https://")):
        import yaml

        path = _config_path(base_weights)
        try:
            cfg = yaml.safe_load(path.read_text())
            assert isinstance(cfg, dict) and "backbone" in cfg and "head" in cfg, "no backbone/head"
        except Exception as exc:  # noqa: BLE001 - any config error is the user's input
            raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {base_weights}: not a valid "
                                f"yolov5 model config: {type(exc).__name__}: {exc}") from exc
        cfg["_file"] = path.name
        return cfg
    return read_checkpoint(fetch_base_weights(base_weights, work), base_weights)


def build_model(base: BaseCheckpoint | dict[str, Any], names: list[str]) -> LoadedModel:
    """The model to train for the dataset's classes: random init from a config, our model.pt as it was,
    or a YOLOv5 checkpoint with everything that fits transferred and the detection head rebuilt."""
    nc = len(names)
    if isinstance(base, dict):
        cfg = {k: v for k, v in base.items() if k != "_file"}
        try:
            model = _build(cfg, nc, names)
        except Exception as exc:  # noqa: BLE001
            raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {base.get('_file')}: not a valid "
                                f"yolov5 model config: {type(exc).__name__}: {exc}") from exc
        _LOG.info("base model: %s (random init, asked for explicitly), %d classes", base.get("_file"), nc)
        return LoadedModel(model, compat.record_routing(model), "config")
    if base.kind == "kontinual" and base.names != list(names):
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {base.source} was trained for classes "
                            f"{base.names}, but the dataset has {list(names)}; start from a pretrained "
                            "checkpoint (zoo:<stub> or a YOLOv5 *.pt) when the classes change")
    try:
        model = _build(base.cfg, nc, names)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {base.source}: its model config does not "
                            f"build: {type(exc).__name__}: {exc}") from exc
    routing = compat.record_routing(model)
    qrecipe = base.quantization_recipe
    try:
        if qrecipe:
            # Recreate the QAT structure the weights were trained in, then load them.
            from kontinual.trainer.recipes import sparseml_loggers, structure_manager

            structure_manager(qrecipe).apply_structure(model, epoch=base.structure_epoch, loggers=sparseml_loggers())
            compat.restore_routing(model, routing)
        if base.kind == "kontinual":
            model.load_state_dict(base.state_dict, strict=True)
        else:
            _transfer(model, base, names)
    except TrainingError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {base.source}: its weights do not fit its "
                            f"model: {type(exc).__name__}: {exc}") from exc
    if base.kind == "kontinual":
        _LOG.info("base model: %s (continuing; %s, %d earlier run(s))", base.source,
                  "quantized" if qrecipe else "float", len(base.history))
    return LoadedModel(model, routing, "checkpoint", qrecipe, list(base.history))


def _transfer(model: torch.nn.Module, base: BaseCheckpoint, names: list[str]) -> None:
    """Load every tensor whose name and shape fit (yolov5's intersect_dicts); log what was left out."""
    own = model.state_dict()
    fits = {k: v for k, v in base.state_dict.items() if k in own and own[k].shape == v.shape}
    if len(fits) < 0.5 * len(own):
        raise TrainingError(BASE_WEIGHTS_INVALID, f"--base-weights {base.source}: only {len(fits)} of "
                            f"{len(own)} tensors fit the model its own config builds; not a YOLOv5 checkpoint "
                            "of this architecture")
    model.load_state_dict(fits, strict=False)
    skipped = sorted(set(own) - set(fits))
    base_nc = head_classes(base.state_dict, base.cfg)
    head = (f"detection head rebuilt for {len(names)} classes (the checkpoint had {base_nc})"
            if base_nc != len(names) else f"same {len(names)} classes, head kept")
    _LOG.info("base model: %s (YOLOv5 checkpoint%s): transferred %d of %d tensors; %s; not transferred: %s",
              base.source, ", quantized" if base.quantization_recipe else "", len(fits), len(own), head,
              ", ".join(skipped[:12]) + (f" and {len(skipped) - 12} more" if len(skipped) > 12 else "")
              if skipped else "none")


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether QAT (fake quantization) is active in the model."""
    return any(type(m).__name__ == "FakeQuantize" or hasattr(m, "weight_fake_quant") for m in model.modules())


def save_checkpoint(path: Path, model: YoloModel, *, quantization_recipe: str | None,
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
