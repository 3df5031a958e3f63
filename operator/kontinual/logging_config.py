"""Render the DeepSparse server config's Roboflow logger entry and the endpoint's data_logging.

(Initial version by the lead so the builders import; the data-capture work owns and refines it.)
"""

from __future__ import annotations

from typing import Any

from kontinual.spec import DataLogging

LOGGER_NAME = "roboflow"
LOGGER_PATH = "kontinual.serving.roboflow_logger:RoboflowLogger"


def render_logging(data_logging: DataLogging, *, endpoint: str, model_version: str,
                   class_names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    rf = data_logging.roboflow
    logger: dict[str, Any] = {
        "path": LOGGER_PATH,
        "workspace": rf.workspace,
        "project": rf.project,
        "api_url": rf.api_url,
        "split": rf.split,
        "batch": rf.batch,
        "tags": list(rf.tags),
        "upload_predictions": data_logging.upload_predictions,
        "max_per_minute": data_logging.max_per_minute,
        "queue_size": data_logging.queue_size,
        "metrics_port": data_logging.metrics_port,
        "endpoint": endpoint,
        "model_version": model_version,
    }
    if class_names:
        logger["class_names"] = list(class_names)
    target = [{"func": "identity", "frequency": data_logging.frequency, "target_loggers": [LOGGER_NAME]}]
    return {LOGGER_NAME: logger}, {"pipeline_inputs": target, "pipeline_outputs": [dict(t) for t in target]}
