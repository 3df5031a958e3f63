"""Operator settings from KONTINUAL_* environment variables: defaults, parsing, clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from kontinual import __version__
from kontinual.controller.settings import Settings


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.server_image == f"kontinual/server:{__version__}"
    assert settings.trainer_image == f"kontinual/trainer:{__version__}"
    assert settings.roboflow_api_url == "https://api.roboflow.com"
    assert (settings.resync_seconds, settings.roboflow_poll_seconds, settings.health_port) == (60, 300, 8080)
    assert (settings.log_level, settings.log_format, settings.watch_namespaces) == ("INFO", "text", ())


def test_every_variable_is_read() -> None:
    settings = Settings.from_env({
        "KONTINUAL_SERVER_IMAGE": "registry.example/server:1.0",
        "KONTINUAL_TRAINER_IMAGE": "registry.example/trainer:1.0",
        "KONTINUAL_ROBOFLOW_API_URL": "http://127.0.0.1:9999",
        "KONTINUAL_ROBOFLOW_POLL_SECONDS": "30",
        "KONTINUAL_SPARSEZOO_API_URL": "http://sparsezoo.mirror.internal/",
        "KONTINUAL_RESYNC_SECONDS": "15",
        "KONTINUAL_HEALTH_PORT": "9090",
        "KONTINUAL_LOG_LEVEL": "debug",
        "KONTINUAL_LOG_FORMAT": "json",
        "KONTINUAL_WATCH_NAMESPACES": " vision, team-a ,,",
    })
    assert settings == Settings(
        server_image="registry.example/server:1.0", trainer_image="registry.example/trainer:1.0",
        roboflow_api_url="http://127.0.0.1:9999", roboflow_poll_seconds=30, resync_seconds=15, health_port=9090,
        sparsezoo_api_url="http://sparsezoo.mirror.internal",
        log_level="DEBUG", log_format="json", watch_namespaces=("vision", "team-a"))


def test_empty_values_mean_the_default() -> None:
    env = {name: "" for name in ("KONTINUAL_SERVER_IMAGE", "KONTINUAL_TRAINER_IMAGE", "KONTINUAL_ROBOFLOW_API_URL",
                                 "KONTINUAL_SPARSEZOO_API_URL", "KONTINUAL_RESYNC_SECONDS", "KONTINUAL_HEALTH_PORT",
                                 "KONTINUAL_LOG_LEVEL", "KONTINUAL_WATCH_NAMESPACES")}
    assert Settings.from_env(env) == Settings()


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KONTINUAL_SERVER_IMAGE", "from-env:1")
    monkeypatch.setenv("KONTINUAL_WATCH_NAMESPACES", "vision")
    settings = Settings.from_env()
    assert settings.server_image == "from-env:1" and settings.watch_namespaces == ("vision",)


@pytest.mark.parametrize("name", ["KONTINUAL_RESYNC_SECONDS", "KONTINUAL_HEALTH_PORT",
                                  "KONTINUAL_ROBOFLOW_POLL_SECONDS"])
def test_a_bad_number_names_the_variable(name: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: "ten"})
    assert name in str(info.value) and "'ten'" in str(info.value) and "whole number" in str(info.value)


def test_a_bad_log_format_names_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({"KONTINUAL_LOG_FORMAT": "xml"})
    message = str(info.value)
    assert "KONTINUAL_LOG_FORMAT" in message and "'xml'" in message and "json" in message and "text" in message


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"ROBOFLOW_API_KEY": "secret", "SERVER_IMAGE": "x"}) == Settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().server_image = "x"  # type: ignore[misc]


@pytest.mark.parametrize("name, raw", [
    ("KONTINUAL_HEALTH_PORT", "70000"), ("KONTINUAL_HEALTH_PORT", "0"),
    ("KONTINUAL_RESYNC_SECONDS", "-1"), ("KONTINUAL_ROBOFLOW_POLL_SECONDS", "0"),
])
def test_an_out_of_range_number_names_the_variable(name: str, raw: str) -> None:
    # A port the operator cannot bind or a non-positive interval fails later with an error that
    # does not say which setting was wrong; it should fail here, naming it.
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: raw})
    assert name in str(info.value) and raw in str(info.value)


def test_a_sparsezoo_mirror_must_be_an_http_url() -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({"KONTINUAL_SPARSEZOO_API_URL": "sparsezoo.internal"})
    assert "KONTINUAL_SPARSEZOO_API_URL" in str(info.value) and "http(s) URL" in str(info.value)
