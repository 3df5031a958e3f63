"""The status the operator writes, typed: status.training (with its lastRun), status.models[] and status.serving.

Like the spec, status is parsed once (from_dict: lenient, a field of the wrong type reads as
unset, since status is the operator's own memory and must never crash a reconcile) and written
back with to_dict (camelCase keys as in the CRD, unset fields left out). The CRD's status
schema lists every field here; tests/unit/test_crd.py checks that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kontinual.common.contract import MODEL_QDQ_ONNX, served_file


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _to_dict(obj: Any) -> dict[str, Any]:
    """camelCase keys, unset (None) fields and empty collections left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or (isinstance(value, (tuple, list, dict)) and not value):
            continue
        out[_camel(f.name)] = _plain(value)
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _map(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class LastRun:
    """status.training.lastRun: the newest run, started (no finishedAt yet) or finished."""

    job: str | None = None
    version: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    trigger: str | None = None
    result: str | None = None  # Succeeded or Failed
    reason: str | None = None
    message: str | None = None
    promoted: bool | None = None

    @classmethod
    def from_dict(cls, data: Any) -> "LastRun | None":
        if not isinstance(data, Mapping) or not data:
            return None
        return cls(job=_str(data.get("job")), version=_int(data.get("version")),
                   started_at=_str(data.get("startedAt")), finished_at=_str(data.get("finishedAt")),
                   trigger=_str(data.get("trigger")), result=_str(data.get("result")),
                   reason=_str(data.get("reason")), message=_str(data.get("message")),
                   promoted=_bool(data.get("promoted")))

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class TrainingStatus:
    """status.training: the loop's memory between reconciles (and across operator restarts)."""

    active_job: str | None = None
    runs: int | None = None
    last_run: LastRun | None = None
    pending: str | None = None  # trigger reasons that arrived during a run, served once after it
    schedule: str | None = None  # the trigger.schedule nextScheduledRun was computed from
    next_scheduled_run: str | None = None
    last_train_request: str | None = None
    last_labeled_images: int | None = None
    labeled_images_at_last_run: int | None = None
    last_polled_at: str | None = None
    poll_error: str | None = None
    poll_failures: int | None = None
    next_poll_at: str | None = None
    highest_version: int | None = None  # the highest version ever started: never reused
    recorded_jobs: tuple[str, ...] | None = None  # uids of the newest recorded Jobs (None: a status before them)

    @classmethod
    def from_dict(cls, data: Any) -> "TrainingStatus":
        d = data if isinstance(data, Mapping) else {}
        recorded = d.get("recordedJobs")
        return cls(active_job=_str(d.get("activeJob")), runs=_int(d.get("runs")),
                   last_run=LastRun.from_dict(d.get("lastRun")), pending=_str(d.get("pending")),
                   schedule=_str(d.get("schedule")), next_scheduled_run=_str(d.get("nextScheduledRun")),
                   last_train_request=_str(d.get("lastTrainRequest")),
                   last_labeled_images=_int(d.get("lastLabeledImages")),
                   labeled_images_at_last_run=_int(d.get("labeledImagesAtLastRun")),
                   last_polled_at=_str(d.get("lastPolledAt")), poll_error=_str(d.get("pollError")),
                   poll_failures=_int(d.get("pollFailures")), next_poll_at=_str(d.get("nextPollAt")),
                   highest_version=_int(d.get("highestVersion")),
                   recorded_jobs=_strs(recorded) if isinstance(recorded, list) else None)

    def to_dict(self) -> dict[str, Any]:
        out = _to_dict(self)
        if self.recorded_jobs is not None:
            out["recordedJobs"] = list(self.recorded_jobs)  # [] too: it says "recorded by uid from now on"
        return out

    def replace(self, **changes: Any) -> "TrainingStatus":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelRecord:
    """One status.models[] entry: a trained version, its numbers and the gate's verdict."""

    version: int
    sha256: str | None = None  # of model.onnx
    qdq_sha256: str | None = None  # of model.qdq.onnx, a quantized version's export for the kserve engines
    metrics: Mapping[str, float] = field(default_factory=dict)
    sparsity: float | None = None
    dataset_version: str | None = None
    images: Mapping[str, int] = field(default_factory=dict)
    trained_at: str | None = None
    job: str | None = None
    promoted: bool = False
    rolled_back: bool | None = None
    reason: str | None = None
    message: str | None = None
    class_names: tuple[str, ...] = ()
    baseline: Mapping[str, Any] = field(default_factory=dict)
    evaluated_on: Mapping[str, Any] = field(default_factory=dict)
    dataset_generated: bool | None = None

    @classmethod
    def from_dict(cls, data: Any) -> "ModelRecord | None":
        """None for an entry without a version (nothing could refer to it)."""
        if not isinstance(data, Mapping) or _int(data.get("version")) is None:
            return None
        metrics = {k: v for k, v in _map(data.get("metrics")).items() if _float(v) is not None}
        images = {k: v for k, v in _map(data.get("images")).items() if _int(v) is not None}
        return cls(version=int(data["version"]), sha256=_str(data.get("sha256")),
                   qdq_sha256=_str(data.get("qdqSha256")), metrics=metrics,
                   sparsity=_float(data.get("sparsity")), dataset_version=_str(data.get("datasetVersion")),
                   images=images, trained_at=_str(data.get("trainedAt")), job=_str(data.get("job")),
                   promoted=bool(_bool(data.get("promoted"))), rolled_back=_bool(data.get("rolledBack")),
                   reason=_str(data.get("reason")), message=_str(data.get("message")),
                   class_names=_strs(data.get("classNames")), baseline=_map(data.get("baseline")),
                   evaluated_on=_map(data.get("evaluatedOn")), dataset_generated=_bool(data.get("datasetGenerated")))

    def to_dict(self) -> dict[str, Any]:
        out = _to_dict(self)
        out["promoted"] = self.promoted  # False is an answer, never left out
        return out

    def served_file(self, runtime: str) -> tuple[str, str | None]:
        """(file name, its sha256) of this version that `runtime` serves (contract.served_file)."""
        name = served_file(runtime, self.qdq_sha256 is not None)
        return name, self.qdq_sha256 if name == MODEL_QDQ_ONNX else self.sha256

    def names(self, project_names: Sequence[str]) -> tuple[str, ...]:
        """Its own class names (its dataset's); records written before versions carried names: the project's."""
        return self.class_names or tuple(project_names)


def models_from(data: Any) -> list[ModelRecord]:
    """status.models as records (entries that are not records are dropped)."""
    records = [ModelRecord.from_dict(m) for m in data] if isinstance(data, list) else []
    return [r for r in records if r is not None]


@dataclass(frozen=True)
class ServingStatus:
    """status.serving: what the server runs now."""

    version: int
    uri: str
    url: str
    ready_replicas: int = 0
    sha256: str | None = None
    class_names: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> "ServingStatus | None":
        d = data if isinstance(data, Mapping) else {}
        version, uri, url = _int(d.get("version")), _str(d.get("uri")), _str(d.get("url"))
        if version is None or uri is None or url is None:
            return None
        return cls(version=version, uri=uri, url=url, ready_replicas=_int(d.get("readyReplicas")) or 0,
                   sha256=_str(d.get("sha256")), class_names=_strs(d.get("classNames")))

    def to_dict(self) -> dict[str, Any]:
        out = _to_dict(self)
        out["readyReplicas"] = self.ready_replicas  # 0 is an answer
        return out


__all__ = ["LastRun", "ModelRecord", "ServingStatus", "TrainingStatus", "models_from"]
