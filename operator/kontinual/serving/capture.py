"""The upload side of data capture: per-minute cap, bounded queue, background workers, retries, drain.

Nothing here runs on an inference request's thread: `submit` is a non-blocking `put_nowait`
(a full queue drops the sample and counts it), and JPEG encoding, uploads, pre-annotations and
retry back-off all happen on the worker threads. A dead or slow Roboflow only fills the queue.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from kontinual.common.capture_settings import CaptureSettings
from kontinual.common.roboflow import RoboflowClient, RoboflowError, with_retries
from kontinual.serving.encode import encode_jpeg, yolo_annotation
from kontinual.serving.metrics import Counters, MetricsServer

_LOG = logging.getLogger("kontinual.serving")


def client_for(settings: CaptureSettings) -> RoboflowClient | None:
    """The Roboflow client with the key from the pod's environment; None (logged, samples count as failed) without one."""
    key = os.environ.get(settings.api_key_env, "").strip()
    if not key:
        _LOG.error("data capture: %s is not set; sampled images will be counted as failed, not uploaded",
                   settings.api_key_env)
        return None
    return RoboflowClient(key, settings.api_url)


@dataclass
class Sample:
    """One sampled request image and (with uploadPredictions) the model's boxes for it."""

    image: Any
    boxes: Sequence[Sequence[float]] | None = None
    labels: Sequence[Any] | None = None
    taken_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class RateCap:
    """At most `per_minute` admissions in any sliding 60 s window."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self._clock, self._times = per_minute, clock, deque[float]()

    def admit(self) -> bool:
        now = self._clock()
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return False
        self._times.append(now)
        return True


def _pod_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", os.environ.get("HOSTNAME") or socket.gethostname() or "pod")


class Uploader:
    """Bounded queue of samples and the worker threads that send them to Roboflow."""

    def __init__(self, config: CaptureSettings, client: RoboflowClient | None, counters: Counters) -> None:
        self.config, self.client, self.counters = config, client, counters
        self._queue: queue.Queue[Sample] = queue.Queue(maxsize=max(1, config.queue_size))
        counters.queue_depth = self._queue.qsize
        self._closing = threading.Event()
        self._abort = threading.Event()  # set when the drain deadline passes: stop retry back-offs
        self._seq_lock = threading.Lock()
        self._seq = 0
        self._pod = _pod_name()
        self._reported: set[tuple[int | None, str]] = set()
        self._last_warning = 0.0
        self._workers = [threading.Thread(target=self._work, name=f"kontinual-upload-{i}", daemon=True)
                         for i in range(max(1, config.workers))]
        for worker in self._workers:
            worker.start()

    # -- called from DeepSparse's logging thread: never blocks ----------------------------
    def submit(self, sample: Sample) -> bool:
        if self._closing.is_set():
            self.counters.drop("shutdown")
            return False
        try:
            self._queue.put_nowait(sample)
            return True
        except queue.Full:
            self.counters.drop("queue_full")
            return False

    # -- shutdown ----------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Stop taking samples, upload what is queued for at most `timeout` seconds, drop the rest."""
        timeout = self.config.drain_seconds if timeout is None else timeout
        self._closing.set()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        left = 0
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        if left:
            self.counters.drop("shutdown", left)
            _LOG.warning("data capture: drain time (%.0f s) over, %d queued image(s) not uploaded", timeout, left)

    # -- worker threads ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                sample = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if self._abort.is_set():
                self.counters.drop("shutdown")
                continue
            try:
                self._process(sample)
            except Exception:  # a bug must not kill the worker
                self.counters.inc("failed")
                _LOG.exception("data capture: unexpected error while uploading an image")

    def _name(self, sample: Sample) -> str:
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        stamp = sample.taken_at.strftime("%Y%m%dT%H%M%S") + f"{sample.taken_at.microsecond // 1000:03d}Z"
        return f"{self.config.endpoint}-v{self.config.model_version}-{stamp}-{self._pod}-{seq:06d}"

    def _retrying(self, call: Callable[[], Any]) -> Any:
        def on_retry(_: RoboflowError, __: float) -> None:
            self.counters.inc("retried")
        return with_retries(call, attempts=self.config.attempts, base_delay=self.config.base_delay,
                            max_delay=self.config.max_delay, sleep=self._abort.wait, on_retry=on_retry)

    def _process(self, sample: Sample) -> None:
        cfg = self.config
        if self.client is None:
            self.counters.inc("failed")
            self._report(RoboflowError("no Roboflow API key in the environment (ROBOFLOW_API_KEY)"))
            return
        try:
            jpeg, width, height = encode_jpeg(sample.image)
        except (OSError, ValueError) as exc:
            self.counters.drop("unusable_input")
            _LOG.warning("data capture: cannot encode a sampled image: %s", exc)
            return
        stem = self._name(sample)
        client = self.client
        try:
            result = self._retrying(lambda: client.upload_image(cfg.project, jpeg, name=f"{stem}.jpg", split=cfg.split,
                                                                batch=cfg.batch, tags=cfg.tags))
        except RoboflowError as exc:
            self.counters.inc("failed")
            self._report(exc)
            return
        self.counters.inc("duplicates" if result.duplicate else "uploaded")
        if result.duplicate or not cfg.upload_predictions or sample.boxes is None:
            return
        text, labels = yolo_annotation(sample.boxes, sample.labels or [], width, height, cfg.class_names)
        try:
            self._retrying(lambda: client.annotate(cfg.project, result.id, name=f"{stem}.txt",
                                                   annotation_file=text, labelmap=labels, prediction=True))
            self.counters.inc("annotations")
        except RoboflowError as exc:
            self.counters.inc("annotation_failures")
            self._report(exc)

    def _report(self, exc: RoboflowError) -> None:
        """A non-retryable error is logged once per distinct message; retryable ones at most once a minute."""
        if not exc.retryable:
            key = (exc.status, exc.message)
            if key not in self._reported:
                self._reported.add(key)
                _LOG.error("data capture: Roboflow refused an upload, not retrying such errors: %s", exc.message)
            return
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            _LOG.warning("data capture: giving up on an image after %d attempts: %s", self.config.attempts, exc.message)


class RequestCapture:
    """1-of-`frequency` sampling, the per-minute cap and the upload queue for a server that sees each
    request's images and answer together (the kserve runtime). The DeepSparse logger pairs them itself."""

    def __init__(self, config: CaptureSettings, client: RoboflowClient | None, metrics_host: str, metrics_port: int) -> None:
        self.config = config
        self.counters = Counters(config.endpoint, config.model_version)
        self.uploader = Uploader(config, client, self.counters)
        self.metrics = MetricsServer(self.counters, metrics_host, metrics_port)
        self._cap = RateCap(config.max_per_minute)
        self._lock = threading.Lock()
        self._seen = 0
        self._closed = False

    def sample(self, images: Sequence[Any]) -> list[int]:
        """Count one request; the indices of its images to capture (empty unless it is 1 of `frequency`)."""
        with self._lock:
            count, self._seen = self._seen, self._seen + 1
        self.counters.inc("requests")
        if count % self.config.frequency or not images:
            return []
        self.counters.inc("sampled", len(images))
        admitted = [i for i in range(len(images)) if self._cap.admit()]
        if len(admitted) < len(images):
            self.counters.drop("rate_limited", len(images) - len(admitted))
        return admitted

    def submit(self, image: Any, boxes: Sequence[Sequence[float]] | None, labels: Sequence[Any] | None) -> None:
        """Queue one sampled image, with the answer's boxes and labels when pre-annotations are wanted."""
        if self.config.upload_predictions and boxes is not None:
            self.uploader.submit(Sample(image, list(boxes), list(labels or [])))
        else:
            self.uploader.submit(Sample(image))

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.uploader.close(timeout)
        self.metrics.close()
        _LOG.info("data capture: stopped; %s", self.counters.snapshot())
