"""Roboflow answers of an unexpected shape and unusable Secret values: clear errors, never a crash."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kontinual.controller import k8s
from kontinual.controller.access import SECRET_LABEL
from kontinual.common.roboflow import RoboflowError, parse_project_info

MARKED = {"metadata": {"labels": {SECRET_LABEL: "true"}}}


@pytest.fixture(autouse=True)
def marked_for_kontinual(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Secrets below carry the label that lets the operator read them."""
    monkeypatch.setattr(k8s, "secret_labels", lambda *_: {SECRET_LABEL: "true"})


GOOD = {"project": {"images": 120, "unannotated": 20, "classes": {"ball": 3, "player": 9}},
        "versions": [{"id": "acme/soccer/2"}, {"id": "acme/soccer/1"}]}


def test_a_well_formed_answer_is_read() -> None:
    info = parse_project_info("acme", "soccer", GOOD)
    assert (info.images, info.annotated, info.classes, info.versions) == (120, 100, ("ball", "player"), (1, 2))


@pytest.mark.parametrize("payload, says", [
    ([], "list"), ({}, "without `project`"), ({"project": []}, "without `project`"), ("ok", "str"), (None, "NoneType"),
    ({"project": {"images": "many"}}, "images='many'"), ({"project": {"images": -3}}, "images=-3"),
    ({"project": {"images": 5, "unannotated": {"x": 1}}}, "unannotated="),
])
def test_an_answer_of_another_shape_is_a_roboflow_error_saying_what_came(payload: Any, says: str) -> None:
    with pytest.raises(RoboflowError) as info:
        parse_project_info("acme", "soccer", payload)
    assert says in str(info.value) and "GET /acme/soccer" in str(info.value)


def test_odd_versions_and_classes_are_ignored_not_fatal() -> None:
    info = parse_project_info("acme", "soccer", {"project": {"images": 3, "classes": "ball"},
                                                 "versions": [7, {"id": "acme/soccer/x"}, {"id": "acme/soccer/4"}]})
    assert (info.images, info.classes, info.versions) == (3, (), (4,))


@pytest.mark.parametrize("raw, says", [
    (b"\xff\xfe\xfa", "is not UTF-8 text"), (b"", "is empty"), (b"key\x00\x01", "control characters"),
])
def test_an_unusable_secret_value_is_a_lookup_error_without_the_bytes(raw: bytes, says: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    secret = {**MARKED, "data": {"apiKey": base64.b64encode(raw).decode()}}
    monkeypatch.setattr(k8s, "get", lambda *_: secret)
    with pytest.raises(LookupError) as info:
        k8s.secret_value("vision", "roboflow", "apiKey", label=SECRET_LABEL)
    assert says in str(info.value) and "Secret vision/roboflow key 'apiKey'" in str(info.value)
    assert repr(raw) not in str(info.value)


def test_a_secret_that_is_not_base64_is_a_lookup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "get", lambda *_: {**MARKED, "data": {"apiKey": "not base64!"}})
    with pytest.raises(LookupError, match="not UTF-8 text"):
        k8s.secret_value("vision", "roboflow", "apiKey", label=SECRET_LABEL)


def test_a_good_secret_value_is_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "get", lambda *_: {**MARKED, "data": {"apiKey": base64.b64encode(b"rf-key-1\n").decode()}})
    assert k8s.secret_value("vision", "roboflow", "apiKey", label=SECRET_LABEL) == "rf-key-1"
