"""Operator logging: plain text for people, JSON (one object a line) for log shippers."""

from __future__ import annotations

import logging

import kopf


def setup_logging(level: str, log_format: str) -> None:
    fmt = kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(debug=level == "DEBUG", verbose=level in ("DEBUG", "INFO"), log_format=fmt)
    logging.getLogger().setLevel(level)
    # The Kubernetes client logs every request at DEBUG; keep it quiet unless asked.
    logging.getLogger("kubernetes").setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
