"""Run a real `deepsparse.server` process from the config Kontinual's builder renders for a ContinualModel."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from kontinual.controller import builders, spec as specs
from kontinual.common import yamlio
from kontinual.controller.settings import Settings

CLASS_NAMES = ["ball", "goalkeeper", "player", "referee"]
READY_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def continual_model(name: str, model: Path, rf_url: str, *, frequency: int, upload_predictions: bool = True,
                    max_per_minute: int = 1000, queue_size: int = 100, metrics_port: int,
                    batch: str = "production", tags: tuple[str, ...] = ("production", "camera-1"),
                    data_logging: bool = True) -> dict[str, Any]:
    """A ContinualModel with dataLogging, as a user would write it (serving a local ONNX file)."""
    cr = {
        "apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
        "metadata": {"name": name, "namespace": "vision"},
        "spec": {
            "task": "yolo",
            "classNames": CLASS_NAMES,
            "model": {"uri": f"file://{model.resolve()}"},
            "dataLogging": {
                "frequency": frequency, "maxPerMinute": max_per_minute, "uploadPredictions": upload_predictions,
                "queueSize": queue_size, "metricsPort": metrics_port,
                "roboflow": {"workspace": "acme", "project": "soccer-players",
                             "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"},
                             "apiUrl": rf_url, "split": "valid", "batch": batch, "tags": list(tags)},
            },
        },
    }
    if not data_logging:
        del cr["spec"]["dataLogging"]
    return cr


def parse(cr: dict[str, Any]) -> specs.Spec:
    """The operator's parse, configured (as the tests' own operator would be) to allow the CR's Roboflow double."""
    url = ((cr["spec"].get("dataLogging") or {}).get("roboflow") or {}).get("apiUrl")
    return specs.parse(cr, Settings(roboflow_api_urls=(url,) if url else ()))


class DeepSparseServer:
    """`with DeepSparseServer(cr, api_key, workdir) as server:` a ready server on 127.0.0.1."""

    def __init__(self, cr: dict[str, Any], api_key: str, workdir: Path, *, model_file: Path | None = None,
                 settings: Settings | None = None, **logger_overrides: Any) -> None:
        self.spec = parse(cr)
        self.config = builders.server_config(self.spec)
        # With operator `settings`: the plain env values of the server container the Deployment builder
        # renders (e.g. SPARSEZOO_API_URL), HOME moved from the pod's /tmp emptyDir into `workdir`.
        self.pod_env: dict[str, str] = {}
        if settings is not None:
            container = builders.deployment(self.spec, settings)["spec"]["template"]["spec"]["containers"][0]
            self.pod_env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            if "HOME" in self.pod_env:
                self.pod_env["HOME"] = str(workdir / "home")
        if model_file is not None:
            # The CR names a model this machine cannot fetch (a zoo: stub): serve a local stand-in
            # of the same shape; everything else stays exactly as the builder rendered it.
            self.config["endpoints"][0]["model"] = str(model_file.resolve())
        # Test-only knobs (shorter back-off, fewer workers) go through the same logger kwargs.
        if logger_overrides:  # test-only knobs (back-off, workers) are logger kwargs too
            self.config["loggers"]["roboflow"].update(logger_overrides)
        self.workdir = workdir
        self.config_file = workdir / f"{self.spec.name}-server.yaml"
        self.config_file.write_text(yamlio.dump(self.config))
        self.log_file = workdir / f"{self.spec.name}-server.log"
        self.port = free_port()
        self.metrics_port = self.spec.data_logging.metrics_port if self.spec.data_logging else None
        self.url = f"http://127.0.0.1:{self.port}"
        self.infer_url = f"{self.url}/v2/models/{self.spec.name}/infer/from_files"
        self.api_key = api_key
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "DeepSparseServer":
        env = dict(os.environ, ROBOFLOW_API_KEY=self.api_key, KONTINUAL_METRICS_HOST="127.0.0.1",
                   NM_DISABLE_ANALYTICS="1", PYTHONUNBUFFERED="1")
        env.update(self.pod_env)
        server = Path(sys.executable).with_name("deepsparse.server")
        self._log = open(self.log_file, "wb")
        self.process = subprocess.Popen(
            [str(server), "--config-file", str(self.config_file), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"deepsparse.server exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"deepsparse.server not ready in {READY_TIMEOUT:.0f} s:\n{self.output()[-3000:]}")

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (what Kubernetes sends), then SIGKILL after `timeout`; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def infer(self, jpeg: bytes, timeout: float = 30.0) -> requests.Response:
        files = [("request", ("image.jpg", io.BytesIO(jpeg), "image/jpeg"))]
        return requests.post(self.infer_url, files=files, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """The logger's data-capture series by name (`dropped_total{reason=x}` -> `dropped_x`), from one scrape."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.startswith("kontinual_capture_") or sample.name.endswith("_created"):
                    continue
                name = sample.name.removeprefix("kontinual_capture_").removesuffix("_total")
                reason = sample.labels.get("reason")
                values[f"{name}_{reason}" if reason else name] = sample.value
        return values

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> dict[str, float]:
        """Poll the counters until `predicate(counters)` holds; return them (or fail with the last ones)."""
        deadline = time.monotonic() + timeout
        values: dict[str, float] = {}
        while time.monotonic() < deadline:
            values = self.metrics()
            if predicate(values):
                return values
            time.sleep(0.2)
        raise AssertionError(f"counters never satisfied the condition: {values}")
