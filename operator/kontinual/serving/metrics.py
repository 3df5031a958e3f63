"""Data-capture counters and their Prometheus text exposition on a port of the pod."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

_LOG = logging.getLogger("kontinual.serving")

# name -> (type, help). Counters are totals since the server process started.
METRICS: dict[str, tuple[str, str]] = {
    "requests": ("counter", "Inference requests the logger saw (pipeline_inputs calls)."),
    "sampled": ("counter", "Images selected by 1-of-frequency sampling."),
    "uploaded": ("counter", "Images Roboflow stored as new."),
    "duplicates": ("counter", "Images Roboflow already had (counted as success)."),
    "annotations": ("counter", "Pre-annotations (model predictions) Roboflow accepted."),
    "annotation_failures": ("counter", "Pre-annotations given up on."),
    "dropped": ("counter", "Sampled images not uploaded: queue full, maxPerMinute cap, or unusable input."),
    "failed": ("counter", "Uploads given up on (after retries, or a non-retryable 4xx such as a bad key)."),
    "retried": ("counter", "Retries of Roboflow calls after 5xx, 429 or connection errors."),
    "queue_depth": ("gauge", "Images waiting in the upload queue."),
}
PREFIX = "kontinual_capture_"


class Counters:
    """Thread-safe counters; `dropped` is split by reason."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self.queue_depth: Callable[[], int] = lambda: 0

    def inc(self, name: str, amount: int = 1) -> None:
        if name not in METRICS:
            raise KeyError(name)
        with self._lock:
            self._values[name] += amount

    def drop(self, reason: str, amount: int = 1) -> None:
        with self._lock:
            self._values["dropped"] += amount
            self._dropped[reason] += amount

    def snapshot(self) -> dict[str, int]:
        """Every metric by name, plus `dropped_<reason>` entries."""
        with self._lock:
            values = {name: self._values[name] for name in METRICS if name != "queue_depth"}
            values.update({f"dropped_{reason}": count for reason, count in self._dropped.items()})
        values["queue_depth"] = self.queue_depth()
        return values

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        values = self.snapshot()
        label = f'endpoint="{self.endpoint}"'
        lines: list[str] = []
        for name, (kind, help_text) in METRICS.items():
            full = PREFIX + name + ("_total" if kind == "counter" else "")
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
            if name == "dropped":
                with self._lock:
                    reasons = dict(self._dropped) or {"queue_full": 0}
                lines += [f'{full}{{{label},reason="{r}"}} {c}' for r, c in sorted(reasons.items())]
            else:
                lines.append(f"{full}{{{label}}} {values[name]}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves `GET /metrics` from a daemon thread; a port that cannot be bound is logged, never fatal."""

    def __init__(self, counters: Counters, host: str, port: int) -> None:
        self.counters = counters
        self._server: ThreadingHTTPServer | None = None
        counters_ref = counters

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = counters_ref.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            _LOG.error("data capture metrics: cannot listen on %s:%s (%s); counters are not exported", host, port, exc)
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="kontinual-metrics", daemon=True).start()
        _LOG.info("data capture metrics on http://%s:%s/metrics", host, self.port)

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
