"""RoboflowLogger: a DeepSparse 1.8.0 custom logger that samples production images into a Roboflow project.

How DeepSparse calls it (read from deepsparse 1.8.0's legacy `pipeline.py`, `base_pipeline.py`,
`loggers/build_logger.py`, `async_logger.py`, `function_logger.py` and `server/server.py`):

* A legacy pipeline's `__call__` logs `pipeline_inputs` (the parsed `YOLOInput`; on the
  from_files route `images` is a list of HxWxC uint8 arrays), then engine inputs/outputs, then
  `pipeline_outputs` (the `YOLOOutput`), each through `Pipeline.log`, which adds only
  `pipeline_name=<endpoint name>` (no request id).
* Every call goes to one `AsyncLogger(MultiLogger(function_loggers), max_workers=1)`: one
  worker thread, unbounded queue, so this logger sees calls in submission order, off the
  request thread. The `data_logging` FunctionLoggers each keep their own `frequency` counter.
* The server's inference routes are `async def` handlers that call the pipeline synchronously on
  the event loop (uvicorn runs one worker), so one endpoint's requests run one after another:
  request k's `pipeline_inputs` and `pipeline_outputs` are submitted back to back, with nothing
  of the same pipeline in between. Only a request that fails between the two (no outputs) or
  another endpoint's calls (a different `pipeline_name`) can come between.

Design that follows from this:

* The operator renders both data_logging entries with `frequency: 1` and gives the logger the
  spec's frequency; the logger does the 1-of-N sampling itself, counting `pipeline_inputs`
  calls. Two independent FunctionLogger counters would drift apart after a failed request
  and pair one request's image with another request's boxes. Sampling here costs nothing
  on the request path: the request thread hands every log call to the AsyncLogger anyway.
* Pairing: a sampled request's images wait in a one-slot "pending" entry per pipeline; the
  very next `pipeline_outputs` of that pipeline completes it, after checking that the batch
  sizes agree. A new `pipeline_inputs` finding the slot full means the previous request failed
  before its outputs: its images are uploaded without predictions.
* The `maxPerMinute` cap is applied at sampling time; then a non-blocking hand-off to
  `capture.Uploader` (bounded queue, worker threads, retries). This thread never does I/O.
* Counters are served with prometheus_client (`metrics.MetricsServer`); an `atexit` hook
  drains the queue for a bounded time when the server process exits.
* Request metrics come from DeepSparse's own system logging, which reaches every leaf logger:
  each finished inference logs `<pipeline>/prediction_latency/total_inference_seconds` (on by
  default), and with the server config's `system_logging.request_details` on, the server's
  middleware logs `request_details/successful_request_count` (1 for a 200, else 0) for every HTTP
  response. Health probes answer 200, so the failures are the requests a client saw fail.

The API key is read from the environment (`ROBOFLOW_API_KEY`, from a Secret); the server
config holds none, and nothing here logs it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import Any

import numpy
from deepsparse.legacy.loggers import BaseLogger

from kontinual.common.capture_settings import CaptureSettings
from kontinual.common.names import METRICS_HOST_ENV
from kontinual.serving.capture import RateCap, Sample, Uploader, client_for
from kontinual.serving.metrics import Counters, MetricsServer

_LOG = logging.getLogger("kontinual.serving")
INPUTS, OUTPUTS = "pipeline_inputs", "pipeline_outputs"
# System logging identifiers (deepsparse 1.8.0: legacy/pipeline.py log_inference_times, prefixed with the
# pipeline name; server/system_logging.py SystemLoggingMiddleware, once per HTTP response, 1 for a 200).
LATENCY_ID = "/prediction_latency/total_inference_seconds"
REQUEST_ID = "request_details/successful_request_count"


def _ensure_log_handler() -> None:
    """DeepSparse's server configures only uvicorn's loggers: give ours a stderr handler of its own."""
    logger = logging.getLogger("kontinual")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _images(value: Any) -> list[Any]:
    """The request images in a YOLOInput (arrays on the from_files route, file paths on the JSON route)."""
    images = getattr(value, "images", None)
    if images is None:
        return []
    if isinstance(images, (str, numpy.ndarray)):
        array = numpy.asarray(images) if not isinstance(images, str) else None
        if array is not None and array.ndim == 4:
            return [numpy.array(image) for image in array]
        images = [images]
    return [image if isinstance(image, str) else numpy.array(image) for image in images]  # copies


class RoboflowLogger(BaseLogger):
    """Leaf logger built by DeepSparse from the server config's `loggers:` entry (keyword arguments)."""

    def __init__(self, **settings: Any) -> None:
        """`settings` is the logger entry the operator renders (`CaptureSettings.to_mapping()`), less `path`."""
        self.config = CaptureSettings.from_mapping(settings, where="RoboflowLogger")
        _ensure_log_handler()
        client = client_for(self.config)
        self.counters = Counters(self.config.endpoint, self.config.model_version)
        self.uploader = Uploader(self.config, client, self.counters)
        self.metrics = MetricsServer(self.counters, os.environ.get(METRICS_HOST_ENV, "0.0.0.0"), self.config.metrics_port)
        self._cap = RateCap(self.config.max_per_minute)
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._pending: dict[str, list[Any]] = {}
        self._closed = False
        atexit.register(self.close)
        self._drain_on_sigterm()
        _LOG.info("data capture: 1 of every %d requests of %s to Roboflow project %s/%s (at most %d/min)",
                  self.config.frequency, self.config.endpoint, self.config.workspace, self.config.project,
                  self.config.max_per_minute)

    def log(self, identifier: str, value: Any, category: Any = None, **kwargs: Any) -> None:
        stage = identifier.rsplit("/", 1)[-1].split("__", 1)[0]
        if stage not in (INPUTS, OUTPUTS):
            self._system(identifier, value)
            return
        pipeline = str(kwargs.get("pipeline_name") or identifier.split("/", 1)[0])
        try:
            if stage == INPUTS:
                self._on_inputs(pipeline, value)
            else:
                self._on_outputs(pipeline, value)
        except Exception:  # never let data capture break DeepSparse's logging thread
            _LOG.exception("data capture: could not handle %s", identifier)

    def _system(self, identifier: str, value: Any) -> None:
        """DeepSparse's system logging: a finished inference's time, and each HTTP response's success."""
        try:
            if identifier.endswith(LATENCY_ID):
                self.counters.served(float(value))
            elif identifier == REQUEST_ID and not value:
                self.counters.failed_request()
        except Exception:  # never let metrics break DeepSparse's logging thread
            _LOG.exception("server metrics: could not count %s", identifier)

    def _on_inputs(self, pipeline: str, value: Any) -> None:
        with self._lock:
            orphan = self._pending.pop(pipeline, None)
            count = self._seen.get(pipeline, 0)
            self._seen[pipeline] = count + 1
        self.counters.inc("requests")
        if orphan:  # the previous sampled request never produced outputs (it failed)
            for image in orphan:
                self.uploader.submit(Sample(image))
        if count % self.config.frequency:
            return
        images = _images(value)
        if not images:
            self.counters.drop("unusable_input")
            return
        self.counters.inc("sampled", len(images))
        admitted = [image for image in images if self._cap.admit()]
        if len(admitted) < len(images):
            self.counters.drop("rate_limited", len(images) - len(admitted))
        if not admitted:
            return
        if self.config.upload_predictions and len(admitted) == len(images):
            with self._lock:
                self._pending[pipeline] = admitted
            return
        for image in admitted:  # no predictions wanted (or a partial batch): upload the images alone
            self.uploader.submit(Sample(image))

    def _on_outputs(self, pipeline: str, value: Any) -> None:
        with self._lock:
            images = self._pending.pop(pipeline, None)
        if not images:
            return
        boxes, labels = getattr(value, "boxes", None), getattr(value, "labels", None)
        if boxes is None or labels is None or len(boxes) != len(images) or len(labels) != len(images):
            _LOG.warning("data capture: outputs do not match the sampled request (%d images); "
                         "uploading without pre-annotations", len(images))
            for image in images:
                self.uploader.submit(Sample(image))
            return
        for image, image_boxes, image_labels in zip(images, boxes, labels):
            self.uploader.submit(Sample(image, list(image_boxes), list(image_labels)))

    def _drain_on_sigterm(self) -> None:
        """Drain on SIGTERM too: uvicorn (0.29+) shuts down gracefully, restores the previous SIGTERM
        handler and re-raises the signal, so with the default handler the process dies without
        running atexit hooks. This handler drains, then lets the signal take its previous course."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self.close()
            if callable(previous):
                previous(signum, frame)
                return
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread of the main interpreter
            return
        self._sigterm = (on_sigterm, previous)

    def _restore_sigterm(self) -> None:
        handler, previous = getattr(self, "_sigterm", (None, None))
        if handler is not None and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    def close(self, timeout: float | None = None) -> None:
        """Upload what is pending and queued (bounded by drain_seconds), then stop the metrics server."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = list(self._pending.values()), {}
        self._restore_sigterm()
        for images in pending:
            for image in images:
                self.uploader.submit(Sample(image))
        self.uploader.close(timeout)
        self.metrics.close()
        _LOG.info("data capture: stopped; %s", self.counters.snapshot())

    def __str__(self) -> str:
        return f"RoboflowLogger(endpoint={self.config.endpoint}, project={self.config.workspace}/{self.config.project})"
