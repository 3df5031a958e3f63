"""Operator logging: plain text for people, JSON (one object a line) for log shippers; never a Secret's body."""

from __future__ import annotations

import logging

import kopf

# At DEBUG these log whole HTTP response bodies (kubernetes.client.rest: "response body: ..."), which
# for a Secret read are its values, and full request URLs: they stay at WARNING at every level.
QUIET_LOGGERS = ("kubernetes", "kubernetes.client.rest", "urllib3")


def setup_logging(level: str, log_format: str) -> None:
    fmt = kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(debug=level == "DEBUG", verbose=level in ("DEBUG", "INFO"), log_format=fmt)
    logging.getLogger().setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
