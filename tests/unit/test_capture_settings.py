"""One data-capture settings shape: what the builder renders into server.yaml is what the server pods parse back."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from kontinual.common import yamlio
from kontinual.common.capture_settings import TUNING, CaptureSettings
from kontinual.controller import builders
from kontinual.controller.settings import Settings
from kontinual.controller.spec import parse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _soccer(**data_logging: Any) -> dict[str, Any]:
    cr = yaml.safe_load((EXAMPLES / "soccer.yaml").read_text())
    cr["metadata"].update(uid="uid-1", generation=1)
    cr["spec"]["dataLogging"].update(data_logging)
    # A seed of the project's own classes, so its boxes are pre-annotations (COCO's would be dropped).
    cr["spec"]["model"]["classNames"] = list(cr["spec"]["classNames"])
    return cr


def _logger_entry(cr: dict[str, Any]) -> dict[str, Any]:
    """The logger entry as a server pod reads it: server.yaml text from the ConfigMap, YAML-parsed."""
    config_map = builders.config_map(parse(cr, Settings()))
    server_yaml = yaml.safe_load(config_map["data"][builders.CONFIG_FILE])
    return dict(server_yaml["loggers"]["roboflow"])


def test_the_rendered_entry_parses_back_to_the_spec_values() -> None:
    cr = _soccer(frequency=7, maxPerMinute=11, queueSize=13, metricsPort=9202, uploadPredictions=True)
    entry = _logger_entry(cr)
    assert entry.pop("path").endswith("serving/deepsparse_plugin.py:RoboflowLogger")
    settings = CaptureSettings.from_mapping(entry)
    rf = cr["spec"]["dataLogging"]["roboflow"]
    assert (settings.endpoint, settings.model_version) == ("soccer", "0")
    assert (settings.workspace, settings.project) == (rf["workspace"], rf["project"])
    assert (settings.frequency, settings.max_per_minute, settings.queue_size, settings.metrics_port) == (7, 11, 13, 9202)
    assert settings.upload_predictions is True
    assert settings.class_names == tuple(cr["spec"]["classNames"])
    assert (settings.split, settings.batch, settings.tags) == ("train", "production", ("production",))
    assert settings.api_key_env == "ROBOFLOW_API_KEY"
    assert "apiKey" not in yamlio.dump(entry) and "secret" not in yamlio.dump(entry).lower()
    # and back: the parsed settings render to exactly the entry the builder wrote
    assert settings.to_mapping() == entry


def test_every_setting_but_the_worker_tuning_is_rendered() -> None:
    entry = _logger_entry(_soccer())
    entry.pop("path")
    every = {f.name for f in dataclasses.fields(CaptureSettings)}
    assert set(entry) == every - set(TUNING)


def test_tuning_round_trips_when_set() -> None:
    settings = CaptureSettings("e", "2", "ws", "proj", workers=1, attempts=3, base_delay=0.05, drain_seconds=3.0)
    mapping = settings.to_mapping()
    assert {k: mapping[k] for k in ("workers", "attempts", "base_delay", "drain_seconds")} == {
        "workers": 1, "attempts": 3, "base_delay": 0.05, "drain_seconds": 3.0}
    assert "max_delay" not in mapping  # left at its default
    assert CaptureSettings.from_mapping(yaml.safe_load(yamlio.dump(mapping))) == settings


@pytest.mark.parametrize(("change", "message"), [
    ({"frequncy": 5}, "unknown setting(s) frequncy"),
    ({"project": ""}, "missing project"),
    ({"frequency": "often"}, "frequency must be an integer, got 'often'"),
    ({"frequency": 0}, "frequency must be >= 1, got 0"),
    ({"upload_predictions": "yes"}, "upload_predictions must be true or false, got 'yes'"),
    ({"tags": "production"}, "tags must be a list of strings, got 'production'"),
    ({"workspace": ["a"]}, "workspace must be a string, got ['a']"),
])
def test_bad_settings_are_named(change: dict[str, Any], message: str) -> None:
    good = CaptureSettings("soccer", "1", "acme", "soccer-players").to_mapping()
    with pytest.raises(ValueError) as info:
        CaptureSettings.from_mapping({**good, **change}, where="RoboflowLogger")
    assert str(info.value).startswith("RoboflowLogger: ")
    assert message in str(info.value)
