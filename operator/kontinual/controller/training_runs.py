"""The training loop's I/O: observe training Jobs, read results, take Roboflow polls, start the next Job.

Called from the one reconcile with the last status; returns the new status.training, the model
history, the Training/Degraded conditions and the Events to raise. Job names are deterministic
(NAME-train-<N>) and creation is idempotent, so a restarted operator adopts a running Job
instead of starting a second one, and a finished Job's result is recorded exactly once.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes.client.rest import ApiException

from kontinual.common.names import MODEL_LABEL, TRAIN_REQUEST_ANNOTATION, TRIGGER_ANNOTATION, VERSION_LABEL
from kontinual.controller import decisions, jobs, k8s, polling
from kontinual.common.contract import RESULT_FILE, ResultError, TrainingResult, version_file
from kontinual.controller.polling import PollRequest
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec
from kontinual.controller.status import DEGRADED, TRAINING, Condition
from kontinual.controller.statusdata import LastRun, ModelRecord, TrainingStatus, models_from

log = logging.getLogger(__name__)
Event = tuple[str, str, str]  # type (Normal|Warning), reason, message


@dataclass
class LoopState:
    training: TrainingStatus
    models: list[ModelRecord]
    conditions: list[Condition] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    poll: PollRequest | None = None  # a Roboflow poll to ask for once the serving children are applied


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _finished(job: Mapping[str, Any]) -> str | None:
    """'Complete' or 'Failed' once the Job controller decided, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def _job_version(job: Mapping[str, Any]) -> int:
    return int(job["metadata"].get("labels", {}).get(VERSION_LABEL, "0") or 0)


def _run_job(job: Mapping[str, Any]) -> decisions.RunJob:
    meta = job["metadata"]
    notes = meta.get("annotations") or {}
    return decisions.RunJob(name=meta["name"], uid=meta.get("uid") or "", version=_job_version(job),
                            created=meta.get("creationTimestamp"), trigger=notes.get(TRIGGER_ANNOTATION),
                            train_request=notes.get(TRAIN_REQUEST_ANNOTATION))


def _termination_message(job: Mapping[str, Any], container: str) -> str:
    """The newest pod's termination message of `container` ('' when no pod of the Job has one)."""
    meta = job["metadata"]
    pods = [p for p in k8s.list_objects("Pod", meta["namespace"], f"job-name={meta['name']}")
            if _owned_by(p, meta.get("uid", ""))]
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    for pod in reversed(pods):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == container and terminated.get("message"):
                return str(terminated["message"])
    return ""


def read_result(job: Mapping[str, Any], outcome: str) -> TrainingResult | None:
    """The trainer's result from the newest pod's termination message (never from logs alone).

    None for a completed Job whose pods are gone: its result is on the model claim (read_from_claim).
    """
    message = _termination_message(job, "trainer")
    if message:
        try:
            return TrainingResult.from_json(message, strict=False)
        except ResultError as exc:
            if outcome == "Complete":
                return TrainingResult.failed("ResultInvalid", f"the trainer's result is not valid: {exc}")
            return TrainingResult.failed("TrainerCrashed",
                                         f"the trainer stopped without a result; last log lines: {message[-600:]}")
    reason = next((c.get("reason") for c in (job.get("status") or {}).get("conditions") or []
                   if c.get("type") == "Failed"), None)
    if outcome == "Failed":
        return TrainingResult.failed(reason or "JobFailed", f"the training Job failed ({reason or 'no reason given'}) "
                                     "and its pod left no result")
    return None


def read_from_claim(spec: Spec, settings: Settings, state: LoopState, version: int,
                    why: str) -> tuple[bool, TrainingResult | None]:
    """(done, result) of reading v<N>/result.json from the model claim with the reader Job NAME-result-<N>.

    Not done while the reader runs (it is created on the first call); done with None when the
    claim has no result (the reader failed or printed nothing).
    """
    reader = jobs.result_reader_job(spec, settings, version)
    name = str(reader["metadata"]["name"])
    existing = k8s.get("Job", spec.namespace, name)
    if existing is None:
        try:
            if k8s.create(reader) is not None:
                state.events.append(("Normal", "ReadingResult", f"{why}; reading {version_file(version, RESULT_FILE)} from "
                                     f"the model claim with {name}"))
        except ApiException as exc:
            state.events.append(("Warning", "ResultReadFailed", f"creating {name} failed: {k8s.api_error(exc)}"))
        except k8s.ChildConflict as exc:  # someone else's Job has the reader's name: the claim cannot be read
            state.events.append(("Warning", "ChildConflict", str(exc)))
            return True, None
        return False, None
    if not _owned_by(existing, spec.uid):
        return True, None
    outcome = _finished(existing)
    if outcome is None:
        return False, None
    message = _termination_message(existing, jobs.RESULT_READER) if outcome == "Complete" else ""
    if not message:
        return True, None
    try:
        return True, TrainingResult.from_json(message, strict=False)
    except ResultError as exc:
        where = version_file(version, RESULT_FILE)
        return True, TrainingResult.failed("ResultInvalid", f"{where} on the claim is not valid: {exc}")


def _record(spec: Spec, state: LoopState, run: decisions.RunJob, result: TrainingResult, now: str,
            job_status: Mapping[str, Any]) -> None:
    version, name = run.version, run.name
    finished = job_status.get("completionTime") or now
    previous = state.training.last_run or LastRun()
    same = previous.version == version
    started = job_status.get("startTime") or (previous.started_at if same else run.created)
    last = LastRun(job=name, version=version, started_at=started, finished_at=finished, result=result.status,
                   reason=result.reason, message=result.message, trigger=previous.trigger if same else run.trigger)
    state.training = decisions.recorded(state.training.replace(last_run=last), run.uid)
    if not result.succeeded:
        state.events.append(("Warning", "TrainingFailed", f"{name}: {result.reason}: {result.message}"))
        state.conditions.append(Condition(DEGRADED, True, result.reason or "TrainingFailed",
                                          f"training run v{version} failed: {result.message}; the previous model keeps serving"))
        return
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted((result.metrics or {}).items()) if isinstance(v, (int, float)))
    state.events.append(("Normal", "TrainingSucceeded", f"{name}: v{version} {metrics}"))
    verdict = decisions.judge(spec, result, version, decisions.serving_version(spec, state.models))
    state.models.append(decisions.model_record(result, name, finished, verdict, version))
    state.training = state.training.replace(last_run=dataclasses.replace(last, promoted=verdict.promoted))
    if verdict.promoted:
        state.events.append(("Normal", "ModelPromoted", f"v{version}: {verdict.message}"))
        state.conditions.append(Condition(DEGRADED, False, "ModelPromoted", f"v{version} promoted: {verdict.message}"))
    else:
        state.events.append(("Warning", "ModelRejected", f"v{version}: {verdict.reason}: {verdict.message}"))
        state.conditions.append(Condition(DEGRADED, True, verdict.reason,
                                          f"v{version} not promoted: {verdict.message}; the previous model keeps serving"))


RUN_VANISHED = "RunVanished"


def _observe(spec: Spec, state: LoopState, settings: Settings, owned: Sequence[Mapping[str, Any]],
             stamp: str) -> str | None:
    """Adopt, record or keep waiting for every owned training Job, and settle a run whose Job vanished.

    Returns what keeps the loop busy (a running Job, or a result still being read from the claim).
    """
    busy = None
    for job in owned:  # a Job above every version status knows: this CR's run, whose status write was lost
        state.training = decisions.adopted(state.training, state.models, _run_job(job))
    for job in owned:
        run, outcome = _run_job(job), _finished(job)
        if outcome is None:
            busy = run.name
            state.training = state.training.replace(active_job=run.name)
            continue
        if decisions.is_recorded(state.training, state.models, run):
            continue
        result = read_result(job, outcome)
        if result is None:
            done, result = read_from_claim(spec, settings, state, run.version, f"{run.name} completed but its pod is gone")
            if not done:
                busy = busy or run.name
                continue
            result = result or TrainingResult.failed(
                "ResultMissing", f"the training Job completed but its pod is gone and the model claim has no "
                f"{version_file(run.version, RESULT_FILE)}")
        _record(spec, state, run, result, stamp, job.get("status") or {})
    unfinished = decisions.unfinished_run(state.training)
    if unfinished is not None and unfinished[1] not in {_job_version(j) for j in owned}:
        name, version = unfinished
        done, result = read_from_claim(spec, settings, state, version, f"the training Job {name} is gone")
        if not done:
            return busy or name
        run = decisions.RunJob(name=name, uid="", version=version)
        if result is None:
            message = (f"training run v{version} vanished: its Job {name} is gone and the model claim has no "
                       f"v{version}/{RESULT_FILE}; the previous model keeps serving")
            result = TrainingResult.failed(RUN_VANISHED, message)
        _record(spec, state, run, result, stamp, {})
    return busy


def _poll_request(spec: Spec) -> PollRequest:
    ds = spec.training.dataset if spec.training else None
    assert ds is not None
    return PollRequest(namespace=spec.namespace, name=spec.name, uid=spec.uid, api_url=ds.api_url,
                       workspace=ds.workspace, project=ds.project, secret_name=ds.api_key.name,
                       secret_key=ds.api_key.key)


def _take_poll(spec: Spec, state: LoopState, settings: Settings, now: datetime.datetime) -> int | None:
    """Record a finished poll (taken from the poller) and ask for the next one when due; the count or None."""
    assert spec.training is not None
    if not spec.training.trigger.min_new_labeled_images:
        return None
    poller = polling.current()
    request = _poll_request(spec)
    result = poller.take(spec.uid) if poller is not None else None
    labeled = None
    if result is not None and result.source == request.source:
        previous_error = state.training.poll_error
        state.training = decisions.polled(state.training, error=result.error, finished=result.finished,
                                          poll_seconds=settings.roboflow_poll_seconds)
        labeled = result.labeled
        if result.error:
            log.warning("%s/%s: %s", spec.namespace, spec.name, result.error)
            if result.error != previous_error:  # one Event per new error, not one per retry
                state.events.append(("Warning", "RoboflowPollFailed", result.error))
    if decisions.poll_due(state.training, now):
        state.poll = request
    return labeled


def run(spec: Spec, previous: Mapping[str, Any], annotations: Mapping[str, str], settings: Settings,
        now: datetime.datetime) -> LoopState:
    state = LoopState(training=TrainingStatus.from_dict(previous.get("training")),
                      models=models_from(previous.get("models")))
    stamp = decisions.iso(now)
    owned = [j for j in k8s.list_objects("Job", spec.namespace, f"{VERSION_LABEL},{MODEL_LABEL}={spec.name}")
             if _owned_by(j, spec.uid) and _job_version(j)]
    owned.sort(key=_job_version)
    state.training = state.training.replace(active_job=None)
    busy = _observe(spec, state, settings, owned, stamp)
    active = state.training.active_job

    labeled = _take_poll(spec, state, settings, now)
    triggers = decisions.evaluate_triggers(spec, state.training, now=now, labeled=labeled,
                                      train_request=annotations.get(TRAIN_REQUEST_ANNOTATION))
    state.training = triggers.training
    wanted = "; ".join(triggers.reasons) or state.training.pending
    if busy is None and wanted:
        active = busy = _start(spec, state, settings, owned, str(wanted), stamp)
    elif busy is not None and triggers.reasons:
        state.training = state.training.replace(pending=wanted)  # served once after the running Job, never stacked
        state.events.append(("Normal", "TrainingQueued", f"{wanted}; waits for {busy}"))
    state.training = state.training.replace(active_job=active)
    if active:
        state.conditions.append(Condition(TRAINING, True, "JobRunning", f"{active} is training"))
    elif busy:
        state.conditions.append(Condition(TRAINING, True, "ReadingResult",
                                          f"reading the result of {busy} from the model claim"))
    else:
        last = state.training.last_run
        state.conditions.append(Condition(TRAINING, False, "Idle", f"last run: {last.job} {last.result}"
                                          if last else "no training run yet"))
    serving = decisions.serving_model(spec, state.models)
    state.models = decisions.prune_history(state.models, spec.rollout.history_limit,
                                           serving.version if serving else None)
    return state


def _start(spec: Spec, state: LoopState, settings: Settings, owned: Sequence[Mapping[str, Any]],
           reason: str, stamp: str) -> str | None:
    version = decisions.next_version(state.models, state.training, [_job_version(j) for j in owned])
    serving = decisions.serving_model(spec, state.models)
    base = serving.version if serving else None
    labeled_at_last_run = state.training.labeled_images_at_last_run
    request = state.training.last_train_request
    notes = {TRIGGER_ANNOTATION: reason[:1000], **({TRAIN_REQUEST_ANNOTATION: str(request)} if request else {})}
    job = jobs.training_job(spec, settings, version=version, base_weights=base,
                            baseline=jobs.Baseline.of(spec, serving), annotations=notes,
                            labeled_at_last_run=labeled_at_last_run)
    name = str(job["metadata"]["name"])
    try:
        k8s.create(job)  # None when it exists already: the same run, never a second one
    except ApiException as exc:
        message = f"creating {name} failed: {k8s.api_error(exc)}"
        state.events.append(("Warning", "TrainingFailed", message))
        state.conditions.append(Condition(DEGRADED, True, "JobCreateFailed", message))
        return None
    except k8s.ChildConflict as exc:  # someone else's Job has this run's name: never adopt it
        state.events.append(("Warning", "ChildConflict", str(exc)))
        state.conditions.append(Condition(DEGRADED, True, "ChildConflict", f"training run v{version} not started: {exc}"))
        return None
    training = state.training
    state.training = training.replace(
        runs=(training.runs or 0) + 1, pending=None, highest_version=version,
        last_run=LastRun(job=name, version=version, started_at=stamp, trigger=reason),
        labeled_images_at_last_run=(training.last_labeled_images if training.last_labeled_images is not None
                                    else training.labeled_images_at_last_run))
    state.events.append(("Normal", "TrainingStarted", f"{name}: {reason}"))
    return name
