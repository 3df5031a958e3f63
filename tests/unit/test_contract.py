"""The trainer's result contract: what `kontinual train` writes is what the operator reads back."""

from __future__ import annotations

import json

import pytest

from kontinual.common.contract import FAILED, MAX_RESULT_BYTES, SUCCEEDED, ResultError, TrainingResult

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SUCCESS = TrainingResult(status=SUCCEEDED, version=3, onnx="v3/model.onnx", sha256=SHA,
                         metrics={"mAP50": 0.64, "mAP50_95": 0.35}, sparsity=0.91, datasetVersion="7",
                         images={"train": 520, "valid": 98, "test": 45})


def test_succeeded_round_trip() -> None:
    text = SUCCESS.to_json()
    assert TrainingResult.from_json(text) == SUCCESS
    assert TrainingResult.from_json(text).succeeded


def test_succeeded_json_is_the_documented_shape() -> None:
    data = json.loads(SUCCESS.to_json())
    assert data == {"version": 3, "status": "Succeeded", "onnx": "v3/model.onnx", "sha256": SHA,
                    "metrics": {"mAP50": 0.64, "mAP50_95": 0.35}, "sparsity": 0.91, "datasetVersion": "7",
                    "images": {"train": 520, "valid": 98, "test": 45}}


def test_failed_round_trip_without_empty_fields() -> None:
    failed = TrainingResult.failed("DatasetEmpty", "Roboflow version 7 has no training images", version=4)
    data = json.loads(failed.to_json())
    assert data == {"status": "Failed", "reason": "DatasetEmpty", "message": "Roboflow version 7 has no training images",
                    "version": 4}
    back = TrainingResult.from_json(failed.to_json())
    assert back == failed and not back.succeeded and back.status == FAILED


def test_documented_failed_example_parses() -> None:
    result = TrainingResult.from_json('{"status": "Failed", "reason": "DatasetEmpty", "message": "..."}')
    assert (result.status, result.reason, result.message, result.version) == (FAILED, "DatasetEmpty", "...", None)


def test_to_json_is_single_line_compact() -> None:
    text = SUCCESS.to_json()
    assert "\n" not in text and ", " not in text and ": " not in text


@pytest.mark.parametrize("message", ["x" * 10_000, "é" * 5_000, '"\\\n' * 3_000, "ok " + "🙂" * 3_000])
def test_to_json_stays_under_the_termination_message_limit(message: str) -> None:
    result = TrainingResult.failed("TrainingFailed", message, version=2)
    text = result.to_json()
    assert len(text.encode()) <= MAX_RESULT_BYTES < 4096
    back = TrainingResult.from_json(text)
    assert back.reason == "TrainingFailed" and back.version == 2
    assert back.message is not None and back.message.endswith("...")
    assert message.startswith(back.message[:-3])  # the beginning is kept


def test_short_message_is_not_truncated() -> None:
    result = TrainingResult.failed("TrainingFailed", "x" * 3000)
    assert TrainingResult.from_json(result.to_json()).message == "x" * 3000


def test_unknown_keys_from_a_newer_trainer_are_ignored() -> None:
    data = json.loads(SUCCESS.to_json()) | {"trainerVersion": "0.2.0"}
    assert TrainingResult.from_json(json.dumps(data)) == SUCCESS


@pytest.mark.parametrize("text, words", [
    ("Traceback (most recent call last):\n  File ...", "not JSON"),
    ("", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('"Succeeded"', "JSON object"),
    ('{"version": 3}', "status"),
    ('{"status": "Done"}', "'Done'"),
    ('{"status": "succeeded", "version": 1, "onnx": "v1/model.onnx", "sha256": "ab"}', "status"),
])
def test_from_json_rejects_what_is_not_a_result(text: str, words: str) -> None:
    with pytest.raises(ResultError) as info:
        TrainingResult.from_json(text)
    assert words in str(info.value)


@pytest.mark.parametrize("missing", ["sha256", "onnx", "version"])
def test_succeeded_needs_version_onnx_and_sha256(missing: str) -> None:
    data = json.loads(SUCCESS.to_json())
    del data[missing]
    with pytest.raises(ResultError) as info:
        TrainingResult.from_json(json.dumps(data))
    assert missing in str(info.value)


def test_not_json_error_shows_what_was_read() -> None:
    with pytest.raises(ResultError) as info:
        TrainingResult.from_json("Killed")
    assert "'Killed'" in str(info.value)


def test_result_is_frozen() -> None:
    with pytest.raises(AttributeError):
        SUCCESS.status = FAILED  # type: ignore[misc]
