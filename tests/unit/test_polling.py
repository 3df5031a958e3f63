"""Roboflow polls: the backoff and due decisions, the bounded pool with a total deadline per call, /healthz's verdict."""

from __future__ import annotations

import contextvars
import datetime
import threading
import time

import pytest

from kontinual.common import deadline_http
from kontinual.controller import decisions, k8s, polling
from kontinual.controller.statusdata import TrainingStatus
from kontinual.controller.handlers import stuck
from kontinual.controller.polling import Poller, PollRequest
from kontinual.controller.settings import Settings
from tests.support.badhttp import Dripping, FixedAnswer

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request(uid: str, url: str) -> PollRequest:
    return PollRequest(namespace="ns", name=f"m-{uid}", uid=uid, api_url=url, workspace="acme", project="soccer",
                       secret_name="roboflow", secret_key="apiKey")


class TestDecisions:
    def test_a_first_poll_is_due_at_once(self) -> None:
        assert decisions.poll_due(TrainingStatus(), T0)

    def test_a_successful_poll_sets_the_next_one_an_interval_later(self) -> None:
        training = decisions.polled(TrainingStatus.from_dict({"pollFailures": 3, "pollError": "x"}), error=None,
                                    finished=T0, poll_seconds=300)
        assert training.to_dict() == {"lastPolledAt": "2026-03-01T12:00:00Z", "nextPollAt": "2026-03-01T12:05:00Z"}
        assert not decisions.poll_due(training, T0 + datetime.timedelta(seconds=299))
        assert decisions.poll_due(training, T0 + datetime.timedelta(seconds=300))

    def test_failures_back_off_doubling_up_to_a_cap(self) -> None:
        training = TrainingStatus()
        delays = []
        for _ in range(8):
            training = decisions.polled(training, error="down", finished=T0, poll_seconds=10)
            due = decisions.parse_iso(training.next_poll_at)
            assert due is not None
            delays.append((due - T0).total_seconds())
        assert delays == [20, 40, 80, 160, 320, 320, 320, 320]
        assert training.poll_failures == 8 and training.poll_error == "down"


def test_a_dripping_server_is_cut_at_the_total_deadline() -> None:
    with Dripping(interval=0.3) as server:  # a byte every 0.3 s: a per-read timeout would never fire
        started = time.monotonic()
        with pytest.raises(deadline_http.DeadlineError, match="total deadline"):
            deadline_http.get(server.url + "/acme/soccer", [("api_key", "rf-secret")], deadline=1.5)
        assert 1.4 < time.monotonic() - started < 3.0


def test_the_pool_is_bounded_and_every_call_ends_by_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "secret_value", lambda *_, **__: "rf-secret-key")
    woken: list[str] = []
    done = threading.Event()
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    seen_context: list[str] = []

    def wake(_ns: str, name: str) -> None:
        seen_context.append(marker.get("missing"))
        woken.append(name)
        if len(woken) == 6:
            done.set()

    with Dripping(interval=0.3) as server:
        poller = Poller(workers=2, deadline=1.0, wake=wake)
        marker.set("kopf's context")
        started = time.monotonic()
        assert all(poller.submit(request(str(i), server.url)) for i in range(6))
        assert not poller.submit(request("0", server.url))  # one slot per object
        time.sleep(0.3)
        assert poller.busy()[0] == 2  # never more running than workers
        assert done.wait(15), f"woken: {woken}"
        elapsed = time.monotonic() - started
        poller.shutdown()
    assert 2.8 < elapsed < 8, elapsed  # three rounds of two 1 s calls
    assert seen_context == ["kopf's context"] * 6  # kopf.event works in the woken reconcile
    results = [poller.take(str(i)) for i in range(6)]
    assert all(r is not None and r.labeled is None and "total deadline" in (r.error or "") for r in results)
    assert all("rf-secret-key" not in (r.error or "") for r in results if r)
    assert poller.take("0") is None  # taken once


def test_a_poll_that_returns_is_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "secret_value", lambda *_, **__: "rf-secret-key")
    body = b'{"project": {"images": 30, "unannotated": 4}, "versions": []}'
    with FixedAnswer(body) as server:
        result = polling.poll_once(request("u", server.url), deadline=5)
    assert (result.labeled, result.error) == (26, None)


def test_health_verdict() -> None:
    settings = Settings(stuck_seconds=120, roboflow_timeout_seconds=20)
    assert stuck(119, 139, settings) is None
    assert "a reconcile has been running for 120 s" in (stuck(120, 0, settings) or "")
    assert "past its 20 s deadline" in (stuck(0, 140, settings) or "")
