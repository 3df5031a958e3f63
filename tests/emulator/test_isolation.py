"""One tenant's slow Roboflow never stalls the others: polls run off the reconcile path, each with a total deadline."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from kontinual.controller.access import SECRET_LABEL
from kontinual.controller.handlers import registry
from tests.emulator.cluster import Cluster, condition, running_operator, wait_for
from tests.emulator.test_loop import ROBOFLOW, model, status_where
from tests.emulator.test_reconcile import MODEL_URI
from tests.support.badhttp import Dripping

STALLERS = 10  # more than kopf's 8 workers and the poll pool's 4


@contextlib.asynccontextmanager
async def busy_operator(api: Cluster, monkeypatch: pytest.MonkeyPatch, allowed_url: str) -> AsyncIterator[Cluster]:
    """The operator, its admin allowing the (dripping) Roboflow stand-in at `allowed_url`."""
    monkeypatch.setenv("KONTINUAL_RESYNC_SECONDS", "3600")  # every repair must come from a watch event
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_POLL_SECONDS", "1")
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("KONTINUAL_ROBOFLOW_API_URLS", allowed_url)
    async with running_operator(registry, api.kubeconfig):
        yield api


async def test_a_dripping_roboflow_does_not_delay_an_unrelated_repair(api: Cluster,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ns = "t-stall"
    with Dripping(interval=1.0) as drip:
        async with busy_operator(api, monkeypatch, drip.url) as c:
            await c.create({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "roboflow", "namespace": ns, "labels": {SECRET_LABEL: "true"}},
                            "data": {"apiKey": base64.b64encode(b"rf-stall-key").decode()}})
            for i in range(STALLERS):
                await c.create(model(f"slow-{i}", ns, {"dataset": {**ROBOFLOW, "apiUrl": drip.url},
                                                       "trigger": {"minNewLabeledImages": 10}}))
            await c.create({"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
                            "metadata": {"name": "other", "namespace": ns}, "spec": {"model": {"uri": MODEL_URI}}})
            await wait_for(lambda: drip.connections >= 4, 20, what="polls hanging on the dripping server")
            await wait_for(lambda: c.get("services", ns, "other-server"), 15, what="the unrelated CR's Service")

            await c.delete("services", ns, "other-server")
            deleted = time.monotonic()
            await wait_for(lambda: c.get("services", ns, "other-server"), 5, interval=0.1,
                           what="the unrelated CR's Service back within 5 s")
            print(f"Service back after {time.monotonic() - deleted:.2f} s with polls hanging")

            # Each hanging poll ended at its 3 s deadline, was recorded, and backs off.
            obj = await status_where(c, ns, "slow-0", lambda s: (s.get("training") or {}).get("pollFailures", 0) >= 2,
                                     "two failed polls of slow-0", timeout=30)
            training = obj["status"]["training"]
            assert "no complete answer within 3 s (a total deadline)" in training["pollError"]
            assert "rf-stall-key" not in training["pollError"]
            assert condition(obj, "Reconciled")["status"] == "True"
            for i in range(STALLERS):  # every slow CR got its children, none waited for its poll
                assert await c.get("deployments", ns, f"slow-{i}-server") is not None
