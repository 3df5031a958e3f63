"""The trainer's Roboflow download has a total deadline: a server that drips bytes fails the run in time, not in a day."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.badhttp import Dripping
from tests.training.conftest import run_train

KEY = "rf-drip-key-3b9d"


def test_a_dripping_roboflow_fails_the_run_at_the_download_deadline(tmp_path: Path, tiny_model_config: Path) -> None:
    with Dripping(interval=1.0) as drip:  # the roboflow SDK has no timeouts: it would wait for ever
        started = time.monotonic()
        run = run_train(["--base-weights", str(tiny_model_config),  # a start that needs no download
                         "--roboflow-workspace", "acme", "--roboflow-project", "soccer", "--output-dir",
                         str(tmp_path / "m"), "--version", "1", "--download-timeout", "5"],
                        result_file=tmp_path / "result.json", env={"API_URL": drip.url, "ROBOFLOW_API_KEY": KEY},
                        timeout=240)
        elapsed = time.monotonic() - started
        assert drip.connections >= 1  # it did reach the server, and hung there
    assert run.code == 1, run.log[-2000:]
    assert run.result["status"] == "Failed" and run.result["reason"] == "DatasetDownloadFailed"
    assert "within 5 s (--download-timeout)" in run.result["message"]
    assert KEY not in run.log
    assert not (tmp_path / "m" / "v1").exists()
    print(f"kontinual train gave up after {elapsed:.1f} s (5 s download deadline, the rest is start-up)")


def test_a_dripping_roboflow_fails_version_generation_at_its_deadline(tmp_path: Path,
                                                                     tiny_model_config: Path) -> None:
    with Dripping(interval=1.0) as drip:
        run = run_train(["--base-weights", str(tiny_model_config),  # a start that needs no download
                         "--roboflow-workspace", "acme", "--roboflow-project", "soccer", "--output-dir",
                         str(tmp_path / "m"), "--version", "1", "--generate-version",
                         '{"preprocessing": {}, "augmentation": {}}', "--generate-timeout", "5"],
                        result_file=tmp_path / "result.json", env={"API_URL": drip.url, "ROBOFLOW_API_KEY": KEY},
                        timeout=240)
        assert drip.connections >= 1
    assert run.result.get("reason") == "DatasetGenerationFailed", run.log[-2000:]
    assert "within 5s" in run.result["message"] and KEY not in run.log
