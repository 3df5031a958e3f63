"""At KONTINUAL_LOG_LEVEL=DEBUG the operator's log holds no Secret value (API responses, Roboflow URLs)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kontinual.controller.access import SECRET_LABEL
from tests.support.roboflow_double import RoboflowDouble

PASSWORD = "s3cret-roboflow-key-in-a-secret"
SECRET = {"apiVersion": "v1", "kind": "Secret",
          "metadata": {"name": "roboflow", "namespace": "vision", "labels": {SECRET_LABEL: "true"}},
          "data": {"apiKey": base64.b64encode(PASSWORD.encode()).decode()}, "type": "Opaque"}
# What the operator's process does with the Secret when it polls: settings, logging, client, read, poll.
SCRIPT = """
import logging, sys
from kontinual.controller import k8s
from kontinual.controller.access import SECRET_LABEL
from kontinual.controller.operator_logging import setup_logging
from kontinual.common.roboflow import RoboflowClient
from kontinual.controller.settings import Settings
settings = Settings.from_env()
setup_logging(settings.log_level, settings.log_format)
logging.getLogger("kontinual").debug("debug logging is on")
k8s.load_config()
key = k8s.secret_value("vision", "roboflow", "apiKey", label=SECRET_LABEL)
RoboflowClient(key, sys.argv[1]).project_info("acme", "soccer")
print("read", len(key), "characters", flush=True)
"""


class _SecretApi(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = SECRET if "PartialObjectMetadata" not in self.headers.get("Accept", "") else {
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": SECRET["metadata"]}
        data = json.dumps(body).encode()
        self.send_response(200 if self.path == "/api/v1/namespaces/vision/secrets/roboflow" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SecretApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_debug_logging_never_prints_a_secret(api: str, tmp_path: Path, log_format: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": api}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    with RoboflowDouble(api_key=PASSWORD) as rf:
        rf.set_annotated("soccer", 3)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KONTINUAL_LOG_LEVEL": "DEBUG",
               "KONTINUAL_LOG_FORMAT": log_format}
        run = subprocess.run([sys.executable, "-c", SCRIPT, rf.url], env=env, capture_output=True, text=True,
                             timeout=60)
        assert rf.requests, "the poll did not reach the Roboflow double"
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert f"read {len(PASSWORD)} characters" in log
    assert "debug logging is on" in log, "the log is not at DEBUG level: the test would prove nothing"
    for form in (PASSWORD, SECRET["data"]["apiKey"]):
        assert form not in log, f"the Secret's value is in the DEBUG log:\n{log}"
