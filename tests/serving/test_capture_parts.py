"""Fast tests of the data-capture parts: rendering, the Roboflow client, encoding, the cap, and input/output pairing."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy
import pytest
from PIL import Image

from kontinual.controller import builders
from kontinual.controller.capture_config import LOGGER_NAME, SERVER_PLUGIN_FILE, SERVER_VENV, plugin_file, render_logging
from kontinual.common.roboflow import RoboflowClient, RoboflowError, with_retries
from kontinual.serving.capture import RateCap
from kontinual.serving.encode import encode_jpeg, yolo_annotation
from tests.serving.server import CLASS_NAMES, continual_model, parse
from tests.support.roboflow_double import BAD_KEY_MESSAGE, RoboflowDouble

PROJECT = "soccer-players"


@pytest.fixture
def rf() -> Iterator[RoboflowDouble]:
    with RoboflowDouble() as double:
        yield double


def _png(width: int = 32, height: int = 24, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


# -- what the operator renders ---------------------------------------------------------------
def test_builder_renders_logger_entry_without_secret(tmp_path: Path) -> None:
    cr = continual_model("soccer", tmp_path / "m.onnx", "https://api.roboflow.com", frequency=100, metrics_port=9101)
    spec = parse(cr)
    config = builders.server_config(spec)
    logger = config["loggers"][LOGGER_NAME]
    file, _, cls = logger["path"].rpartition(":")
    assert (file, cls) == (plugin_file(), "RoboflowLogger") and Path(file).is_file()
    assert (logger["frequency"], logger["max_per_minute"], logger["upload_predictions"]) == (100, 1000, True)
    assert (logger["workspace"], logger["project"], logger["split"]) == ("acme", PROJECT, "valid")
    assert logger["class_names"] == CLASS_NAMES and logger["api_key_env"] == "ROBOFLOW_API_KEY"
    data_logging = config["endpoints"][0]["data_logging"]
    # Frequency 1 in DeepSparse, 1-of-N in the logger: one request's image and boxes stay paired.
    assert data_logging == {t: [{"func": "identity", "frequency": 1, "target_loggers": [LOGGER_NAME]}]
                            for t in ("pipeline_inputs", "pipeline_outputs")}
    assert "apiKey" not in str(config) and "secret" not in str(config).lower()


def test_operator_and_server_images_install_kontinual_in_the_same_place() -> None:
    """The operator renders the plugin path from its own install: both images must put kontinual at SERVER_VENV."""
    images = Path(__file__).resolve().parents[2] / "images"
    for image in ("server", "operator"):
        dockerfile = (images / image / "Dockerfile").read_text()
        assert f"python -m venv {SERVER_VENV}" in dockerfile and "ARG PYTHON_IMAGE=python:3.11" in dockerfile, image
        assert f"{SERVER_VENV}/bin/pip install --no-deps --no-warn-script-location --root /pkg ." in dockerfile, image
        assert f"COPY --from=package /pkg{SERVER_VENV}/ {SERVER_VENV}/" in dockerfile, image  # not editable
    local = Path(plugin_file())
    assert local.is_file() and SERVER_PLUGIN_FILE.endswith("/site-packages/" + "/".join(local.parts[-3:]))
    assert "from kontinual.serving.roboflow_logger import RoboflowLogger" in local.read_text()


def test_no_outputs_logged_without_upload_predictions(tmp_path: Path) -> None:
    cr = continual_model("soccer", tmp_path / "m.onnx", "https://x", frequency=5, metrics_port=9101,
                         upload_predictions=False)
    loggers, data_logging = render_logging(parse(cr).data_logging, endpoint="soccer", model_version="3",
                                           class_names=(), logger_file="/opt/plugin.py")
    assert list(data_logging) == ["pipeline_inputs"]
    assert loggers[LOGGER_NAME]["path"] == "/opt/plugin.py:RoboflowLogger"
    assert loggers[LOGGER_NAME]["model_version"] == "3"


# -- the Roboflow client -----------------------------------------------------------------------
def test_client_uploads_duplicates_annotates_and_counts(rf: RoboflowDouble) -> None:
    client = RoboflowClient(rf.api_key, rf.url)
    assert client.check_key() == rf.workspace
    first = client.upload_image(PROJECT, _png(), name="a.png", split="valid", batch="b", tags=("t1", "t2"),
                                content_type="image/png")
    again = client.upload_image(PROJECT, _png(), name="b.png", content_type="image/png")
    assert (first.duplicate, again.duplicate, again.id) == (False, True, first.id)
    assert (rf.uploads[0].split, rf.uploads[0].batch, rf.uploads[0].tags) == ("valid", "b", ("t1", "t2"))
    assert client.annotate(PROJECT, first.id, name="a.txt", annotation_file="2 0.5 0.5 0.2 0.2\n",
                           labelmap={"2": "player"}, prediction=True) is True
    assert client.annotate(PROJECT, first.id, name="a.txt", annotation_file="", labelmap={}) is False  # 409
    assert rf.annotations[0].prediction and rf.annotations[0].labelmap == {"2": "player"}
    rf.set_annotated(PROJECT, 40)
    info = client.project_info(rf.workspace, PROJECT)
    assert (info.annotated, info.images) == (40, 40)
    assert rf.api_key not in repr(client)


def test_client_errors_carry_roboflow_message_never_the_key(rf: RoboflowDouble) -> None:
    rf.bad_key = True
    with pytest.raises(RoboflowError) as bad:
        RoboflowClient(rf.api_key, rf.url).project_info(rf.workspace, PROJECT)
    assert (bad.value.status, bad.value.retryable) == (401, False)
    assert BAD_KEY_MESSAGE in str(bad.value) and rf.api_key not in str(bad.value)
    rf.down()
    with pytest.raises(RoboflowError) as down:
        RoboflowClient(rf.api_key, rf.url).check_key()
    assert down.value.status is None and down.value.retryable
    assert rf.api_key not in str(down.value) and "api_key" not in str(down.value)


def test_urllib3_debug_logs_mask_the_key(rf: RoboflowDouble, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="urllib3"):
        RoboflowClient(rf.api_key, rf.url).check_key()
    assert "api_key=***" in caplog.text and rf.api_key not in caplog.text


def test_retries_retryable_errors_only(rf: RoboflowDouble) -> None:
    client, delays = RoboflowClient(rf.api_key, rf.url), []
    rf.fail_with(503, 2)
    assert with_retries(client.check_key, attempts=3, sleep=delays.append) == rf.workspace
    assert len(delays) == 2 and 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0  # backoff with jitter
    rf.fail_with(400, 1)
    with pytest.raises(RoboflowError):
        with_retries(client.check_key, attempts=3, sleep=delays.append)
    assert len(delays) == 2  # a 400 is not retried
    rf.fail_with(500, 5)
    with pytest.raises(RoboflowError):
        with_retries(client.check_key, attempts=3, sleep=delays.append)
    assert len(delays) == 4  # bounded: 3 calls, 2 waits


# -- encoding and the cap ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(24, 32, 3), (24, 32), (24, 32, 4), (24, 32, 1)])
def test_any_request_array_becomes_a_jpeg_of_its_size(shape: tuple[int, ...]) -> None:
    data, width, height = encode_jpeg(numpy.full(shape, 200, dtype=numpy.uint8))
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, width, height) == ("JPEG", (32, 24), 32, 24)


def test_yolo_annotation_normalises_and_clips() -> None:
    text, labelmap = yolo_annotation([[-10, 0, 50, 50], [10, 10, 10, 20], [0, 0, 100, 50]],
                                     ["player", "ball", "3"], 100, 50, CLASS_NAMES)
    assert text.splitlines() == ["2 0.250000 0.500000 0.500000 1.000000", "3 0.500000 0.500000 1.000000 1.000000"]
    assert labelmap == {"0": "ball", "1": "goalkeeper", "2": "player", "3": "referee"}


def test_rate_cap_is_a_sliding_minute() -> None:
    now = [0.0]
    cap = RateCap(3, clock=lambda: now[0])
    assert [cap.admit() for _ in range(4)] == [True, True, True, False]
    now[0] = 59.9
    assert not cap.admit()
    now[0] = 60.0  # the first three are a minute old now
    assert [cap.admit() for _ in range(4)] == [True, True, True, False]


# -- pairing inside the DeepSparse logger -------------------------------------------------------
def _inputs(*sizes: tuple[int, int]) -> SimpleNamespace:
    return SimpleNamespace(images=[numpy.zeros((h, w, 3), dtype=numpy.uint8) for w, h in sizes])


def _outputs(*boxes: list[list[float]]) -> SimpleNamespace:
    return SimpleNamespace(boxes=list(boxes), labels=[["player"] * len(b) for b in boxes], scores=[])


def test_logger_pairs_each_image_with_its_own_outputs(rf: RoboflowDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepsparse")
    from kontinual.serving.roboflow_logger import RoboflowLogger

    monkeypatch.setenv("ROBOFLOW_API_KEY", rf.api_key)
    monkeypatch.setenv("KONTINUAL_METRICS_HOST", "127.0.0.1")
    logger = RoboflowLogger(endpoint="soccer", model_version="1", workspace=rf.workspace, project=PROJECT,
                            api_url=rf.url, class_names=CLASS_NAMES, upload_predictions=True, frequency=1,
                            metrics_port=0)
    try:
        log = logger.log
        log("soccer/pipeline_inputs__identity", _inputs((40, 30)), "data", pipeline_name="soccer")
        log("other/pipeline_inputs__identity", _inputs((50, 30)), "data", pipeline_name="other")
        log("soccer/pipeline_outputs__identity", _outputs([[0, 0, 20, 15]]), "data", pipeline_name="soccer")
        log("soccer/prediction_latency/total_inference_seconds", 0.1, "system", pipeline_name="soccer")
        log("soccer/pipeline_inputs__identity", _inputs((60, 30)), "data", pipeline_name="soccer")  # fails: no outputs
        log("soccer/pipeline_inputs__identity", _inputs((70, 30)), "data", pipeline_name="soccer")
        log("other/pipeline_outputs__identity", _outputs([[0, 0, 50, 30]]), "data", pipeline_name="other")
        log("soccer/pipeline_outputs__identity", _outputs([[0, 0, 70, 30]]), "data", pipeline_name="soccer")
        logger.close(timeout=10)
    finally:
        logger.close(timeout=1)
    sizes = {u.id: Image.open(io.BytesIO(u.image)).size for u in rf.uploads}
    assert sorted(sizes.values()) == [(40, 30), (50, 30), (60, 30), (70, 30)]
    annotated = {sizes[a.image_id]: a.annotation_file.strip() for a in rf.annotations}
    assert annotated == {(40, 30): "2 0.250000 0.250000 0.500000 0.500000",
                         (50, 30): "2 0.500000 0.500000 1.000000 1.000000",
                         (70, 30): "2 0.500000 0.500000 1.000000 1.000000"}  # (60, 30) failed: image only
    counters = logger.counters.snapshot()
    assert (counters["requests"], counters["sampled"], counters["uploaded"], counters["annotations"]) == (4, 4, 4, 3)


def test_wings_import_without_each_others_dependencies() -> None:
    """The logger imports without kopf (server pods); the renderer and client without deepsparse or torch."""
    import subprocess
    import sys

    blocked = ("import sys\nfor m in {mods}: sys.modules[m] = None\n")
    serving = blocked.format(mods=["kopf", "kubernetes"]) + "import kontinual.serving.deepsparse_plugin"
    operator = blocked.format(mods=["deepsparse", "torch", "numpy", "PIL"]) + \
        "import kontinual.controller.capture_config, kontinual.common.roboflow"
    for code in (serving, operator):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
