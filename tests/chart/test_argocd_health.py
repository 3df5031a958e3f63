"""The documented Argo CD health check (docs/argocd-health.lua) maps real ContinualModel status right.

Runs the script in Lua 5.1 (the dialect Argo CD's gopher-lua speaks) through `lupa`, on statuses
built with the operator's own condition code (kontinual.controller.status), not hand-written copies.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from kontinual.controller.status import AVAILABLE, DEGRADED, RECONCILED, Condition, merge_conditions, roll_up
from tests.chart.render import ROOT

lupa = pytest.importorskip("lupa", reason="lupa (Lua in Python) is not installed; see requirements/test.txt")
SCRIPT = (ROOT / "docs" / "argocd-health.lua").read_text()
NOW = "2026-11-27T00:00:00Z"


def health(obj: dict[str, Any]) -> dict[str, str]:
    from lupa import lua51

    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(SCRIPT)
    return {key: result[key] for key in ("status", "message")}


def model(conditions: list[Condition] | None, generation: int = 3, observed: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
                           "metadata": {"name": "demo", "namespace": "default", "generation": generation}}
    if conditions is not None:
        everything = [roll_up(conditions), *conditions]
        obj["status"] = {"observedGeneration": observed,
                         "conditions": merge_conditions(everything, None, observed, NOW)}
    return obj


RECONCILED_OK = Condition(RECONCILED, True, "ChildrenApplied", "children match the spec")
AVAILABLE_OK = Condition(AVAILABLE, True, "RolledOut", "1 of 1 pods ready")


def test_ready_and_observed_is_healthy() -> None:
    assert health(model([RECONCILED_OK, AVAILABLE_OK])) == {"status": "Healthy", "message": "Serving: 1 of 1 pods ready"}


def test_no_status_yet_is_progressing() -> None:
    assert health(model(None))["status"] == "Progressing"


def test_spec_not_yet_observed_is_progressing_even_if_ready() -> None:
    result = health(model([RECONCILED_OK, AVAILABLE_OK], generation=4, observed=3))
    assert result == {"status": "Progressing", "message": "Waiting for the operator to observe generation 4"}


def test_rollout_in_progress_is_progressing() -> None:
    rolling = Condition(AVAILABLE, False, "RolloutInProgress", "0 of 1 pods run the wanted model")
    assert health(model([RECONCILED_OK, rolling]))["status"] == "Progressing"


def test_invalid_spec_is_degraded() -> None:
    invalid = Condition(RECONCILED, False, "InvalidSpec", "spec.training.epochs must be >= 1")
    assert health(model([invalid])) == {"status": "Degraded",
                                        "message": "InvalidSpec: spec.training.epochs must be >= 1"}


def test_stalled_rollout_is_degraded() -> None:
    stalled = Condition(AVAILABLE, False, "ProgressDeadlineExceeded", "rollout stalled")
    assert health(model([RECONCILED_OK, stalled]))["status"] == "Degraded"


def test_failed_training_is_degraded_while_the_old_model_serves() -> None:
    failed = Condition(DEGRADED, True, "TrainingFailed", "soccer-train-3: DatasetEmpty")
    assert health(model([RECONCILED_OK, AVAILABLE_OK, failed])) == {
        "status": "Degraded", "message": "TrainingFailed: soccer-train-3: DatasetEmpty"}


def test_scaled_to_zero_is_suspended() -> None:
    zero = Condition(AVAILABLE, False, "ScaledToZero", "spec.serving.replicas is 0")
    assert health(model([RECONCILED_OK, zero]))["status"] == "Suspended"


def test_every_reason_the_script_names_is_one_the_operator_emits() -> None:
    named = set(re.findall(r"\b([A-Z][a-zA-Z]+) = true", SCRIPT)) | set(re.findall(r'reason == "(\w+)"', SCRIPT))
    assert named == {"InvalidSpec", "ApplyFailed", "ProgressDeadlineExceeded", "ScaledToZero"}
    source = "\n".join(p.read_text() for p in (ROOT / "operator" / "kontinual").rglob("*.py"))
    for reason in named:
        assert f'"{reason}"' in source, f"the operator never sets reason {reason}; the health check is stale"
