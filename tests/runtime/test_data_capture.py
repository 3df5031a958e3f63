"""Data capture through the kserve runtime (OpenVINO), started from the builder's config, and the Roboflow double:
the serving tier's own capture tests, run against this server (same uploads, pre-annotations, retries, counters)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.runtime.server import KServeServer, with_runtime
from tests.serving.conftest import jpeg
from tests.serving.server import continual_model, free_port
from tests.serving import test_data_capture as serving_tier
from tests.serving.test_data_capture import FAST_RETRIES, PROJECT, rf  # noqa: F401  (rf: the module's double)
from tests.support.roboflow_double import RoboflowDouble

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(rf: RoboflowDouble, yolo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeServer]:
    cr = with_runtime(continual_model("soccer", yolo_onnx, rf.url, frequency=3, metrics_port=free_port()), "openvino")
    with KServeServer(cr, rf.api_key, tmp_path_factory.mktemp("server"), **FAST_RETRIES) as running:
        yield running


def test_it_is_the_kserve_runtime(server: KServeServer) -> None:
    """Not a DeepSparse Server in disguise: kserve's own model metadata route answers, with the OpenVINO model."""
    metadata = requests.get(f"{server.url}/v2/models/soccer", timeout=10)
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["name"] == "soccer"
    assert "kserve" in server.output().lower() and "with openvino" in server.output()


# The serving tier's tests, in their order (they build on each other's counters), against this server.


def test_uploads_one_in_frequency_with_its_own_predictions(server: KServeServer, rf: RoboflowDouble) -> None:
    serving_tier.test_uploads_one_in_frequency_with_its_own_predictions(server, rf)


def test_5xx_and_429_are_retried_then_uploaded(server: KServeServer, rf: RoboflowDouble) -> None:
    serving_tier.test_5xx_and_429_are_retried_then_uploaded(server, rf)


def test_bad_key_is_not_retried_and_reported_once(server: KServeServer, rf: RoboflowDouble) -> None:
    serving_tier.test_bad_key_is_not_retried_and_reported_once(server, rf)


def test_roboflow_down_changes_nothing_for_clients_then_recovers(server: KServeServer, rf: RoboflowDouble) -> None:
    serving_tier.test_roboflow_down_changes_nothing_for_clients_then_recovers(server, rf)


def test_key_never_in_config_or_server_output(server: KServeServer, rf: RoboflowDouble) -> None:
    serving_tier.test_key_never_in_config_or_server_output(server, rf)


def test_full_queue_and_cap_drop_samples_never_requests(yolo_onnx: Path, tmp_path: Path) -> None:
    with RoboflowDouble() as double:
        double.latency = 2.0  # every upload takes two seconds
        cr = continual_model("busy", yolo_onnx, double.url, frequency=1, upload_predictions=False,
                             max_per_minute=8, queue_size=1, metrics_port=free_port())
        with KServeServer(with_runtime(cr, "openvino"), double.api_key, tmp_path, workers=1, drain_seconds=10) as busy:
            durations = []
            for i in range(14):
                started = time.monotonic()
                assert busy.infer(jpeg(96, 64, 1000 + i)).status_code == 200
                durations.append(time.monotonic() - started)
            counters = busy.metrics()
            assert (counters["requests"], counters["sampled"]) == (14, 14)
            assert counters["dropped_rate_limited"] == 6  # maxPerMinute 8
            assert counters["dropped_queue_full"] >= 1
            assert max(durations) < double.latency, durations  # no request waited for an upload
            admitted = 8 - counters["dropped_queue_full"]
            exit_code = busy.stop()  # SIGTERM: drains the queue before exiting
        assert exit_code in (0, -15)
        assert len(double.uploads_to(PROJECT)) == admitted
        assert "data capture: stopped" in busy.output()
