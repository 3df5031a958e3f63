"""Two real runs of the loop judged by the operator's gate: the gate compares models on the same exam.

Run 1 (from an 80-class checkpoint, on version 1) is promoted over the COCO seed only because it
passes the floor; run 2, on a version 2 that Roboflow generated from harder new labels, is promoted
over v1 because it beats v1 on version 2's test split, although its number is lower than v1's old
one - comparing with that old number would have rejected a better model (tests/support/loop_runs.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kontinual.controller import decisions
from tests.support.loop_runs import two_runs


@pytest.mark.slow
def test_the_gate_promotes_over_the_seed_by_the_floor_then_over_v1_on_the_same_harder_split(
        tmp_path: Path, tiny_model_config: Path) -> None:
    loop = two_runs(tmp_path, tiny_model_config)
    gate = loop.spec.rollout.gate
    first, second = loop.runs
    figures = loop.figures()
    assert gate.metric == "mAP50" and gate.min_value > 0, figures  # examples/soccer.yaml's gate

    # Run 1: the COCO seed cannot be evaluated on the project's 4 classes, so the floor decides.
    one = first.result
    assert one.datasetVersion == "1" and one.datasetGenerated is False, figures
    assert one.baseline is not None and one.baseline.get("version") == 0, figures
    assert one.baseline.get("reason") == decisions.BASELINE_CLASSES_DIFFER, figures
    assert "metrics" not in one.baseline and "80 classes" in one.baseline.get("error", ""), figures
    assert first.verdict.promoted and first.verdict.reason == "FloorPassed", figures
    assert "the floor is the gate" in first.verdict.message, figures
    assert one.metrics["mAP50"] >= gate.min_value, figures
    # Its epoch log lines show the rate it trained at: the recipe's (linear 0.1 -> 0.002), not the
    # trainer's default schedule (0.01 -> 0.0001) that the recipe overrides at every step.
    rates = [float(rate) for rate in re.findall(r"epoch \d+/\d+ loss .* lr ([0-9.]+) time", first.log)]
    assert len(rates) == loop.spec.training.epochs and rates[0] > 0.09 and 0.002 <= rates[-1] < 0.01, rates

    # Run 2: new labels were generated into version 2; v1 was evaluated on its test split, same images.
    two = second.result
    assert loop.generate_requests == 1, figures
    assert two.datasetVersion == "2" and two.datasetGenerated is True, figures
    assert two.images["train"] > one.images["train"], figures  # the new labels are in it
    assert two.evaluatedOn == {"split": "test", "images": two.images["test"], "datasetVersion": "2",
                               "file": "v2/model.onnx", "runtime": "deepsparse"}, figures  # the file the example serves
    assert two.baseline is not None and two.baseline.get("version") == 1, figures
    candidate, baseline = two.metrics["mAP50"], two.baseline["metrics"]["mAP50"]
    assert candidate > baseline + gate.min_delta, figures
    assert second.verdict.promoted and second.verdict.reason == "GatePassed", figures
    assert f"of v1 on dataset 2 test, {two.images['test']} images" in second.verdict.message, figures
    # The point: on the harder exam the better model's number is lower than v1's old one (run 1's),
    # so a gate comparing with the old number would have rejected it.
    assert candidate < one.metrics["mAP50"], figures
