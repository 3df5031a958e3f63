"""A real DeepSparse Server pod's metrics endpoint: requests, latency and failures per model version, capture counters."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kontinual.serving.metrics import Counters

from tests.serving.conftest import jpeg
from tests.serving.server import DeepSparseServer, continual_model, free_port
from tests.support.roboflow_double import RoboflowDouble

pytestmark = pytest.mark.slow
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(yolo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeepSparseServer]:
    with RoboflowDouble() as rf:
        cr = continual_model("soccer", yolo_onnx, rf.url, frequency=2, metrics_port=free_port())
        with DeepSparseServer(cr, rf.api_key, tmp_path_factory.mktemp("metrics-server")) as running:
            yield running


def scrape(server: DeepSparseServer) -> tuple[str, Samples]:
    response = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    return response.text, samples


def wait_for(server: DeepSparseServer, predicate, timeout: float = 30.0) -> Samples:  # type: ignore[no-untyped-def]
    """The logger counts on DeepSparse's logging thread, a moment after the answer: poll the scrape."""
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(server)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def families(metrics: Iterable[Metric]) -> dict[str, tuple[str, frozenset[str]]]:
    """Family name -> (type, label names but `le`): what a dashboard's queries select on. The text format
    gives each counter's and histogram's `_created` timestamps a gauge family of their own: not a series to chart."""
    return {family.name: (family.type, frozenset(k for s in family.samples for k in s.labels if k != "le"))
            for family in metrics if not family.name.endswith("_created")}


def registered() -> dict[str, tuple[str, frozenset[str]]]:
    """The families kontinual.serving.metrics.Counters registers (every runtime's server pods export these)."""
    return families(Counters("any", "0").registry.collect())


def test_requests_latency_and_failures_per_model_version(server: DeepSparseServer) -> None:
    version = {"endpoint": "soccer", "model_version": "0"}  # the seed model: what the pod serves
    ok = ("kontinual_server_requests_total", labels(**version, result="ok"))
    failed = ("kontinual_server_requests_total", labels(**version, result="failed"))
    latency_count = ("kontinual_server_inference_duration_seconds_count", labels(**version))
    _, before = scrape(server)
    assert before[ok] == 0 and before[failed] == 0 and before[latency_count] == 0

    for i in range(4):
        assert server.infer(jpeg(160, 120, 100 + i)).status_code == 200
    bad_upload = requests.post(server.infer_url, files=[("request", ("x.jpg", b"not an image", "image/jpeg"))],
                               timeout=30)
    missing_file = requests.post(f"{server.url}/v2/models/soccer/infer", json={"images": ["/nonexistent.jpg"]},
                                 timeout=30)
    assert bad_upload.status_code != 200 and missing_file.status_code != 200
    for _ in range(3):  # health probes are requests too, but neither inferences nor failures
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200

    after = wait_for(server, lambda s: s[ok] >= 4 and s[failed] >= 2)
    assert after[ok] == 4 and after[failed] == 2
    assert after[latency_count] == 4
    total = after[("kontinual_server_inference_duration_seconds_sum", labels(**version))]
    assert 0 < total < 60
    inf = after[("kontinual_server_inference_duration_seconds_bucket", labels(**version, le="+Inf"))]
    assert inf == 4
    # The data-capture counters sit beside them: 5 requests reached the pipeline (the JSON one's path
    # parsed, then failed to load), 1 of every 2 sampled (calls 1, 3, 5).
    assert after[("kontinual_capture_requests_total", labels(endpoint="soccer"))] == 5
    assert after[("kontinual_capture_sampled_total", labels(endpoint="soccer"))] == 3


def test_the_exposition_is_prometheus_clients_with_help_and_types(server: DeepSparseServer) -> None:
    text, _ = scrape(server)
    for name, kind in [("kontinual_server_requests_total", "counter"), ("kontinual_server_inference_duration_seconds",
                                                                  "histogram"),
                       ("kontinual_capture_uploaded_total", "counter"), ("kontinual_capture_queue_depth", "gauge")]:
        assert f"# TYPE {name} {kind}" in text and f"# HELP {name} " in text
    # Exactly the families and labels of kontinual.serving.metrics (tests/runtime/test_server_metrics.py checks
    # the kserve runtime's pod against the same), so one dashboard covers both runtimes.
    assert families(text_string_to_metric_families(text)) == registered()
