"""Data capture against a real DeepSparse Server process configured by Kontinual's builder, and the Roboflow double."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from kontinual.serving.encode import yolo_annotation
from tests.serving.conftest import CONFIDENT_CLASS, jpeg
from tests.serving.server import CLASS_NAMES, DeepSparseServer, continual_model, free_port
from tests.support.roboflow_double import BAD_KEY_MESSAGE, RoboflowDouble

pytestmark = pytest.mark.slow
PROJECT = "soccer-players"
FAST_RETRIES = {"attempts": 3, "base_delay": 0.05, "max_delay": 0.2}  # logger kwargs: keep the tier quick


@pytest.fixture(scope="module")
def rf() -> Iterator[RoboflowDouble]:
    with RoboflowDouble() as double:
        yield double


@pytest.fixture(scope="module")
def server(rf: RoboflowDouble, yolo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeepSparseServer]:
    cr = continual_model("soccer", yolo_onnx, rf.url, frequency=3, metrics_port=free_port())
    with DeepSparseServer(cr, rf.api_key, tmp_path_factory.mktemp("server"), **FAST_RETRIES) as running:
        yield running


def _send(server: DeepSparseServer, sizes: list[tuple[int, int]], seed: int) -> list[dict]:
    answers = []
    for i, (width, height) in enumerate(sizes):
        response = server.infer(jpeg(width, height, seed + i))
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def test_uploads_one_in_frequency_with_its_own_predictions(server: DeepSparseServer, rf: RoboflowDouble) -> None:
    sizes = [(160 + 16 * i, 120 + 8 * i) for i in range(9)]
    answers = _send(server, sizes, seed=0)
    counters = server.wait_for(lambda c: c["uploaded"] + c["failed"] >= 3 and c["annotations"] >= 3)
    assert (counters["requests"], counters["sampled"], counters["uploaded"], counters["failed"]) == (9, 3, 3, 0)

    uploads = rf.uploads_to(PROJECT)
    assert len(uploads) == 3  # requests 1, 4 and 7 of 9
    by_size = {}
    for upload in uploads:
        image = Image.open(io.BytesIO(upload.image))
        assert image.format == "JPEG"
        image.load()
        by_size[image.size] = upload
        assert (upload.split, upload.batch, upload.tags) == ("valid", "production", ("production", "camera-1"))
        assert upload.name.startswith("soccer-v0-") and upload.name.endswith(".jpg")
    assert sorted(by_size) == sorted(sizes[i] for i in (0, 3, 6))
    assert len({u.name for u in uploads}) == 3

    # Each pre-annotation is exactly the server's answer for that very image.
    assert len(rf.annotations) == 3
    for annotation in rf.annotations:
        upload = next(u for u in uploads if u.id == annotation.image_id)
        request = sizes.index(Image.open(io.BytesIO(upload.image)).size)
        answer = answers[request]
        assert answer["labels"][0] and set(answer["labels"][0]) == {CLASS_NAMES[CONFIDENT_CLASS]}
        expected, labelmap = yolo_annotation(answer["boxes"][0], answer["labels"][0], *sizes[request], CLASS_NAMES)
        assert annotation.prediction is True
        assert annotation.labelmap == {"0": "ball", "1": "goalkeeper", "2": "player", "3": "referee"}
        assert annotation.annotation_file == expected and expected.strip()
        assert annotation.name == upload.name.replace(".jpg", ".txt")
        rows = [line.split() for line in annotation.annotation_file.splitlines()]
        assert {labelmap[row[0]] for row in rows} == {"player"}
        assert all(0.0 <= float(v) <= 1.0 for row in rows for v in row[1:])


def test_5xx_and_429_are_retried_then_uploaded(server: DeepSparseServer, rf: RoboflowDouble) -> None:
    before = server.metrics()
    rf.fail_with(500, 1)
    rf.fail_with(429, 1)
    _send(server, [(200, 100)] * 3, seed=100)  # the 10th request is sampled
    counters = server.wait_for(lambda c: c["uploaded"] + c["failed"] > before["uploaded"] + before["failed"]
                               and c["annotations"] > before["annotations"])
    assert counters["uploaded"] == before["uploaded"] + 1
    assert counters["retried"] == before["retried"] + 2
    assert counters["failed"] == before["failed"]


def test_bad_key_is_not_retried_and_reported_once(server: DeepSparseServer, rf: RoboflowDouble) -> None:
    before = server.metrics()
    rf.bad_key = True
    try:
        _send(server, [(120, 90)] * 6, seed=200)  # two sampled
        counters = server.wait_for(lambda c: c["failed"] >= before["failed"] + 2)
    finally:
        rf.bad_key = False
    assert counters["failed"] == before["failed"] + 2
    assert counters["retried"] == before["retried"]
    assert counters["uploaded"] == before["uploaded"]
    assert server.output().count(BAD_KEY_MESSAGE) == 1


def test_roboflow_down_changes_nothing_for_clients_then_recovers(server: DeepSparseServer, rf: RoboflowDouble) -> None:
    before = server.metrics()
    rf.down()
    try:
        started = time.monotonic()
        answers = _send(server, [(100, 80)] * 3, seed=300)  # one sampled
        assert all(a["boxes"][0] for a in answers)
        assert time.monotonic() - started < 10
        counters = server.wait_for(lambda c: c["failed"] >= before["failed"] + 1)
        assert counters["retried"] == before["retried"] + FAST_RETRIES["attempts"] - 1
    finally:
        rf.up()
    _send(server, [(100, 80)] * 3, seed=400)
    counters = server.wait_for(lambda c: c["uploaded"] >= before["uploaded"] + 1)
    assert counters["uploaded"] == before["uploaded"] + 1
    dropped = sum(value for name, value in counters.items() if name.startswith("dropped_"))
    assert counters["sampled"] == counters["uploaded"] + counters["duplicates"] + counters["failed"] + dropped
    assert counters["queue_depth"] == 0


def test_key_never_in_config_or_server_output(server: DeepSparseServer, rf: RoboflowDouble) -> None:
    assert rf.api_key not in server.config_file.read_text()
    assert rf.api_key not in server.output()
    assert "api_key=" not in server.output()  # no URL with the key in it either
    sent = [r for r in rf.requests if r.path.startswith("/dataset/")]
    assert sent and all(r.api_key == rf.api_key for r in sent)


def test_full_queue_and_cap_drop_samples_never_requests(yolo_onnx: Path, tmp_path: Path) -> None:
    with RoboflowDouble() as rf:
        rf.latency = 2.0  # every upload takes two seconds
        cr = continual_model("busy", yolo_onnx, rf.url, frequency=1, upload_predictions=False,
                             max_per_minute=8, queue_size=1, metrics_port=free_port())
        with DeepSparseServer(cr, rf.api_key, tmp_path, workers=1, drain_seconds=10) as server:
            durations = []
            for i in range(14):
                started = time.monotonic()
                assert server.infer(jpeg(96, 64, 1000 + i)).status_code == 200
                durations.append(time.monotonic() - started)
            counters = server.metrics()
            assert (counters["requests"], counters["sampled"]) == (14, 14)
            assert counters["dropped_rate_limited"] == 6  # maxPerMinute 8
            # One upload in flight, one queued: most of the 8 admitted samples find the queue full.
            assert counters["dropped_queue_full"] >= 1
            assert max(durations) < rf.latency, durations  # no request waited for an upload
            admitted = 8 - counters["dropped_queue_full"]
            exit_code = server.stop()  # SIGTERM: drains the queue before exiting
        assert exit_code in (0, -15)
        assert len(rf.uploads_to(PROJECT)) == admitted
        assert "data capture: stopped" in server.output()
