"""Render the DeepSparse server config's Roboflow logger entry and the endpoint's data_logging (pure).

DeepSparse 1.8.0 loads a custom logger from `path: <file>:<Class>` with
`importlib.util.spec_from_file_location` (legacy/loggers/build_logger.py), so `path` must be a
file, not a dotted module path. It points at `kontinual/serving/deepsparse_plugin.py` inside the
installed `kontinual` package, a one-line file that imports
`kontinual.serving.roboflow_logger.RoboflowLogger` by module path: nothing is copied into the pod
and there is exactly one logger module. The path is computed from where `kontinual` is installed
in the rendering process (found with importlib, without importing the serving wing, which needs
deepsparse). The operator and server images both install `kontinual` (not editable) into a venv
at /opt/kontinual on Python 3.11, so in the operator's pod that is SERVER_PLUGIN_FILE, the file's
place in the server image (tests/serving checks both Dockerfiles). `kontinual render` run outside
the operator image shows the local install's path; `logger_file=` overrides it.

Sampling: both data_logging entries use `frequency: 1` and the logger gets the spec's
frequency (see kontinual.serving.roboflow_logger for why: reliable input/output pairing).
The logger entry is `kontinual.common.capture_settings.CaptureSettings`, the one shape the server
side parses back. No secret is ever rendered: the logger reads the key from the pod's environment.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from kontinual.common.capture_settings import CaptureSettings
from kontinual.controller.spec import DataLogging

LOGGER_NAME = "roboflow"
LOGGER_CLASS = "RoboflowLogger"
SERVER_VENV = "/opt/kontinual"  # images/server/Dockerfile and images/operator/Dockerfile
SERVER_PLUGIN_FILE = f"{SERVER_VENV}/lib/python3.11/site-packages/kontinual/serving/deepsparse_plugin.py"


def plugin_file() -> str:
    """Absolute path of kontinual/serving/deepsparse_plugin.py in this process's installed package."""
    spec = importlib.util.find_spec("kontinual")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the kontinual package is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "serving" / "deepsparse_plugin.py")


def capture_settings(data_logging: DataLogging, *, endpoint: str, model_version: str,
                     class_names: tuple[str, ...]) -> dict[str, Any]:
    """CaptureSettings as the server config carries them, for both runtimes: the DeepSparse logger's and kserve's `capture`."""
    rf = data_logging.roboflow
    return CaptureSettings(
        endpoint=endpoint, model_version=str(model_version), workspace=rf.workspace, project=rf.project,
        api_url=rf.api_url, split=rf.split, batch=rf.batch, tags=tuple(rf.tags), class_names=tuple(class_names),
        upload_predictions=data_logging.upload_predictions, frequency=data_logging.frequency,
        max_per_minute=data_logging.max_per_minute, queue_size=data_logging.queue_size,
        metrics_port=data_logging.metrics_port).to_mapping()


def render_logging(data_logging: DataLogging, *, endpoint: str, model_version: str,
                   class_names: tuple[str, ...], logger_file: str | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the DeepSparse server config's top-level `loggers` mapping, the endpoint's `data_logging` mapping)."""
    logger: dict[str, Any] = {
        "path": f"{logger_file or plugin_file()}:{LOGGER_CLASS}",
        **capture_settings(data_logging, endpoint=endpoint, model_version=model_version, class_names=class_names),
    }
    every_call = [{"func": "identity", "frequency": 1, "target_loggers": [LOGGER_NAME]}]
    targets: dict[str, Any] = {"pipeline_inputs": every_call}
    if data_logging.upload_predictions:
        targets["pipeline_outputs"] = [dict(every_call[0], target_loggers=[LOGGER_NAME])]
    return {LOGGER_NAME: logger}, targets
