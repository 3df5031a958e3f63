"""The trainer's pictures drawn from synthetic images and boxes: valid PNGs a person can open, of the
expected layout, and a failure to draw never fails the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kontinual.trainer.pictures import (CELL, CURVES, PR_CURVE, PREDICTIONS, Evidence, draw_curves,
                                        draw_predictions, draw_pr_curve, write_pictures)

NAMES = ["ball", "goalkeeper", "player", "referee"]


def evidence(seed: int, images: int = 3) -> Evidence:
    """What an evaluation pass keeps: letterboxed 96 px images with detections, plus tp/conf/class stats."""
    rng = np.random.default_rng(seed)
    seen = Evidence()
    for i in range(images):
        pixels = rng.integers(0, 255, (3, 96, 96), dtype=np.uint8)
        pred = np.array([[10, 10, 40, 50, 0.9, 2], [50, 20, 90, 90, 0.6, 0], [5, 5, 8, 8, 0.01, 1]], dtype=np.float32)
        seen.keep(f"img{i}.jpg", pixels, pred)
    n = 60
    conf = rng.random(n).astype(np.float32)
    tp = (rng.random((n, 10)) < conf[:, None]).astype(bool)
    seen.stats = (tp, conf, rng.integers(0, 4, n).astype(np.float32), rng.integers(0, 4, 40).astype(np.float32))
    return seen


def opened(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        return image.size


def test_evidence_keeps_the_first_images_and_only_confident_boxes() -> None:
    seen = evidence(0, images=6)
    assert [s.name for s in seen.samples] == ["img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"]
    assert seen.samples[0].image.shape == (96, 96, 3)
    assert seen.samples[0].boxes[:, 4].tolist() == pytest.approx([0.9, 0.6])  # 0.01 is mAP's, not shown


def test_grid_has_a_baseline_and_a_candidate_column(tmp_path: Path) -> None:
    path = tmp_path / PREDICTIONS
    draw_predictions(path, evidence(1).samples, NAMES, candidate_title="v2 (candidate)",
                     baseline=evidence(2).samples, baseline_title="v1 (serving)")
    width, height = opened(path)
    assert 2 * CELL < width < 3 * CELL and 3 * CELL < height < 4 * CELL  # 2 columns, 3 rows
    with Image.open(path) as grid:
        pixels = np.asarray(grid.convert("RGB"))
    # The boxes are drawn in their class colours (ball red, player green) on both sides.
    left, right = pixels[:, :width // 2], pixels[:, width // 2:]
    for side in (left, right):
        assert ((side == (255, 56, 56)).all(-1)).sum() > 100
        assert ((side == (60, 200, 90)).all(-1)).sum() > 100


def test_grid_without_baseline_is_one_column_with_a_caption(tmp_path: Path) -> None:
    path = tmp_path / PREDICTIONS
    draw_predictions(path, evidence(1).samples, NAMES, candidate_title="v1 (candidate)",
                     caption="No baseline column: the seed model predicts 80 classes")
    width, height = opened(path)
    assert CELL < width < 2 * CELL and height > 3 * CELL + 40
    with Image.open(path) as grid:
        footer = np.asarray(grid.convert("RGB"))[-40:]
    assert ((footer == (120, 0, 0)).all(-1)).any()  # the caption's text colour


def test_pr_curve_and_loss_curves_are_pngs(tmp_path: Path) -> None:
    draw_pr_curve(tmp_path / PR_CURVE, evidence(3).stats or (), NAMES, "v1 on the test split")
    assert opened(tmp_path / PR_CURVE) == (640, 480)
    draw_curves(tmp_path / CURVES, [3.2, 2.5, 2.1], "v1 training")
    assert opened(tmp_path / CURVES) == (640, 400)
    draw_curves(tmp_path / "with-map.png", [3.2, 2.5], "v1 training", maps=[0.1, 0.3])
    assert opened(tmp_path / "with-map.png") == (640, 400)


def test_write_pictures_names_the_missing_baseline_and_survives_a_failure(tmp_path: Path) -> None:
    seen = evidence(4)
    seen.stats = None  # e.g. a split without labels: no PR curve, the other pictures still come
    result = write_pictures(tmp_path, names=NAMES, version=1, candidate=seen, baseline=None,
                            baseline_result={"version": 0, "reason": "ClassesDiffer",
                                             "error": "the seed model predicts 80 classes"},
                            losses=[2.0, 1.5], split="test")
    assert result["written"] == [PREDICTIONS, CURVES]
    assert list(result["failed"]) == [PR_CURVE] and "statistics" in result["failed"][PR_CURVE]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURVES, PREDICTIONS]
    assert CELL < opened(tmp_path / PREDICTIONS)[0] < 2 * CELL


def test_write_pictures_with_an_evaluated_baseline_draws_two_columns(tmp_path: Path) -> None:
    result = write_pictures(tmp_path, names=NAMES, version=2, candidate=evidence(5), baseline=evidence(6),
                            baseline_result={"version": 1, "metrics": {"mAP50": 0.3, "mAP50_95": 0.1}},
                            losses=[2.0], split="valid")
    assert result == {"written": [PREDICTIONS, PR_CURVE, CURVES], "failed": {}}
    assert opened(tmp_path / PREDICTIONS)[0] > 2 * CELL


def test_an_image_without_confident_detections_says_so(tmp_path: Path) -> None:
    seen = Evidence()
    seen.keep("empty.jpg", np.full((3, 96, 96), 90, dtype=np.uint8),
              np.array([[5, 5, 30, 30, 0.07, 1]], dtype=np.float32))
    assert len(seen.samples[0].boxes) == 0 and seen.samples[0].best == pytest.approx((0.07, 1))
    draw_predictions(tmp_path / PREDICTIONS, seen.samples, NAMES, candidate_title="v1 (candidate)")
    with Image.open(tmp_path / PREDICTIONS) as grid:
        cell = np.asarray(grid.convert("RGB"))[28:28 + CELL, 6:6 + CELL]
    # The note's black band at the cell's bottom, white text on it; the rest is the image's grey.
    assert (cell[-10:] == 0).all(-1).mean() > 0.3 and (cell[-22:] == 255).all(-1).any()
    assert (cell[:CELL // 2] == 90).all(-1).mean() > 0.99
