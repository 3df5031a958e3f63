"""The kserve runtime's metrics endpoint, started from the builder's config: requests, latency and failures per
model version and the capture counters, under the same names and labels as a DeepSparse Server pod's
(tests/serving/test_server_metrics.py), so one dashboard covers both runtimes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kontinual.controller import builders
from kontinual.serving.metrics import LATENCY_BUCKETS
from tests.runtime.server import KServeServer, with_runtime
from tests.serving.conftest import jpeg
from tests.serving.server import continual_model, free_port, parse
from tests.serving.test_server_metrics import families, labels, registered, scrape, wait_for
from tests.support.roboflow_double import RoboflowDouble

pytestmark = pytest.mark.slow
VERSION = "3"  # a promoted version, so the label shown is the version served, not a constant


@pytest.fixture(scope="module")
def server(yolo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServeServer]:
    with RoboflowDouble() as rf:
        cr = with_runtime(continual_model("soccer", yolo_onnx, rf.url, frequency=2, metrics_port=free_port()),
                          "openvino")
        seed = builders.ModelTarget.seed(parse(cr))
        # Version 3 as the operator renders it after a promotion (served here from the same local file).
        target = builders.ModelTarget(version=int(VERSION), source=seed.source, class_names=seed.class_names)
        with KServeServer(cr, rf.api_key, tmp_path_factory.mktemp("metrics-server"), target=target) as running:
            yield running


def test_requests_latency_and_failures_per_model_version(server: KServeServer) -> None:
    version = {"endpoint": "soccer", "model_version": VERSION}
    ok = ("kontinual_server_requests_total", labels(**version, result="ok"))
    failed = ("kontinual_server_requests_total", labels(**version, result="failed"))
    count = ("kontinual_server_inference_duration_seconds_count", labels(**version))
    _, before = scrape(server)
    assert before[ok] == 0 and before[failed] == 0 and before[count] == 0

    round_trips = []
    for i in range(4):
        started = time.monotonic()
        assert server.infer(jpeg(160, 120, 100 + i)).status_code == 200
        round_trips.append(time.monotonic() - started)
    # kserve's own OIP v2 tensor route is an inference too (the engine alone), as DeepSparse's JSON route is.
    size = 320  # the session model's static input, [1, 3, 320, 320]
    tensor = {"inputs": [{"name": "images", "shape": [1, 3, size, size], "datatype": "FP32",
                          "data": numpy.zeros(3 * size * size).tolist()}]}
    started = time.monotonic()
    oip = requests.post(f"{server.url}/v2/models/soccer/infer", json=tensor, timeout=60)
    assert oip.status_code == 200, oip.text[:500]
    round_trips.append(time.monotonic() - started)

    bad_upload = requests.post(server.infer_url, files=[("request", ("x.jpg", b"not an image", "image/jpeg"))],
                               timeout=30)
    no_field = requests.post(server.infer_url, files=[("image", ("x.jpg", jpeg(32, 32, 1), "image/jpeg"))], timeout=30)
    unknown_model = server.infer_url.replace("/soccer/", "/nosuchmodel/")
    no_model = requests.post(unknown_model, files=[("request", ("x.jpg", jpeg(32, 32, 2), "image/jpeg"))], timeout=30)
    assert (bad_upload.status_code, no_field.status_code, no_model.status_code) == (400, 422, 404)
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/soccer/ready"):  # probes: neither
        assert requests.get(f"{server.url}{path}", timeout=5).status_code == 200

    after = wait_for(server, lambda s: s[ok] >= 5 and s[failed] >= 3)
    assert (after[ok], after[failed], after[count]) == (5, 3, 5)
    assert not any(name == "kontinual_server_requests_total" and dict(key)["model_version"] != VERSION
                   for name, key in after), "only the served version has series"

    # The histogram as histogram_quantile reads it: cumulative buckets, +Inf == count, and no inference
    # longer than the client's whole round trip (the server times less than the client waited).
    bucket = {le: after[("kontinual_server_inference_duration_seconds_bucket", labels(**version, le=le))]
              for le in [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]}
    values = list(bucket.values())
    assert values == sorted(values) and bucket["+Inf"] == 5
    slowest = max(round_trips)
    covering = [b for b in LATENCY_BUCKETS if b >= slowest]
    if covering:
        assert bucket[str(covering[0])] == 5, (bucket, round_trips)
    total = after[("kontinual_server_inference_duration_seconds_sum", labels(**version))]
    assert 0 < total <= sum(round_trips)
    # Data capture beside them: the 4 from_files requests reached the model (the failed uploads did not),
    # 1 of every 2 sampled (requests 1 and 3).
    assert after[("kontinual_capture_requests_total", labels(endpoint="soccer"))] == 4
    assert after[("kontinual_capture_sampled_total", labels(endpoint="soccer"))] == 2


def test_same_families_and_labels_as_a_deepsparse_server_pod(server: KServeServer) -> None:
    """What tests/serving/test_server_metrics.py asserts of DeepSparse Server: the names, types and labels of
    kontinual.serving.metrics, and nothing else on the metrics port (kserve's own metrics stay on its HTTP port)."""
    text, _ = scrape(server)
    for name, kind in [("kontinual_server_requests_total", "counter"),
                       ("kontinual_server_inference_duration_seconds", "histogram"),
                       ("kontinual_capture_uploaded_total", "counter"), ("kontinual_capture_queue_depth", "gauge")]:
        assert f"# TYPE {name} {kind}" in text and f"# HELP {name} " in text
    assert families(text_string_to_metric_families(text)) == registered()
