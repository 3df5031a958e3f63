"""Pure decisions of the training loop: triggers, the next version, the gate, the model history.

Everything here takes the last recorded status and what was observed, and returns what to do;
the I/O lives in kontinual.controller.training_runs. Status is the loop's only memory, so a restarted
operator decides exactly what the old one would have.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

from croniter import croniter

from kontinual.common.names import TRAIN_REQUEST_ANNOTATION
from kontinual.common.contract import TrainingResult
from kontinual.controller.spec import Spec

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


MAX_POLL_BACKOFF = 32  # a failing project is polled at most 32 times less often than a healthy one


def poll_delay(failures: int, poll_seconds: int) -> int:
    """Seconds until the next Roboflow poll: the interval, doubled per consecutive failure (capped)."""
    return poll_seconds * min(MAX_POLL_BACKOFF, 1 << max(0, failures))


def poll_due(training: Mapping[str, Any], now: datetime.datetime) -> bool:
    """A poll is due when none was ever made, or its `nextPollAt` has passed (restart-safe: all in status)."""
    due = parse_iso(training.get("nextPollAt"))
    return due is None or now >= due


def polled_fields(training: Mapping[str, Any], *, labeled: int | None, error: str | None,
                  finished: datetime.datetime, poll_seconds: int) -> dict[str, Any]:
    """The status.training bookkeeping of one finished poll: when, why it failed, when to poll again."""
    failures = int(training.get("pollFailures") or 0) + 1 if error else 0
    return {"lastPolledAt": iso(finished), "pollError": error, "pollFailures": failures or None,
            "nextPollAt": iso(finished + datetime.timedelta(seconds=poll_delay(failures, poll_seconds)))}


def highest_version(models: Sequence[Mapping[str, Any]], training: Mapping[str, Any]) -> int:
    """The highest version ever started: status.training.highestVersion (a status that predates it:
    the newest stored model or last run)."""
    seen = [int(m.get("version") or 0) for m in models]
    seen.append(int((training.get("lastRun") or {}).get("version") or 0))
    seen.append(int(training.get("highestVersion") or 0))
    return max(seen)


def next_version(models: Sequence[Mapping[str, Any]], training: Mapping[str, Any], job_versions: list[int]) -> int:
    """The next run's version: above every version ever started, recorded or seen as a Job (failed and
    vanished runs use one too, so a version, and its folder on the claim, is never reused)."""
    return max([highest_version(models, training), *job_versions]) + 1


RECORDED_JOBS_KEPT = 20  # Job uids kept in status.training.recordedJobs; older versions count as recorded


@dataclass(frozen=True)
class RunJob:
    """What the loop needs of one training Job: identity, version, and what it was started for."""

    name: str
    uid: str
    version: int
    created: str | None = None
    trigger: str | None = None
    train_request: str | None = None


def is_recorded(training: Mapping[str, Any], models: Sequence[Mapping[str, Any]], job: RunJob) -> bool:
    """Whether the finished `job`'s result is in status already (then it is never recorded again).

    By uid (failed runs too); a version older than the kept uids, or stored as a model, counts as
    recorded; a status that predates recordedJobs: every version below its last run's.
    """
    recorded = training.get("recordedJobs")
    if job.uid and job.uid in (recorded or ()):
        return True
    if any(m.get("version") == job.version for m in models):
        return True
    last = training.get("lastRun") or {}
    if last.get("finishedAt") and last.get("version") == job.version:
        return True
    if recorded is None and job.version < int(last.get("version") or 0):  # one run at a time: older ones were
        return True
    return job.version <= int(training.get("highestVersion") or 0) - RECORDED_JOBS_KEPT


def recorded_jobs(training: Mapping[str, Any], uid: str) -> list[str]:
    """status.training.recordedJobs with `uid` added (bounded: the newest RECORDED_JOBS_KEPT)."""
    kept = [u for u in training.get("recordedJobs") or [] if u != uid]
    return (kept + [uid])[-RECORDED_JOBS_KEPT:] if uid else kept


def adopted_fields(training: Mapping[str, Any], models: Sequence[Mapping[str, Any]], job: RunJob) -> dict[str, Any]:
    """The status.training fields for a Job above every version the status knows, else {}.

    Such a Job was created by an operator whose status write never landed (killed between the
    two) or by one that status cannot remember; it is this CR's run: count it, remember its version,
    and its train request, so the request is not served by a second run.
    """
    if job.version <= highest_version(models, training):
        return {}
    fields: dict[str, Any] = {"highestVersion": job.version, "runs": int(training.get("runs") or 0) + 1,
                              "pending": None,
                              "lastRun": {"job": job.name, "version": job.version, "startedAt": job.created,
                                          "trigger": job.trigger}}
    if job.train_request:
        fields["lastTrainRequest"] = job.train_request
    if training.get("lastLabeledImages") is not None:
        fields["labeledImagesAtLastRun"] = training["lastLabeledImages"]
    return fields


def unfinished_run(training: Mapping[str, Any]) -> tuple[str, int] | None:
    """(Job name, version) of the run status says was started and not yet recorded, else None."""
    last = training.get("lastRun") or {}
    if last.get("version") and last.get("job") and not last.get("finishedAt"):
        return str(last["job"]), int(last["version"])
    return None


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str
    message: str


# Why a baseline could not be evaluated (the trainer's baseline.reason): when the classes differ,
# the two models answer different questions and the floor alone is the gate.
BASELINE_CLASSES_DIFFER = "ClassesDiffer"


def _exam(result: TrainingResult) -> str:
    """'dataset 7 test, 45 images': the split both models were evaluated on."""
    on = result.evaluatedOn or {}
    dataset = on.get("datasetVersion") or result.datasetVersion
    where = f"dataset {dataset} {on.get('split', 'test')}" if dataset else f"the {on.get('split', 'test')} split"
    return f"{where}, {on['images']} images" if on.get("images") is not None else where


def _version_name(version: int) -> str:
    return "the seed model (v0)" if version == 0 else f"v{version}"


def judge(spec: Spec, result: TrainingResult, version: int, serving_version: int) -> Verdict:
    """The gate: champion (the serving model, `serving_version`, 0 = seed) vs challenger on the same split.

    Promoted only with metric >= spec.rollout.gate.minValue and, when the trainer evaluated the
    serving model on the candidate's split (result.baseline), metric >= baseline + minDelta. When
    the serving model cannot be evaluated on the dataset's classes (a COCO seed and a 4-class
    project), the floor alone is the gate; never is a model promoted only because its
    predecessor had no number.
    """
    if result.version != version or result.onnx != f"v{version}/model.onnx":
        return Verdict(False, "ResultMismatch",
                       f"the result describes version {result.version} at {result.onnx!r}, expected v{version}/model.onnx")
    if not result.sha256 or not SHA256_RE.match(result.sha256):
        return Verdict(False, "ChecksumMissing", "the result has no valid sha256 of model.onnx; it cannot be verified")
    gate = spec.rollout.gate
    value = (result.metrics or {}).get(gate.metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return Verdict(False, "MetricMissing", f"the result has no {gate.metric} to gate on")
    exam, floor = _exam(result), gate.min_value
    if value < floor:
        return Verdict(False, "BelowFloor", f"{gate.metric} {value:.4f} on {exam} is below the floor "
                       f"spec.rollout.gate.minValue {floor}")
    baseline = result.baseline or {}
    base_version = baseline.get("version")
    if baseline and base_version != serving_version:
        return Verdict(False, "BaselineChanged", f"the run compared against {_version_name(int(base_version or 0))}, "
                       f"but {_version_name(serving_version)} serves now; request a new run")
    base = result.baseline_value(gate.metric)
    if base is None:
        why = baseline.get("error") or "the result has no baseline (a trainer that predates baselines)"
        if serving_version and baseline.get("reason") != BASELINE_CLASSES_DIFFER:
            return Verdict(False, "BaselineUnavailable", f"{gate.metric} {value:.4f} on {exam}, but the serving "
                           f"model {_version_name(serving_version)} could not be evaluated on it: {why}")
        return Verdict(True, "FloorPassed", f"{gate.metric} {value:.4f} on {exam} >= floor {floor}; the floor is "
                       f"the gate because {_version_name(serving_version)} could not be evaluated on it: {why}")
    comparison = f"{gate.metric} {value:.4f} vs {base:.4f} of {_version_name(serving_version)} on {exam}"
    if value >= base + gate.min_delta:
        return Verdict(True, "GatePassed", f"{comparison} (minDelta {gate.min_delta}, floor {floor})")
    return Verdict(False, "GateRejected", f"{comparison}: below {base:.4f} + minDelta {gate.min_delta}")


def model_record(result: TrainingResult, job: str, finished_at: str, verdict: Verdict,
                 version: int | None = None) -> dict[str, Any]:
    """The status.models entry of a finished run (`version`: the Job's, whatever the result claims)."""
    record: dict[str, Any] = {
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
    if result.classNames:
        record["classNames"] = list(result.classNames)
    if result.baseline:
        record["baseline"] = {k: v for k, v in result.baseline.items() if k in ("version", "metrics", "error", "reason")}
    if result.evaluatedOn:
        record["evaluatedOn"] = dict(result.evaluatedOn)
    if result.datasetGenerated is not None:
        record["datasetGenerated"] = bool(result.datasetGenerated)
    return record


def serving_model(spec: Spec, models: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pinned version if stored, else the newest promoted (never rolled back) one, else None (seed)."""
    if spec.rollout.pinned_version is not None:
        pinned = next((m for m in models if m.get("version") == spec.rollout.pinned_version), None)
        if pinned is not None:
            return pinned
    promoted = [m for m in models if m.get("promoted") and not m.get("rolledBack")]
    return max(promoted, key=lambda m: int(m.get("version") or 0), default=None)


def serving_version(spec: Spec, models: Sequence[Mapping[str, Any]]) -> int:
    """The serving model's version, 0 for the seed."""
    return int((serving_model(spec, models) or {}).get("version") or 0)


def prune_history(models: Sequence[Mapping[str, Any]], limit: int, keep: int | None) -> list[dict[str, Any]]:
    """Newest first, at most `limit`, never dropping the serving version `keep`."""
    ordered = sorted((dict(m) for m in models), key=lambda m: int(m.get("version") or 0), reverse=True)
    kept = ordered[:limit]
    if keep is not None and all(m.get("version") != keep for m in kept):
        serving = next((m for m in ordered if m.get("version") == keep), None)
        if serving is not None:
            kept = kept[: limit - 1] + [serving]
    return kept


def mark_rolled_back(models: Sequence[Mapping[str, Any]], version: int, message: str) -> list[dict[str, Any]]:
    out = []
    for m in models:
        m = dict(m)
        if m.get("version") == version:
            m.update(promoted=False, rolledBack=True, reason="RolloutFailed", message=message)
        out.append(m)
    return out


__all__ = ["RECORDED_JOBS_KEPT", "RunJob", "Triggers", "Verdict", "adopted_fields", "evaluate_triggers",
           "highest_version", "is_recorded", "judge", "mark_rolled_back", "model_record", "next_version", "poll_delay",
           "poll_due", "polled_fields", "prune_history", "recorded_jobs", "serving_model", "serving_version",
           "unfinished_run"]
