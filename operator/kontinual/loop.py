"""Pure decisions of the training loop: triggers, the next version, the gate, the model history.

Everything here takes the last recorded status and what was observed, and returns what to do;
the I/O lives in kontinual.training_loop. Status is the loop's only memory, so a restarted
operator decides exactly what the old one would have.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Mapping

from croniter import croniter

from kontinual.contract import TrainingResult
from kontinual.spec import Spec

TRAIN_REQUEST_ANNOTATION = "kontinual.io/train-request"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def iso(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def next_cron(schedule: str, after: datetime.datetime) -> datetime.datetime:
    value: datetime.datetime = croniter(schedule, after).get_next(datetime.datetime)
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


@dataclass(frozen=True)
class Triggers:
    """What asked for a run this time, and the trigger bookkeeping to store in status.training."""

    reasons: tuple[str, ...]
    fields: Mapping[str, Any]


def evaluate_triggers(spec: Spec, training: Mapping[str, Any], *, now: datetime.datetime,
                      train_request: str | None, labeled: int | None) -> Triggers:
    """Check schedule, labeled-image growth and the manual annotation against the last status.

    A schedule missed while the operator was down fires once (the next run is computed from now,
    not from the missed tick); `labeled` is the Roboflow annotated-image count if it was polled.
    """
    assert spec.training is not None
    trigger = spec.training.trigger
    reasons: list[str] = []
    fields: dict[str, Any] = {}
    if trigger.schedule:
        due = parse_iso(training.get("nextScheduledRun"))
        if training.get("schedule") != trigger.schedule or due is None:
            fields["nextScheduledRun"] = iso(next_cron(trigger.schedule, now))
        elif now >= due:
            reasons.append(f"schedule {trigger.schedule!r} was due at {iso(due)}")
            fields["nextScheduledRun"] = iso(next_cron(trigger.schedule, now))
        fields["schedule"] = trigger.schedule
    else:
        fields["schedule"] = None
        fields["nextScheduledRun"] = None
    if labeled is not None:
        fields["lastLabeledImages"] = labeled
        baseline = training.get("labeledImagesAtLastRun")
        if baseline is None:
            fields["labeledImagesAtLastRun"] = labeled  # the first poll sets the baseline
        elif trigger.min_new_labeled_images and labeled - int(baseline) >= trigger.min_new_labeled_images:
            reasons.append(f"{labeled - int(baseline)} new labeled images (threshold {trigger.min_new_labeled_images})")
    if train_request and train_request != training.get("lastTrainRequest"):
        reasons.append(f"annotation {TRAIN_REQUEST_ANNOTATION}={train_request}")
        fields["lastTrainRequest"] = train_request
    return Triggers(tuple(reasons), fields)


def next_version(models: list[Mapping[str, Any]], training: Mapping[str, Any], job_versions: list[int]) -> int:
    """The next run's version: above every version ever recorded or started (failed runs use one too)."""
    seen = [int(m.get("version") or 0) for m in models]
    seen.append(int((training.get("lastRun") or {}).get("version") or 0))
    seen += job_versions
    return max(seen + [0]) + 1


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str
    message: str


def judge(spec: Spec, result: TrainingResult, version: int, current: Mapping[str, Any] | None) -> Verdict:
    """The evaluation gate: a well-formed result whose metric beats the serving model's by minDelta."""
    if result.version != version or result.onnx != f"v{version}/model.onnx":
        return Verdict(False, "ResultMismatch",
                       f"the result describes version {result.version} at {result.onnx!r}, expected v{version}/model.onnx")
    if not result.sha256 or not SHA256_RE.match(result.sha256):
        return Verdict(False, "ChecksumMissing", "the result has no valid sha256 of model.onnx; it cannot be verified")
    gate = spec.rollout.gate
    value = (result.metrics or {}).get(gate.metric)
    if not isinstance(value, (int, float)):
        return Verdict(False, "MetricMissing", f"the result has no {gate.metric} to gate on")
    base = ((current or {}).get("metrics") or {}).get(gate.metric)
    if not isinstance(base, (int, float)):
        return Verdict(True, "FirstTrainedModel", f"{gate.metric} {value:.4f}; the serving model has no {gate.metric}")
    if value >= base + gate.min_delta:
        return Verdict(True, "GatePassed", f"{gate.metric} {value:.4f} >= {base:.4f} + {gate.min_delta}")
    return Verdict(False, "GateRejected", f"{gate.metric} {value:.4f} < {base:.4f} + {gate.min_delta} (serving model)")


def model_record(result: TrainingResult, job: str, finished_at: str, verdict: Verdict,
                 version: int | None = None) -> dict[str, Any]:
    """The status.models entry of a finished run (`version`: the Job's, whatever the result claims)."""
    return {
        "version": version if version is not None else result.version,
        "sha256": result.sha256,
        "metrics": dict(result.metrics or {}),
        "sparsity": result.sparsity,
        "datasetVersion": result.datasetVersion,
        "images": dict(result.images or {}),
        "trainedAt": finished_at,
        "job": job,
        "promoted": verdict.promoted,
        "reason": verdict.reason,
        "message": verdict.message,
    }


def serving_model(spec: Spec, models: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pinned version if stored, else the newest promoted (never rolled back) one, else None (seed)."""
    if spec.rollout.pinned_version is not None:
        pinned = next((m for m in models if m.get("version") == spec.rollout.pinned_version), None)
        if pinned is not None:
            return pinned
    promoted = [m for m in models if m.get("promoted") and not m.get("rolledBack")]
    return max(promoted, key=lambda m: int(m.get("version") or 0), default=None)


def prune_history(models: list[Mapping[str, Any]], limit: int, keep: int | None) -> list[dict[str, Any]]:
    """Newest first, at most `limit`, never dropping the serving version `keep`."""
    ordered = sorted((dict(m) for m in models), key=lambda m: int(m.get("version") or 0), reverse=True)
    kept = ordered[:limit]
    if keep is not None and all(m.get("version") != keep for m in kept):
        serving = next((m for m in ordered if m.get("version") == keep), None)
        if serving is not None:
            kept = kept[: limit - 1] + [serving]
    return kept


def mark_rolled_back(models: list[Mapping[str, Any]], version: int, message: str) -> list[dict[str, Any]]:
    out = []
    for m in models:
        m = dict(m)
        if m.get("version") == version:
            m.update(promoted=False, rolledBack=True, reason="RolloutFailed", message=message)
        out.append(m)
    return out


__all__ = ["Triggers", "Verdict", "evaluate_triggers", "judge", "mark_rolled_back", "model_record",
           "next_version", "prune_history", "serving_model"]
