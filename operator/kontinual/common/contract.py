"""The trainer's result contract: one type the trainer writes and the operator reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kontinual.common.names import DEEPSPARSE_RUNTIME

SUCCEEDED = "Succeeded"
FAILED = "Failed"
# Kubernetes keeps at most 4096 bytes of a termination message; stay below it.
MAX_RESULT_BYTES = 4000
# The model claim's layout: `kontinual train` writes v<N>/ (and more files); the operator serves
# v<N>/model.onnx (or, to the kserve engines, v<N>/model.qdq.onnx: served_file) and continues
# training from v<N>/model.pt. A Succeeded run's result also lies there as v<N>/result.json, so it
# survives its pod.
MODEL_ONNX = "model.onnx"
# A quantized (QAT) run's second export: INT8 as QuantizeLinear/DequantizeLinear pairs around float
# ops, which OpenVINO and onnxruntime fuse into their own INT8 kernels; model.onnx holds the same
# model as ConvInteger/QLinear ops, fast in DeepSparse and the slowest input for the other engines.
MODEL_QDQ_ONNX = "model.qdq.onnx"
MODEL_CHECKPOINT = "model.pt"
RESULT_FILE = "result.json"
# The trainer's built-in recipes (kontinual/trainer/recipes/<name>.yaml), which a ContinualModel names
# as spec.training.recipe.uri builtin:<name>; the first is the default.
BUILTIN_RECIPES = ("prune-quantize", "prune-quantize-aggressive", "keep-sparsity-quantize")
BUILTIN_RECIPE_SCHEME = "builtin:"


def builtin_recipe(uri: str) -> str | None:
    """The name in a builtin:<name> recipe URI (checked against BUILTIN_RECIPES by spec.parse); None otherwise."""
    return uri[len(BUILTIN_RECIPE_SCHEME):] if uri.startswith(BUILTIN_RECIPE_SCHEME) else None


def served_file(runtime: str, has_qdq: bool) -> str:
    """The file of a version that spec.serving.runtime serves (and the trainer evaluates for the gate):
    DeepSparse model.onnx; the kserve engines model.qdq.onnx when the version has one (a quantized
    run), model.onnx when not (a dense run's one export serves every runtime)."""
    return MODEL_QDQ_ONNX if has_qdq and runtime != DEEPSPARSE_RUNTIME else MODEL_ONNX


def version_file(version: int, file: str) -> str:
    """A version's file relative to the claim root, e.g. v3/model.onnx (the result's `onnx`)."""
    return f"v{version}/{file}"


class ResultError(ValueError):
    """A result text that does not follow the contract."""


@dataclass(frozen=True)
class TrainingResult:
    """What one `kontinual train` run reports, as JSON, to its result file (last)."""

    status: str
    version: int | None = None
    onnx: str | None = None  # path relative to the claim root, e.g. "v3/model.onnx"
    sha256: str | None = None
    # A quantized run's QDQ export (MODEL_QDQ_ONNX), for OpenVINO and onnxruntime; None for a dense run.
    qdqOnnx: str | None = None  # e.g. "v3/model.qdq.onnx"
    qdqSha256: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # mAP50, mAP50_95
    sparsity: float | None = None
    datasetVersion: str | None = None
    images: dict[str, int] = field(default_factory=dict)  # train, valid, test
    classNames: list[str] = field(default_factory=list)  # the dataset's, in class-id order
    # The serving model evaluated by the same code on the same split:
    # {"version": M, "metrics": {...}} or {"version": M, "error": "why it could not be evaluated"}.
    baseline: dict[str, Any] = field(default_factory=dict)
    # split, images, datasetVersion, and the file both models were evaluated as (file: the candidate's
    # path relative to the claim root, runtime: the spec.serving.runtime it is the served file of).
    evaluatedOn: dict[str, Any] = field(default_factory=dict)
    datasetGenerated: bool | None = None  # True when this run generated datasetVersion in Roboflow
    reason: str | None = None  # Failed only: a CamelCase reason, e.g. DatasetEmpty
    message: str | None = None  # Failed only: what a person should know and do

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED

    def baseline_value(self, metric: str) -> float | None:
        """The baseline's `metric` on the candidate's split, None when it was not evaluated."""
        value = (self.baseline.get("metrics") or {}).get(metric) if isinstance(self.baseline, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @classmethod
    def failed(cls, reason: str, message: str, version: int | None = None) -> "TrainingResult":
        return cls(status=FAILED, reason=reason, message=message, version=version)

    def to_json(self) -> str:
        """Compact JSON without empty fields, truncating the message to fit the limit."""
        data = {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        overflow = len(text.encode()) - MAX_RESULT_BYTES
        if overflow > 0 and self.message:
            data["message"] = self.message[: max(0, len(self.message) - overflow - 3)] + "..."
            text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        return text

    @classmethod
    def from_json(cls, text: str, *, strict: bool = True) -> "TrainingResult":
        """Parse a result; a text that is not a result raises ResultError naming why.

        `strict=False` accepts a Succeeded result with missing fields, for a reader (the
        operator's gate) that rejects such a model with its own reason rather than losing it.
        """
        try:
            data: Any = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ResultError(f"result is not JSON: {exc}; got {text[:200]!r}") from None
        if not isinstance(data, dict):
            raise ResultError(f"result must be a JSON object, got {type(data).__name__}")
        status = data.get("status")
        if status not in (SUCCEEDED, FAILED):
            raise ResultError(f"result status must be {SUCCEEDED!r} or {FAILED!r}, got {status!r}")
        known = set(cls.__dataclass_fields__)
        result = cls(**{k: v for k, v in data.items() if k in known})
        if result.succeeded and strict:
            missing = [k for k in ("version", "onnx", "sha256") if not getattr(result, k)]
            if missing:
                raise ResultError(f"a Succeeded result needs {', '.join(missing)}")
            if bool(result.qdqOnnx) != bool(result.qdqSha256):
                raise ResultError("a result's qdqOnnx and qdqSha256 come together")
        return result
