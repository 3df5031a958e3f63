"""The pictures a person looks at next to metrics.json: predictions grid, precision-recall curve, loss curve."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

_LOG = logging.getLogger(__name__)
PREDICTIONS = "predictions.png"
PR_CURVE = "pr_curve.png"
CURVES = "curves.png"
PICTURES = (PREDICTIONS, PR_CURVE, CURVES)
SHOWN_CONFIDENCE = 0.25  # detections drawn in the grid (yolov5 detect.py's default), not the 0.001 of mAP
GRID_IMAGES = 4
CELL = 320  # px, each image in the grid is scaled to fit CELL x CELL
_COLORS = [(255, 56, 56), (72, 156, 255), (60, 200, 90), (255, 178, 29), (207, 80, 255), (0, 212, 187),
           (255, 112, 31), (146, 204, 23), (132, 56, 255), (255, 55, 199)]


@dataclass
class Sample:
    """One test image as the model saw it (letterboxed, HWC RGB uint8) and its detections (x1 y1 x2 y2 conf cls)."""

    name: str
    image: np.ndarray
    boxes: np.ndarray
    best: tuple[float, int] | None = None  # the most confident detection (conf, class), shown or not


@dataclass
class Evidence:
    """What one evaluation pass leaves for the pictures: the first images with detections, and the
    per-detection statistics yolov5's ap_per_class reads (tp, conf, predicted class, target class)."""

    limit: int = GRID_IMAGES
    samples: list[Sample] = field(default_factory=list)
    stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def keep(self, name: str, image_chw: np.ndarray, pred: np.ndarray) -> None:
        if len(self.samples) < self.limit:
            shown = pred[pred[:, 4] >= SHOWN_CONFIDENCE] if len(pred) else pred.reshape(0, 6)
            top = pred[int(np.argmax(pred[:, 4]))] if len(pred) else None
            best = (float(top[4]), int(top[5])) if top is not None else None
            self.samples.append(Sample(name, np.ascontiguousarray(image_chw.transpose(1, 2, 0)), shown, best))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _annotated(sample: Sample, names: Sequence[str]) -> Any:
    """The sample scaled to CELL x CELL with its boxes and 'name conf' labels."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(sample.image).convert("RGB")
    scale = CELL / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw, font = ImageDraw.Draw(image), _font(12)
    for x1, y1, x2, y2, conf, cls in sample.boxes.tolist():
        color = _COLORS[int(cls) % len(_COLORS)]
        box = [x1 * scale, y1 * scale, x2 * scale, y2 * scale]
        draw.rectangle(box, outline=color, width=2)
        label = f"{names[int(cls)] if int(cls) < len(names) else int(cls)} {conf:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label, font=font)
        top_y = max(0.0, box[1] - (bottom - top) - 2)
        draw.rectangle([box[0], top_y, box[0] + right - left + 4, top_y + bottom - top + 2], fill=color)
        draw.text((box[0] + 2, top_y), label, fill=(255, 255, 255), font=font)
    if not len(sample.boxes):
        # An empty cell must not read as "nothing there": say the model found nothing confident enough.
        best = "" if sample.best is None else \
            f" (best: {names[sample.best[1]] if sample.best[1] < len(names) else sample.best[1]} {sample.best[0]:.2f})"
        note = f"no detection >= {SHOWN_CONFIDENCE}{best}"
        left, top, right, bottom = draw.textbbox((4, image.height - 20), note, font=font)
        draw.rectangle([0, top - 3, right + 4, image.height], fill=(0, 0, 0))
        draw.text((4, image.height - 20), note, fill=(255, 255, 255), font=font)
    return image


def draw_predictions(path: Path, candidate: Sequence[Sample], names: Sequence[str], *, candidate_title: str,
                     baseline: Sequence[Sample] | None = None, baseline_title: str = "",
                     caption: str = "") -> None:
    """Rows of test images, the baseline's detections on the left and the candidate's on the right (or the
    candidate alone, with a caption saying why there is no baseline column)."""
    from PIL import Image, ImageDraw

    columns: list[tuple[str, Sequence[Sample]]] = ([(baseline_title, baseline)] if baseline is not None else []) \
        + [(candidate_title, candidate)]
    rows = min(len(samples) for _title, samples in columns)
    if rows == 0:
        raise ValueError("no test images to show")
    header, gap, footer = 28, 6, (44 if caption else 0)
    width = len(columns) * CELL + (len(columns) + 1) * gap
    height = header + rows * (CELL + gap) + gap + footer
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for col, (title, samples) in enumerate(columns):
        x = gap + col * (CELL + gap)
        draw.text((x + 4, 6), title, fill=(0, 0, 0), font=_font(15))
        for row, sample in enumerate(samples[:rows]):
            grid.paste(_annotated(sample, names), (x, header + row * (CELL + gap)))
    if caption:
        draw.text((gap + 4, height - footer + 6), _wrap(caption, width // 7), fill=(120, 0, 0), font=_font(12))
    grid.save(path, format="PNG", optimize=True)


def _wrap(text: str, columns: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, max(20, columns))[:2])


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100, tight_layout=True)
    FigureCanvasAgg(figure)  # the Agg canvas, never a display, whatever the default backend
    return figure


def draw_pr_curve(path: Path, stats: tuple[np.ndarray, ...], names: Sequence[str], title: str) -> None:
    """Precision against recall at IoU 0.5 per class and for all classes, from the evaluation's statistics."""
    tp, conf, pred_cls, target_cls = stats
    order = np.argsort(-conf)
    tp, pred_cls = tp[order], pred_cls[order]
    figure = _figure((6.4, 4.8))
    axes = figure.add_subplot()
    px, curves, aps = np.linspace(0, 1, 1000), [], []
    for cls in np.unique(target_cls).astype(int):
        mine, labels = pred_cls == cls, int((target_cls == cls).sum())
        if not mine.any():
            continue
        tpc = tp[mine, 0].cumsum()
        recall, precision = tpc / labels, tpc / np.arange(1, len(tpc) + 1)
        ap, mpre, mrec = _average_precision(recall, precision)
        curve = np.interp(px, mrec, mpre)
        curves.append(curve)
        aps.append(ap)
        name = names[cls] if cls < len(names) else str(cls)
        axes.plot(px, curve, linewidth=1, label=f"{name} {ap:.3f}")
    if curves:
        axes.plot(px, np.mean(curves, axis=0), linewidth=3, color="blue",
                  label=f"all classes {np.mean(aps):.3f} mAP@0.5")
    else:
        axes.text(0.5, 0.5, "no detection matched a label", ha="center", va="center")
    axes.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.legend(loc="lower left", fontsize=8)
    figure.savefig(path)


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """yolov5's compute_ap (COCO's 101-point interpolation of the precision envelope), numpy only: the
    same AP as metrics.json's mAP50 per class, without importing torch to draw a picture."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision, [0.0])))))
    x = np.linspace(0, 1, 101)
    return float(np.trapz(np.interp(x, mrec, mpre), x)), mpre, mrec


def draw_curves(path: Path, losses: Sequence[float], title: str, maps: Sequence[float] | None = None) -> None:
    """Training loss per epoch, with the mAP per epoch beside it when one was measured."""
    if not losses:
        raise ValueError("no epoch losses to plot")
    figure = _figure((6.4, 4.0))
    axes = figure.add_subplot()
    epochs = np.arange(1, len(losses) + 1)
    axes.plot(epochs, losses, marker="o", color="tab:red", label="train loss (box + obj + cls)")
    axes.set(xlabel="epoch", ylabel="loss", title=title)
    axes.set_xticks(epochs)
    if maps:
        other = axes.twinx()
        other.plot(epochs[:len(maps)], maps, marker="s", color="tab:blue", label="mAP@0.5")
        other.set(ylabel="mAP@0.5", ylim=(0, 1))
    else:
        # Measuring mAP each epoch would cost an evaluation per epoch: only the exported model is evaluated.
        axes.text(0.98, 0.95, "mAP per epoch not measured:\nthe final model's mAP is in metrics.json",
                  transform=axes.transAxes, ha="right", va="top", fontsize=8, color="dimgray")
    axes.legend(loc="lower left", fontsize=8)
    figure.savefig(path)


def write_pictures(folder: Path, *, names: Sequence[str], version: int, candidate: Evidence,
                   baseline: Evidence | None, baseline_result: dict[str, Any], losses: Sequence[float],
                   split: str) -> dict[str, Any]:
    """Every picture it can draw into folder; {"written": [...], "failed": {file: why}}. Never raises:
    a picture that cannot be drawn is a warning, never a failed run."""
    who = "the seed model" if baseline_result.get("version") == 0 else f"v{baseline_result.get('version')}"
    caption = ""
    base_samples = baseline.samples if baseline is not None and "metrics" in baseline_result else None
    if base_samples is None:
        caption = (f"No baseline column: {baseline_result['error']}" if baseline_result.get("error")
                   else "No baseline column: no serving model was given to this run.")
    jobs: dict[str, Callable[[Path], None]] = {
        PREDICTIONS: lambda p: draw_predictions(
            p, candidate.samples, names, candidate_title=f"v{version} (candidate)", baseline=base_samples,
            baseline_title=f"{who} (serving)", caption=caption),
        PR_CURVE: lambda p: draw_pr_curve(p, _stats(candidate), names, f"v{version} on the {split} split"),
        CURVES: lambda p: draw_curves(p, losses, f"v{version} training"),
    }
    written: list[str] = []
    failed: dict[str, str] = {}
    for name, draw in jobs.items():
        try:
            draw(folder / name)
            written.append(name)
        except Exception as exc:  # noqa: BLE001 - a picture is never worth a failed run
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
            _LOG.warning("picture %s not drawn: %s", name, failed[name])
            (folder / name).unlink(missing_ok=True)
    return {"written": written, "failed": failed}


def _stats(evidence: Evidence) -> tuple[np.ndarray, ...]:
    if evidence.stats is None:
        raise ValueError("the evaluation left no statistics (no labels in the split)")
    return evidence.stats
