"""A small Roboflow HTTP API client (key check, project info, image upload, pre-annotation) that never leaks the key.

Shared by the serving wing (the DeepSparse logger uploads production images) and the operator
(`project_info` for `minNewLabeledImages` polling), so it imports only `requests`: no kopf, torch
or deepsparse. The endpoint shapes are the ones the official `roboflow` 1.7.3 SDK uses (the test
double tests/support/roboflow_double.py answers them; the training tier runs the SDK against it).
Roboflow wants the key as the `api_key` query parameter; it therefore appears in URLs, so every
error message built here is scrubbed of it, and urllib3's debug logging (which prints URLs) gets
a filter that masks `api_key=` values.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TypeVar

import requests

from kontinual.common import deadline_http

DEFAULT_API_URL = "https://api.roboflow.com"
DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)
_KEY_IN_URL = re.compile(r"(api_key=)[^&\s'\"]+")
T = TypeVar("T")


class RoboflowError(Exception):
    """A failed Roboflow call. `status` is None for connection errors; the message never holds the key."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        """Connection errors, 429 and 5xx may succeed later; other 4xx will not (bad key, bad project)."""
        return self.status is None or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class UploadResult:
    id: str
    duplicate: bool


@dataclass(frozen=True)
class ProjectInfo:
    workspace: str
    project: str
    images: int
    unannotated: int
    classes: tuple[str, ...]
    versions: tuple[int, ...]

    @property
    def annotated(self) -> int:
        """Images that carry a (non-prediction) annotation: what minNewLabeledImages counts."""
        return max(0, self.images - self.unannotated)


class _RedactKeys(logging.Filter):
    """Masks `api_key=...` in log records (urllib3 logs full URLs at DEBUG level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message:
            record.msg, record.args = _KEY_IN_URL.sub(r"\1***", message), None
        return True


_FILTER = _RedactKeys()
for _name in ("urllib3.connectionpool", "urllib3"):
    if _FILTER not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_FILTER)


def redact(text: str, secret: str | None = None) -> str:
    """`text` with `secret` and any `api_key=` query value replaced by ***."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_IN_URL.sub(r"\1***", text)


def _reason(exc: requests.RequestException, secret: str) -> str:
    """A short cause (`ConnectTimeout`, `[Errno 111] Connection refused`) without the URL and its key."""
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
    return type(exc).__name__ + (f" ({redact(errno.group(0).strip(), secret)})" if errno else "")


def _error_message(status: int, text: str) -> str:
    """Roboflow's own message from `{"error": {"message": ...}}` (or a short body excerpt)."""
    try:
        payload = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:200].strip() or 'no body'}"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if isinstance(payload, dict) and payload.get("message"):
        return str(payload["message"])
    return f"HTTP {status}: {str(payload)[:200]}"


def _count(info: Mapping[str, Any], key: str, where: str) -> int:
    value = info.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RoboflowError(f"Roboflow's answer to GET /{where} has {key}={repr(value)[:40]}, expected a count",
                            status=200)
    return value


def parse_project_info(workspace: str, project: str, payload: Any) -> ProjectInfo:
    """GET /{workspace}/{project}'s JSON -> ProjectInfo; any other shape is a RoboflowError saying what came."""
    where = f"{workspace}/{project}"
    info = payload.get("project") if isinstance(payload, dict) else None
    if not isinstance(info, dict):
        shape = type(payload).__name__ if not isinstance(payload, dict) else "an object without `project`"
        raise RoboflowError(f"Roboflow's answer to GET /{where} is {shape} ({str(payload)[:80]!r}), "
                            "expected an object with a `project` object (is apiUrl the Roboflow API?)", status=200)
    raw_versions = payload.get("versions") or []
    ids = [str(v.get("id", "")).rsplit("/", 1)[-1] for v in raw_versions if isinstance(v, dict)] \
        if isinstance(raw_versions, list) else []
    classes = info.get("classes") or {}
    return ProjectInfo(workspace=workspace, project=project, images=_count(info, "images", where),
                       unannotated=_count(info, "unannotated", where),
                       classes=tuple(str(c) for c in classes) if isinstance(classes, (dict, list)) else (),
                       versions=tuple(sorted(int(i) for i in ids if i.isdigit())))


class RoboflowClient:
    """Talks to one Roboflow API base URL with one key. Thread-safe (one HTTP session per thread)."""

    def __init__(self, api_key: str, api_url: str = DEFAULT_API_URL, *,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT, deadline: float | None = None) -> None:
        """`deadline`: a total limit in seconds for each GET (connect to last byte), see kontinual.common.deadline_http."""
        if not api_key:
            raise ValueError("a Roboflow API key is required (it comes from a Secret via the environment)")
        self._key = api_key
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.deadline = deadline
        self._local = threading.local()

    def __repr__(self) -> str:  # never the key
        return f"RoboflowClient(api_url={self.api_url!r})"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _call(self, method: str, path: str, *, params: Iterable[tuple[str, str]] = (),
              ok: tuple[int, ...] = (200,), **kwargs: Any) -> tuple[int, Any]:
        url = f"{self.api_url}/{path.lstrip('/')}"
        query = [("api_key", self._key), *params]
        if method == "GET" and self.deadline is not None and not kwargs:
            try:
                answer = deadline_http.get(url, query, deadline=self.deadline)
            except OSError as exc:  # DeadlineError, HTTPFailure: messages without the URL's query
                raise RoboflowError(f"cannot reach Roboflow at {self.api_url}: {redact(str(exc), self._key)}") from None
            status, text = answer.status, answer.body.decode("utf-8", errors="replace")
        else:
            try:
                response = self._session().request(method, url, params=query, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:  # connection refused, timeout, DNS...
                raise RoboflowError(f"cannot reach Roboflow at {self.api_url}: {_reason(exc, self._key)}") from None
            status, text = response.status_code, response.text
        if status not in ok:
            message = redact(_error_message(status, text), self._key)
            raise RoboflowError(f"Roboflow answered HTTP {status} to {method} /{redact(path.lstrip('/'))}: {message}",
                                status=status)
        try:
            return status, json.loads(text)
        except ValueError:
            raise RoboflowError(f"Roboflow answered HTTP {status} without JSON to {method} /{path.lstrip('/')}",
                                status=status) from None

    def check_key(self) -> str:
        """The workspace the key belongs to (POST /?api_key=)."""
        _, payload = self._call("POST", "/")
        return str(payload.get("workspace", "")) if isinstance(payload, dict) else ""

    def project_info(self, workspace: str, project: str) -> ProjectInfo:
        """Counts and versions of a project (GET /{workspace}/{project})."""
        _, payload = self._call("GET", f"{workspace}/{project}")
        return parse_project_info(workspace, project, payload)

    def upload_image(self, project: str, image: bytes, *, name: str, split: str = "train", batch: str = "",
                     tags: Iterable[str] = (), content_type: str = "image/jpeg") -> UploadResult:
        """Upload one image; a duplicate (same content already in the project) counts as success."""
        params = [("batch", batch)] if batch else []
        params += [("tag", tag) for tag in tags]
        _, payload = self._call("POST", f"dataset/{project}/upload", params=params,
                                data={"name": name, "split": split},
                                files={"file": (name, image, content_type)})
        if not isinstance(payload, dict) or not (payload.get("success") or payload.get("duplicate")) or not payload.get("id"):
            raise RoboflowError(f"Roboflow did not accept the upload of {name}: {str(payload)[:200]}", status=200)
        return UploadResult(id=str(payload["id"]), duplicate=bool(payload.get("duplicate")))

    def annotate(self, project: str, image_id: str, *, name: str, annotation_file: str,
                 labelmap: Mapping[str, str] | None, prediction: bool = True) -> bool:
        """Attach an annotation file to an uploaded image; False if it was already annotated (409, benign)."""
        params = [("name", name)] + ([("prediction", "true")] if prediction else [])
        status, _ = self._call("POST", f"dataset/{project}/annotate/{image_id}", params=params, ok=(200, 409),
                               json={"annotationFile": annotation_file, "labelmap": dict(labelmap or {})})
        return status == 200


def with_retries(call: Callable[[], T], *, attempts: int = 4, base_delay: float = 0.5, max_delay: float = 8.0,
                 sleep: Callable[[float], Any] = time.sleep,
                 on_retry: Callable[[RoboflowError, float], None] | None = None) -> T:
    """Run `call`, retrying retryable RoboflowErrors with exponential backoff and full jitter.

    At most `attempts` calls; the delay before retry n is d/2 + uniform(0, d/2) with
    d = min(max_delay, base_delay * 2**n) ("equal jitter": spread out, never zero).
    `sleep` may return True to abort the remaining retries (e.g. an Event's wait at shutdown).
    """
    for attempt in range(attempts):
        try:
            return call()
        except RoboflowError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            ceiling = min(max_delay, base_delay * (2 ** attempt))
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
            if on_retry is not None:
                on_retry(exc, delay)
            if sleep(delay) is True:
                raise
    raise AssertionError("unreachable")
