"""Pure decisions of the training loop: triggers, the next version, the gate, the model history.

Everything here takes the last recorded status and what was observed, and returns what to do;
the I/O lives in kontinual.controller.training_runs. Status is the loop's only memory, so a restarted
operator decides exactly what the old one would have.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from kontinual.common.names import TRAIN_REQUEST_ANNOTATION
from kontinual.common.contract import MODEL_ONNX, MODEL_QDQ_ONNX, TrainingResult, served_file, version_file
from kontinual.controller.spec import Spec
from kontinual.controller.statusdata import LastRun, ModelRecord, TrainingStatus

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
    """What asked for a run this time, and status.training with the trigger bookkeeping updated."""

    reasons: tuple[str, ...]
    training: TrainingStatus


def evaluate_triggers(spec: Spec, training: TrainingStatus, *, now: datetime.datetime,
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
        due = parse_iso(training.next_scheduled_run)
        if training.schedule != trigger.schedule or due is None:
            fields["next_scheduled_run"] = iso(next_cron(trigger.schedule, now))
        elif now >= due:
            reasons.append(f"schedule {trigger.schedule!r} was due at {iso(due)}")
            fields["next_scheduled_run"] = iso(next_cron(trigger.schedule, now))
        fields["schedule"] = trigger.schedule
    else:
        fields["schedule"] = None
        fields["next_scheduled_run"] = None
    if labeled is not None:
        fields["last_labeled_images"] = labeled
        baseline = training.labeled_images_at_last_run
        if baseline is None:
            fields["labeled_images_at_last_run"] = labeled  # the first poll sets the baseline
        elif trigger.min_new_labeled_images and labeled - baseline >= trigger.min_new_labeled_images:
            reasons.append(f"{labeled - baseline} new labeled images (threshold {trigger.min_new_labeled_images})")
    if train_request and train_request != training.last_train_request:
        reasons.append(f"annotation {TRAIN_REQUEST_ANNOTATION}={train_request}")
        fields["last_train_request"] = train_request
    return Triggers(tuple(reasons), training.replace(**fields))


MAX_POLL_BACKOFF = 32  # a failing project is polled at most 32 times less often than a healthy one


def poll_delay(failures: int, poll_seconds: int) -> int:
    """Seconds until the next Roboflow poll: the interval, doubled per consecutive failure (capped)."""
    return poll_seconds * min(MAX_POLL_BACKOFF, 1 << max(0, failures))


def poll_due(training: TrainingStatus, now: datetime.datetime) -> bool:
    """A poll is due when none was ever made, or its `nextPollAt` has passed (restart-safe: all in status)."""
    due = parse_iso(training.next_poll_at)
    return due is None or now >= due


def polled(training: TrainingStatus, *, error: str | None, finished: datetime.datetime,
           poll_seconds: int) -> TrainingStatus:
    """status.training after one finished poll: when, why it failed, when to poll again."""
    failures = (training.poll_failures or 0) + 1 if error else 0
    return training.replace(last_polled_at=iso(finished), poll_error=error, poll_failures=failures or None,
                            next_poll_at=iso(finished + datetime.timedelta(seconds=poll_delay(failures, poll_seconds))))


def highest_version(models: Sequence[ModelRecord], training: TrainingStatus) -> int:
    """The highest version ever started: status.training.highestVersion (a status that predates it:
    the newest stored model or last run)."""
    seen = [m.version for m in models]
    seen.append((training.last_run.version if training.last_run else None) or 0)
    seen.append(training.highest_version or 0)
    return max(seen)


def next_version(models: Sequence[ModelRecord], training: TrainingStatus, job_versions: list[int]) -> int:
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


def is_recorded(training: TrainingStatus, models: Sequence[ModelRecord], job: RunJob) -> bool:
    """Whether the finished `job`'s result is in status already (then it is never recorded again).

    By uid (failed runs too); a version older than the kept uids, or stored as a model, counts as
    recorded; a status that predates recordedJobs: every version below its last run's.
    """
    recorded = training.recorded_jobs
    if job.uid and job.uid in (recorded or ()):
        return True
    if any(m.version == job.version for m in models):
        return True
    last = training.last_run or LastRun()
    if last.finished_at and last.version == job.version:
        return True
    if recorded is None and job.version < (last.version or 0):  # one run at a time: older ones were
        return True
    return job.version <= (training.highest_version or 0) - RECORDED_JOBS_KEPT


def recorded(training: TrainingStatus, uid: str) -> TrainingStatus:
    """status.training with `uid` added to recordedJobs (bounded: the newest RECORDED_JOBS_KEPT)."""
    kept = [u for u in training.recorded_jobs or () if u != uid]
    return training.replace(recorded_jobs=tuple((kept + [uid])[-RECORDED_JOBS_KEPT:] if uid else kept))


def adopted(training: TrainingStatus, models: Sequence[ModelRecord], job: RunJob) -> TrainingStatus:
    """status.training with a Job above every version it knows adopted (else unchanged).

    Such a Job was created by an operator whose status write never landed (killed between the
    two) or by one that status cannot remember; it is this CR's run: count it, remember its version,
    and its train request, so the request is not served by a second run.
    """
    if job.version <= highest_version(models, training):
        return training
    return training.replace(
        highest_version=job.version, runs=(training.runs or 0) + 1, pending=None,
        last_run=LastRun(job=job.name, version=job.version, started_at=job.created, trigger=job.trigger),
        last_train_request=job.train_request or training.last_train_request,
        labeled_images_at_last_run=(training.last_labeled_images if training.last_labeled_images is not None
                                    else training.labeled_images_at_last_run))


def unfinished_run(training: TrainingStatus) -> tuple[str, int] | None:
    """(Job name, version) of the run status says was started and not yet recorded, else None."""
    last = training.last_run
    if last is not None and last.version and last.job and not last.finished_at:
        return last.job, last.version
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
    predecessor had no number. The numbers must be those of the file spec.serving.runtime will serve
    (result.evaluatedOn.file), not of the version's other export.
    """
    expected = version_file(version, MODEL_ONNX)
    if result.version != version or result.onnx != expected:
        return Verdict(False, "ResultMismatch",
                       f"the result describes version {result.version} at {result.onnx!r}, expected {expected}")
    if not result.sha256 or not SHA256_RE.match(result.sha256):
        return Verdict(False, "ChecksumMissing", "the result has no valid sha256 of model.onnx; it cannot be verified")
    if result.qdqOnnx is not None or result.qdqSha256 is not None:  # a quantized run's export for the kserve engines
        expected_qdq = version_file(version, MODEL_QDQ_ONNX)
        if result.qdqOnnx != expected_qdq:
            return Verdict(False, "ResultMismatch", f"the result's QDQ export is at {result.qdqOnnx!r}, "
                           f"expected {expected_qdq}")
        if not result.qdqSha256 or not SHA256_RE.match(result.qdqSha256):
            return Verdict(False, "ChecksumMissing", "the result has no valid qdqSha256 of model.qdq.onnx; it "
                           "cannot be verified")
    evaluated = (result.evaluatedOn or {}).get("file")  # absent from trainers before per-runtime exports
    served = version_file(version, served_file(spec.serving.runtime, result.qdqOnnx is not None))
    if evaluated and evaluated != served:
        return Verdict(False, "RuntimeChanged", f"the run evaluated {evaluated} (for runtime "
                       f"{(result.evaluatedOn or {}).get('runtime')}), but spec.serving.runtime "
                       f"{spec.serving.runtime} serves {served}; request a new run")
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
                 version: int | None = None) -> ModelRecord:
    """The status.models entry of a finished run (`version`: the Job's, whatever the result claims)."""
    baseline = {k: v for k, v in (result.baseline or {}).items() if k in ("version", "metrics", "error", "reason")}
    return ModelRecord(
        version=version if version is not None else int(result.version or 0),
        sha256=result.sha256,
        qdq_sha256=result.qdqSha256,
        metrics=dict(result.metrics or {}),
        sparsity=result.sparsity,
        dataset_version=result.datasetVersion,
        images=dict(result.images or {}),
        trained_at=finished_at,
        job=job,
        promoted=verdict.promoted,
        reason=verdict.reason,
        message=verdict.message,
        class_names=tuple(result.classNames or ()),
        baseline=baseline,
        evaluated_on=dict(result.evaluatedOn or {}),
        dataset_generated=bool(result.datasetGenerated) if result.datasetGenerated is not None else None,
    )


def serving_model(spec: Spec, models: Sequence[ModelRecord]) -> ModelRecord | None:
    """The pinned version if stored, else the newest promoted (never rolled back) one, else None (seed)."""
    if spec.rollout.pinned_version is not None:
        pinned = next((m for m in models if m.version == spec.rollout.pinned_version), None)
        if pinned is not None:
            return pinned
    promoted = [m for m in models if m.promoted and not m.rolled_back]
    return max(promoted, key=lambda m: m.version, default=None)


def serving_version(spec: Spec, models: Sequence[ModelRecord]) -> int:
    """The serving model's version, 0 for the seed."""
    model = serving_model(spec, models)
    return model.version if model is not None else 0


def prune_history(models: Sequence[ModelRecord], limit: int, keep: int | None) -> list[ModelRecord]:
    """Newest first, at most `limit`, never dropping the serving version `keep`."""
    ordered = sorted(models, key=lambda m: m.version, reverse=True)
    kept = ordered[:limit]
    if keep is not None and all(m.version != keep for m in kept):
        serving = next((m for m in ordered if m.version == keep), None)
        if serving is not None:
            kept = kept[: limit - 1] + [serving]
    return kept


def mark_rolled_back(models: Sequence[ModelRecord], version: int, message: str) -> list[ModelRecord]:
    return [dataclasses.replace(m, promoted=False, rolled_back=True, reason="RolloutFailed", message=message)
            if m.version == version else m for m in models]


__all__ = ["RECORDED_JOBS_KEPT", "RunJob", "Triggers", "Verdict", "adopted", "evaluate_triggers",
           "highest_version", "is_recorded", "judge", "mark_rolled_back", "model_record", "next_version", "poll_delay",
           "poll_due", "polled", "prune_history", "recorded", "serving_model", "serving_version",
           "unfinished_run"]
