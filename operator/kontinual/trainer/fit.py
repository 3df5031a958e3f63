"""The training loop: yolov5 data, loss and optimizer, with a SparseML recipe applied; plain progress logs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kontinual.trainer import compat
from kontinual.trainer.errors import TRAINING_FAILED, TrainingError
from kontinual.trainer.model import LoadedModel, YoloModel, conv_sparsity, is_quantized
from kontinual.trainer.recipes import Recipe, sparseml_loggers, structure_manager

_LOG = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0  # log a line inside long epochs at most this often


@dataclass
class TrainSettings:
    image_size: int
    batch_size: int
    epochs: int
    workers: int
    device: torch.device
    seed: int = 0


def _hyperparameters(model: YoloModel, nc: int, image_size: int) -> dict[str, Any]:
    """yolov5's fine-tuning defaults (hyp.scratch-low), scaled to layers, classes and image size like train.py."""
    import yaml
    import yolov5

    hyp = yaml.safe_load((Path(yolov5.__file__).parent / "data/hyps/hyp.scratch-low.yaml").read_text())
    nl = model.model[-1].nl
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (image_size / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = 0.0
    return hyp


def make_loader(images: Path, settings: TrainSettings, stride: int, hyp: dict[str, Any], *,
                train: bool, batch_size: int | None = None) -> tuple[Any, Any]:
    from yolov5.utils.dataloaders import create_dataloader

    return create_dataloader(
        str(images), settings.image_size, batch_size or settings.batch_size, stride,
        hyp=hyp, augment=train, rect=False, workers=settings.workers, shuffle=train,
        pad=0.0 if train else 0.5, prefix="train: " if train else "eval: ", seed=settings.seed,
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def train(loaded: LoadedModel, recipe: Recipe, train_images: Path, settings: TrainSettings) -> dict[str, Any]:
    """Train in place; returns timings and the final loss. Raises TrainingError(TrainingFailed)."""
    from yolov5.utils.general import init_seeds
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import smart_optimizer

    model: YoloModel = loaded.model
    device = settings.device
    init_seeds(settings.seed)
    nc = int(model.nc)
    hyp = _hyperparameters(model, nc, settings.image_size)
    stride = max(int(model.stride.max()), 32)
    loader, dataset = make_loader(train_images, settings, stride, hyp, train=True)
    steps_per_epoch = len(loader)
    model.to(device).train()
    model.hyp, model.gr = hyp, 1.0
    compute_loss = ComputeLoss(model)
    optimizer = smart_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    lrf = hyp["lrf"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: (1 - e / settings.epochs) * (1.0 - lrf) + lrf)
    try:
        optimizer = recipe.manager.modify(model, optimizer, steps_per_epoch=steps_per_epoch,
                                          loggers=sparseml_loggers())
    except Exception as exc:  # noqa: BLE001 - the recipe does not fit this model
        raise TrainingError("RecipeInvalid", f"recipe {recipe.source} cannot be applied to the model: "
                            f"{type(exc).__name__}: {exc}") from exc
    compat.restore_routing(model, loaded.routing)
    _LOG.info("training: %d images, %d steps/epoch, batch %d, %d px, %d epochs on %s",
              len(dataset), steps_per_epoch, settings.batch_size, settings.image_size, settings.epochs, device)
    started = time.monotonic()
    epoch_losses: list[float] = []
    qat_steps = 0
    for epoch in range(settings.epochs):
        epoch_started = last_log = time.monotonic()
        model.train()
        mean = torch.zeros(3)
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained at: a recipe's if it sets one
        for step, (images, targets, _paths, _shapes) in enumerate(loader):
            images = images.to(device, non_blocking=True).float() / 255
            qat_steps += is_quantized(model)
            try:
                predictions = model(images)
                loss, items = compute_loss(predictions, targets.to(device))
                if not torch.isfinite(loss):
                    raise TrainingError(TRAINING_FAILED, f"the loss became {float(loss)} in epoch {epoch + 1} "
                                        f"step {step + 1}; try a lower learning rate or check the labels")
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]
            except TrainingError:
                raise
            except torch.OutOfMemoryError as exc:
                raise TrainingError(TRAINING_FAILED, f"out of memory in epoch {epoch + 1}: lower "
                                    f"--batch-size (now {settings.batch_size}) or --image-size") from exc
            except Exception as exc:  # noqa: BLE001
                raise TrainingError(TRAINING_FAILED, f"training failed in epoch {epoch + 1} step "
                                    f"{step + 1}: {type(exc).__name__}: {exc}") from exc
            compat.restore_routing(model, loaded.routing)  # QAT may have just wrapped layers
            mean = (mean * step + items.detach().cpu()) / (step + 1)
            if time.monotonic() - last_log > PROGRESS_EVERY_S and step + 1 < steps_per_epoch:
                last_log = time.monotonic()
                _LOG.info("epoch %d/%d step %d/%d loss %.4f", epoch + 1, settings.epochs, step + 1,
                          steps_per_epoch, float(mean.sum()))
        scheduler.step()
        took = time.monotonic() - epoch_started
        elapsed = time.monotonic() - started
        eta = elapsed / (epoch + 1) * (settings.epochs - epoch - 1)
        sparsity, _ = conv_sparsity(model)
        epoch_losses.append(float(mean.sum()))
        _LOG.info("epoch %d/%d loss %.4f (box %.4f obj %.4f cls %.4f) sparsity %.3f lr %.5f time %s ETA %s",
                  epoch + 1, settings.epochs, float(mean.sum()), *[float(v) for v in mean], sparsity,
                  lr, _duration(took), _duration(eta))
    try:
        recipe.manager.finalize(model)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(TRAINING_FAILED, f"finalizing the recipe failed: {type(exc).__name__}: {exc}") from exc
    compat.restore_routing(model, loaded.routing)
    if recipe.quantizes and not is_quantized(model):
        # The schedule put QAT after the last step (few steps per epoch): quantize as the recipe asks.
        _LOG.warning("the recipe's quantization starts after the last training step (%d steps/epoch): "
                     "quantizing now from calibration only", steps_per_epoch)
        structure_manager(recipe.text).apply_structure(model, epoch=float("inf"), loggers=sparseml_loggers())
        compat.restore_routing(model, loaded.routing)
    if is_quantized(model) and qat_steps == 0:
        _calibrate(model, loader, device)
    model.to("cpu").eval()
    loss = epoch_losses[-1] if epoch_losses else math.nan
    return {"seconds": round(time.monotonic() - started, 1), "steps_per_epoch": steps_per_epoch,
            "qat_steps": qat_steps, "final_loss": round(loss, 5),
            "epoch_losses": [round(v, 5) for v in epoch_losses]}


def _calibrate(model: torch.nn.Module, loader: Any, device: torch.device, batches: int = 4) -> None:
    """QAT began at the very last step, so no forward pass saw it: its observers still hold their
    initial ranges (every weight would quantize to zero). Observe a few training batches instead."""
    _LOG.warning("quantization started after the last training step; calibrating its ranges on %d "
                 "batches (schedule the QuantizationModifier earlier to fine-tune in INT8)", batches)
    model.eval()
    with torch.no_grad():
        for step, (images, *_rest) in enumerate(loader):
            if step >= batches:
                break
            model(images.to(device).float() / 255)
