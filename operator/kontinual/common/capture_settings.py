"""Data-capture settings, one type: the controller renders them into the server config, the server pods parse them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from kontinual.common.names import ROBOFLOW_API_KEY_ENV
from kontinual.common.roboflow import DEFAULT_API_URL

DEFAULT_METRICS_PORT = 9101
# Tuning of the upload workers: not in the spec, rendered only when a caller (a test) sets them.
TUNING = ("workers", "attempts", "base_delay", "max_delay", "drain_seconds")
REQUIRED = ("endpoint", "model_version", "workspace", "project")


@dataclass(frozen=True)
class CaptureSettings:
    """What one server pod samples and where it uploads; the Roboflow key is only named (an env var), never held."""

    endpoint: str
    model_version: str
    workspace: str
    project: str
    api_url: str = DEFAULT_API_URL
    split: str = "train"
    batch: str = ""
    tags: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    upload_predictions: bool = False
    frequency: int = 100
    max_per_minute: int = 60
    queue_size: int = 100
    metrics_port: int = DEFAULT_METRICS_PORT
    api_key_env: str = ROBOFLOW_API_KEY_ENV
    workers: int = 2
    attempts: int = 4  # calls per upload, first one included
    base_delay: float = 0.5
    max_delay: float = 8.0
    drain_seconds: float = 10.0

    def to_mapping(self) -> dict[str, Any]:
        """The server config's keyword mapping (YAML-ready); tuning fields only where they differ from the default."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in TUNING and value == f.default:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], where: str = "data capture") -> "CaptureSettings":
        """Parse what `to_mapping` wrote; a missing, unknown or ill-typed key is named in the ValueError."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(mapping) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)} (expected some of {', '.join(known)})")
        missing = [key for key in REQUIRED if mapping.get(key) in (None, "")]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            values[key] = _coerce(where, key, raw, known[key].default)
        settings = cls(**values)
        small = [key for key in ("frequency", "max_per_minute", "queue_size", "workers", "attempts")
                 if getattr(settings, key) < 1]
        if small:
            raise ValueError(f"{where}: {', '.join(small)} must be >= 1, got "
                             + ", ".join(str(getattr(settings, key)) for key in small))
        return settings


def _coerce(where: str, key: str, raw: Any, default: Any) -> Any:
    """The value as the field's type, which its default tells (required fields have none: they are text)."""
    if isinstance(default, bool):
        ok, value, kind = isinstance(raw, bool), raw, "true or false"
    elif isinstance(default, tuple):
        ok = isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw)
        value, kind = tuple(raw) if ok else raw, "a list of strings"
    elif isinstance(default, (int, float)):
        ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        if isinstance(default, int):
            ok = ok and float(raw).is_integer()
        value, kind = type(default)(raw) if ok else raw, "an integer" if isinstance(default, int) else "a number"
    else:
        ok = isinstance(raw, (str, int)) and not isinstance(raw, bool)
        value, kind = str(raw) if ok else raw, "a string"
    if not ok:
        raise ValueError(f"{where}: {key} must be {kind}, got {raw!r}")
    return value
