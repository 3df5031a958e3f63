"""Leader election over a Lease: who may take it, compare-and-swap, expiry on the candidate's own clock."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kontinual.controller import leader
from kontinual.controller.leader import LeaderElector, LeaseRecord, may_take
from kontinual.controller.settings import Settings


class Leases:
    """An API server's Lease store: resourceVersion checked on update, 409 as None (what k8s.write_lease returns)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.writes = 0

    def read(self, namespace: str, name: str, *, timeout: float) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def write(self, lease: dict[str, Any], *, timeout: float) -> dict[str, Any] | None:
        expected = lease["metadata"].get("resourceVersion")
        current = self.lease["metadata"]["resourceVersion"] if self.lease else None
        if expected != current:
            return None
        self.version += 1
        self.writes += 1
        self.lease = copy.deepcopy(lease)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def leases(monkeypatch: pytest.MonkeyPatch) -> Leases:
    store = Leases()
    monkeypatch.setattr(leader.k8s, "read_lease", store.read)
    monkeypatch.setattr(leader.k8s, "write_lease", store.write)
    return store


def candidates(clock: Clock) -> tuple[LeaderElector, LeaderElector]:
    return (LeaderElector("ops", "kontinual", "a_1", 15, clock=clock),
            LeaderElector("ops", "kontinual", "b_2", 15, clock=clock))


def test_who_may_take_the_lease() -> None:
    held = LeaseRecord(holder="a", duration_seconds=15, renew_time="t1")
    assert may_take(None, "b", 0)
    assert may_take(LeaseRecord(holder="", duration_seconds=1), "b", 0)  # released
    assert may_take(held, "a", 0)  # ours: renew
    assert not may_take(held, "b", 14.9)
    assert may_take(held, "b", 15)


def test_the_defaults_are_client_gos() -> None:
    assert leader.timings(15) == (10.0, 2.0)
    renew_deadline, retry = leader.timings(5)
    assert renew_deadline + retry < 5  # the holder gives up before anyone may take over


def test_only_one_of_two_candidates_leads(leases: Leases) -> None:
    clock = Clock()
    a, b = candidates(clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == "a_1"
    assert b.holder == "a_1"


def test_a_standby_takes_over_only_after_the_lease_went_unrenewed_for_its_duration(leases: Leases) -> None:
    clock = Clock()
    a, b = candidates(clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    clock.now += 10
    assert a.try_acquire_or_renew()  # renewed: b's count starts again when it sees the change
    clock.now += 2
    assert not b.try_acquire_or_renew()
    clock.now += 14.9  # a died right after its renewal
    assert not b.try_acquire_or_renew()
    clock.now += 0.1
    assert b.try_acquire_or_renew()
    assert leases.lease is not None
    assert leases.lease["spec"]["holderIdentity"] == "b_2" and leases.lease["spec"]["leaseTransitions"] == 1


def test_a_candidate_that_read_a_stale_lease_loses_the_race(leases: Leases, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    a, b = candidates(clock)
    assert a.try_acquire_or_renew()
    stale = leases.read("ops", "kontinual", timeout=1)
    clock.now += 20  # b believes a is gone ...
    b._observe(LeaseRecord.from_lease(stale or {}))
    clock.now += 20
    assert a.try_acquire_or_renew()  # ... but a renews between b's read and b's write
    monkeypatch.setattr(leader.k8s, "read_lease", lambda *_, **__: copy.deepcopy(stale))
    assert not b.try_acquire_or_renew()  # the resourceVersion no longer matches: 409
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == "a_1"


def test_release_hands_over_at_once(leases: Leases) -> None:
    clock = Clock()
    a, b = candidates(clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    a.release()
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == ""
    assert b.try_acquire_or_renew()  # no waiting out the duration


def test_the_leader_gives_up_when_it_cannot_renew(leases: Leases, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    a, _ = candidates(clock)
    assert a.try_acquire_or_renew()
    lost: list[str] = []

    def unreachable(*_: Any, **__: Any) -> None:
        clock.now += 2.0  # each failed attempt takes the retry period (2 s at 15 s)
        raise OSError("connection refused")
    monkeypatch.setattr(leader.k8s, "read_lease", unreachable)
    monkeypatch.setattr(a, "retry", 0.001)  # the thread's real wait; the clock moves in unreachable()
    a.keep(lost.append).join(timeout=5)
    assert lost == [f"could not renew the Lease for {a.renew_deadline:.0f} s"]
    assert clock.now - a.renewed_at < 15, "the holder must stop before a standby may take over"


def test_a_restarted_process_is_a_new_candidate() -> None:
    assert leader.identity("kontinual-7d9-abc") != leader.identity("kontinual-7d9-abc")
    assert leader.identity("kontinual-7d9-abc").startswith("kontinual-7d9-abc_")


def test_leader_election_settings() -> None:
    settings = Settings.from_env({"KONTINUAL_LEADER_ELECTION": "true", "KONTINUAL_LEASE_NAMESPACE": "ops",
                                  "KONTINUAL_LEASE_SECONDS": "20", "KONTINUAL_POD_NAME": "op-1"})
    assert (settings.leader_election, settings.lease_namespace, settings.lease_seconds) == (True, "ops", 20)
    assert settings.lease_name == "kontinual-operator" and settings.pod_name == "op-1"
    assert Settings.from_env({}).leader_election is False
    with pytest.raises(ValueError, match="KONTINUAL_LEADER_ELECTION must be 'true' or 'false', got 'yes'"):
        Settings.from_env({"KONTINUAL_LEADER_ELECTION": "yes"})
    with pytest.raises(ValueError, match="KONTINUAL_LEASE_SECONDS must be between 5 and 300"):
        Settings.from_env({"KONTINUAL_LEASE_SECONDS": "2"})
    with pytest.raises(ValueError, match="needs KONTINUAL_LEASE_NAMESPACE"):
        Settings.from_env({"KONTINUAL_LEADER_ELECTION": "true"}).check_leader_election()
