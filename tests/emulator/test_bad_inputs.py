"""Inputs the schema accepts but that crashed the reconcile forever: each gives InvalidSpec or pollError."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kontinual.controller.access import SECRET_LABEL
from kontinual.controller.handlers import registry
from tests.emulator.cluster import Cluster, condition, running_operator, wait_for
from tests.emulator.test_loop import ROBOFLOW, loop_cluster, model, status_where  # noqa: F401 - fixture
from tests.support.badhttp import FixedAnswer
from tests.support.roboflow_double import RoboflowDouble


async def secret(c: Cluster, ns: str, raw: bytes) -> None:
    await c.create({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "roboflow", "namespace": ns, "labels": {SECRET_LABEL: "true"}},
                    "data": {"apiKey": base64.b64encode(raw).decode()}})


@contextlib.asynccontextmanager
async def operator_allowing(api: Cluster, monkeypatch: pytest.MonkeyPatch, url: str) -> AsyncIterator[Cluster]:
    """The operator, configured (as an admin would) to allow the test's Roboflow stand-in at `url`."""
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "1")
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_POLL_SECONDS", "1")
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_API_URLS", url)
    async with running_operator(registry, api.kubeconfig):
        yield api


def polled(status: dict[str, Any]) -> bool:
    return bool((status.get("training") or {}).get("pollError"))


async def test_cron_without_a_real_date_is_invalid_spec_naming_the_field(loop_cluster: Cluster) -> None:
    c, ns = loop_cluster, "t-feb31"
    await c.create(model("m", ns, {"trigger": {"schedule": "0 0 31 2 *"}}))
    obj = await status_where(c, ns, "m", lambda s: condition({"status": s}, "Reconciled"), "Reconciled")
    reconciled = condition(obj, "Reconciled")
    assert (reconciled["status"], reconciled["reason"]) == ("False", "InvalidSpec")
    assert "spec.training.trigger.schedule" in reconciled["message"] and "never fires" in reconciled["message"]
    await wait_for(lambda: _has_event(c, ns, "m", "InvalidSpec"), 10, what="InvalidSpec Event")


async def _has_event(c: Cluster, ns: str, name: str, reason: str) -> bool:
    return any(e["reason"] == reason for e in await c.events(ns, name))


async def test_secret_of_non_utf8_bytes_is_a_poll_error_and_serving_goes_on(
        api: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = "t-bytes"
    with RoboflowDouble() as rf:
        async with operator_allowing(api, monkeypatch, rf.url) as c:
            await secret(c, ns, b"\xff\xfe\x00\x9c")
            await c.create(model("m", ns, {"dataset": {**ROBOFLOW, "apiUrl": rf.url},
                                           "trigger": {"minNewLabeledImages": 5}}))
            obj = await status_where(c, ns, "m", polled, "pollError")
            error = obj["status"]["training"]["pollError"]
            assert "Secret t-bytes/roboflow key 'apiKey' is not UTF-8 text" in error
            assert condition(obj, "Reconciled")["status"] == "True"  # the children were applied all the same
            assert await c.get("deployments", ns, "m-server") is not None
            assert not rf.requests  # nothing was sent with a key that is not one


async def test_roboflow_answering_a_list_is_a_poll_error_naming_the_shape(
        api: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = "t-list"
    with FixedAnswer(b"[]") as odd:
        async with operator_allowing(api, monkeypatch, odd.url) as c:
            await secret(c, ns, b"rf-key")
            await c.create(model("m", ns, {"dataset": {**ROBOFLOW, "apiUrl": odd.url},
                                           "trigger": {"minNewLabeledImages": 5}}))
            obj = await status_where(c, ns, "m", polled, "pollError")
            error = obj["status"]["training"]["pollError"]
            assert "polling Roboflow project acme/soccer failed" in error and "is list" in error
            assert condition(obj, "Reconciled")["status"] == "True"
            assert await c.get("services", ns, "m-server") is not None
