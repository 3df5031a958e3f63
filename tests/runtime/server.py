"""Run the kserve runtime (`python -m kontinual.serving.kserve_runtime` in .venv-runtime) from the config Kontinual's
builder renders for a ContinualModel with spec.serving.runtime set: the same handle as tests/serving's DeepSparseServer."""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from kontinual.common import yamlio
from kontinual.controller import builders
from kontinual.controller.settings import Settings
from tests.serving.server import READY_TIMEOUT, DeepSparseServer, free_port, parse

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"


def with_runtime(cr: dict[str, Any], runtime: str) -> dict[str, Any]:
    """The same ContinualModel with spec.serving.runtime set, as a user would switch it."""
    cr = copy.deepcopy(cr)
    cr["spec"].setdefault("serving", {})["runtime"] = runtime
    return cr


class KServeServer(DeepSparseServer):
    """`with KServeServer(cr, api_key, workdir) as server:` the kserve runtime, ready, on 127.0.0.1."""

    def __init__(self, cr: dict[str, Any], api_key: str, workdir: Path, *, target: builders.ModelTarget | None = None,
                 **capture_overrides: Any) -> None:
        if not RUNTIME_PYTHON.is_file():
            pytest.skip(f"{RUNTIME_PYTHON} missing: `make venv` creates it")
        self.spec = parse(cr)
        assert self.spec.serving.runtime != "deepsparse", "a KServeServer needs spec.serving.runtime openvino/onnxruntime"
        self.config = builders.server_config(self.spec, target)  # target: the model version served (default the seed)
        if capture_overrides:  # test-only knobs (back-off, workers) are capture keywords, as the logger's
            self.config["capture"].update(capture_overrides)
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

    def __enter__(self) -> "KServeServer":
        env = dict(os.environ, ROBOFLOW_API_KEY=self.api_key, KONTINUAL_METRICS_HOST="127.0.0.1",
                   PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT / "operator"))
        # The container's command, with the port the test chose (the builder's is spec.serving.port).
        command = builders.runtime(self.spec, Settings()).command
        assert command[:3] == ["python", "-m", builders.KSERVE_RUNTIME_MODULE]
        command = [str(RUNTIME_PYTHON), *command[1:]]
        command[command.index("--config-file") + 1] = str(self.config_file)
        command[command.index("--http_port") + 1] = str(self.port)
        self._log = open(self.log_file, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                        start_new_session=True)
        ready = f"{self.url}{builders.runtime(self.spec, Settings()).ready_path}"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the kserve runtime exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if requests.get(ready, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the kserve runtime not ready in {READY_TIMEOUT:.0f} s:\n{self.output()[-3000:]}")
