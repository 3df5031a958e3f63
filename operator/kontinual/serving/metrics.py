"""A server pod's Prometheus metrics (prometheus_client): requests, latency and failures per model version, capture counters."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LOG = logging.getLogger("kontinual.serving")

# Data capture: name -> help. Counters are totals since the server process started.
METRICS: dict[str, str] = {
    "requests": "Inference requests the logger saw (pipeline_inputs calls).",
    "sampled": "Images selected by 1-of-frequency sampling.",
    "uploaded": "Images Roboflow stored as new.",
    "duplicates": "Images Roboflow already had (counted as success).",
    "annotations": "Pre-annotations (model predictions) Roboflow accepted.",
    "annotation_failures": "Pre-annotations given up on.",
    "failed": "Uploads given up on (after retries, or a non-retryable 4xx such as a bad key).",
    "retried": "Retries of Roboflow calls after 5xx, 429 or connection errors.",
}
DROPPED_HELP = "Sampled images not uploaded, by reason: queue full, maxPerMinute cap, or unusable input."
PREFIX = "kontinual_capture_"
SERVER_PREFIX = "kontinual_server_"
# Seconds of one inference (pre-process, engine, post-process): YOLOv5 on CPU is 10 ms to seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Counters:
    """The pod's series in one registry: `inc`/`drop` for data capture, `served`/`failed_request` for requests.

    Labels are the endpoint (the ContinualModel's name) and, on the request series, the model
    version the pod serves: one pod serves one version, so the label set stays bounded.
    """

    def __init__(self, endpoint: str, model_version: str = "", registry: CollectorRegistry | None = None) -> None:
        self.endpoint = endpoint
        self.model_version = str(model_version)
        self.registry = registry or CollectorRegistry()
        self.queue_depth: Callable[[], int] = lambda: 0
        self._lock = threading.Lock()
        self._reasons: set[str] = set()
        r = self.registry
        self._capture = {name: Counter(PREFIX + name, help_text, ["endpoint"], registry=r).labels(endpoint)
                         for name, help_text in METRICS.items()}
        self._dropped = Counter(PREFIX + "dropped", DROPPED_HELP, ["endpoint", "reason"], registry=r)
        self._dropped.labels(endpoint, "queue_full")  # the series exists (at 0) before the first drop
        Gauge(PREFIX + "queue_depth", "Images waiting in the upload queue.", ["endpoint"],
              registry=r).labels(endpoint).set_function(lambda: self.queue_depth())
        version = [endpoint, self.model_version]
        self._requests = Counter(SERVER_PREFIX + "requests", "Requests the server answered, by result: ok (an "
                                 "inference finished) or failed (any response but 200).",
                                 ["endpoint", "model_version", "result"], registry=r)
        self._ok = self._requests.labels(*version, "ok")
        self._failed = self._requests.labels(*version, "failed")
        self._latency = Histogram(SERVER_PREFIX + "inference_duration_seconds", "Time of one finished inference "
                                  "(pre-process, engine, post-process), as the DeepSparse pipeline timed it.",
                                  ["endpoint", "model_version"], buckets=LATENCY_BUCKETS, registry=r).labels(*version)

    def inc(self, name: str, amount: int = 1) -> None:
        self._capture[name].inc(amount)  # KeyError for a name that is not a capture counter

    def drop(self, reason: str, amount: int = 1) -> None:
        with self._lock:
            self._reasons.add(reason)
        self._dropped.labels(self.endpoint, reason).inc(amount)

    def served(self, seconds: float) -> None:
        """One inference finished in `seconds`."""
        self._ok.inc()
        self._latency.observe(seconds)

    def failed_request(self) -> None:
        """The server answered a request with anything but 200."""
        self._failed.inc()

    def snapshot(self) -> dict[str, int]:
        """Every capture counter by name, `dropped` and `dropped_<reason>`, `queue_depth`, and the request totals."""
        def value(metric: str, **labels: str) -> int:
            return int(self.registry.get_sample_value(metric, {"endpoint": self.endpoint, **labels}) or 0)

        values = {name: value(f"{PREFIX}{name}_total") for name in METRICS}
        with self._lock:
            reasons = sorted(self._reasons)
        values.update({f"dropped_{reason}": value(f"{PREFIX}dropped_total", reason=reason) for reason in reasons})
        values["dropped"] = sum(values[f"dropped_{reason}"] for reason in reasons)
        values["queue_depth"] = self.queue_depth()
        version = {"model_version": self.model_version}
        values["requests_ok"] = value(f"{SERVER_PREFIX}requests_total", **version, result="ok")
        values["requests_failed"] = value(f"{SERVER_PREFIX}requests_total", **version, result="failed")
        return values


class MetricsServer:
    """Serves `GET /metrics` from a daemon thread; a port that cannot be bound is logged, never fatal."""

    def __init__(self, counters: Counters, host: str, port: int) -> None:
        self.counters = counters
        self._server: Any = None
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=counters.registry)
        except OSError as exc:
            _LOG.error("server metrics: cannot listen on %s:%s (%s); they are not exported", host, port, exc)
            return
        _LOG.info("server metrics on http://%s:%s/metrics", host, self.port)

    @property
    def port(self) -> int | None:
        return int(self._server.server_address[1]) if self._server else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
