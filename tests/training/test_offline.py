"""Nothing phones home: importing the trainer, evaluation, the logger and the operator attempts no outside connection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import NETGUARD

pytestmark = pytest.mark.slow


def _imports(code: str, record: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KTEST_NET_GUARD": str(record)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_plain_ultralytics_import_probes_public_dns_servers(tmp_path: Path) -> None:
    """Why kontinual.trainer.offline exists: ultralytics 8.0.124 connects to three public resolvers at import."""
    record = tmp_path / "refused.jsonl"
    done = _imports("import yolov5", record)
    assert done.returncode == 0, done.stderr
    refused = NETGUARD.refused(record)
    assert {e["event"] for e in refused} == {"socket.connect"}
    assert {e["target"] for e in refused} == {"('1.1.1.1', 53)", "('8.8.8.8', 53)", "('223.5.5.5', 53)"}


def test_the_product_imports_without_any_outside_attempt(tmp_path: Path) -> None:
    record = tmp_path / "refused.jsonl"
    done = _imports("""
        import kontinual.trainer
        import yolov5, yolov5.train, yolov5.val
        from kontinual.trainer import cli, evaluate, export, fit, model, pipeline
        import ultralytics.yolo.utils as u, ultralytics.yolo.utils.checks as checks
        import yolov5.utils.general as general
        assert u.ONLINE is False and not u.is_online() and not checks.is_online() and not general.check_online()
        import kontinual.serving.roboflow_logger
        import kontinual.controller.handlers
        import roboflow, sparsezoo, deepsparse, sparseml.pytorch
        print("imported")
        """, record)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr
    assert NETGUARD.refused(record) == []
