"""Status: the Ready roll-up, Deployment availability, and condition transition times."""

from __future__ import annotations

from typing import Any

import pytest

from kontinual.controller.status import (AVAILABLE, DEGRADED, READY, RECONCILED, TRAINING, Condition, availability,
                              merge_conditions, parse_conditions, roll_up)

T0, T1 = "2026-11-27T10:00:00Z", "2026-11-27T11:00:00Z"

# --- roll_up ---------------------------------------------------------------------------------

OK_RECONCILED = Condition(RECONCILED, True, "Applied", "children match the spec")
OK_AVAILABLE = Condition(AVAILABLE, True, "RolledOut", "1 of 1 pods ready")
BAD_RECONCILED = Condition(RECONCILED, False, "InvalidSpec", "spec.model.uri is required")
BAD_AVAILABLE = Condition(AVAILABLE, False, "PodsNotReady", "0 of 1 pods ready")
DEGRADED_ON = Condition(DEGRADED, True, "GateRejected", "candidate mAP50 0.40 < serving 0.61")
DEGRADED_OFF = Condition(DEGRADED, False, "Healthy")
TRAINING_ON = Condition(TRAINING, True, "JobRunning", "soccer-train-3")


@pytest.mark.parametrize("conditions, ready, reason", [
    # reconciled, available, degraded -> Ready
    ([OK_RECONCILED, OK_AVAILABLE], True, "Serving"),
    ([OK_RECONCILED, OK_AVAILABLE, DEGRADED_OFF], True, "Serving"),
    ([OK_RECONCILED, OK_AVAILABLE, TRAINING_ON], True, "Serving"),  # training does not make it unready
    ([OK_RECONCILED, OK_AVAILABLE, DEGRADED_ON], False, "GateRejected"),
    ([OK_RECONCILED, BAD_AVAILABLE], False, "PodsNotReady"),
    ([OK_RECONCILED, BAD_AVAILABLE, DEGRADED_ON], False, "PodsNotReady"),
    ([BAD_RECONCILED, OK_AVAILABLE], False, "InvalidSpec"),
    ([BAD_RECONCILED, BAD_AVAILABLE], False, "InvalidSpec"),  # the first blocker names the cause
    ([BAD_RECONCILED, BAD_AVAILABLE, DEGRADED_ON], False, "InvalidSpec"),
    ([OK_RECONCILED], False, "AvailableUnknown"),
    ([OK_AVAILABLE], False, "ReconciledUnknown"),
    ([], False, "ReconciledUnknown"),
])
def test_roll_up_truth_table(conditions: list[Condition], ready: bool, reason: str) -> None:
    result = roll_up(conditions)
    assert (result.type, result.status, result.reason) == (READY, ready, reason)
    assert result.message  # a person reading `kubectl get cmodel -o wide` sees why


def test_roll_up_carries_the_blockers_message() -> None:
    assert roll_up([BAD_RECONCILED, OK_AVAILABLE]).message == BAD_RECONCILED.message
    assert roll_up([OK_RECONCILED, OK_AVAILABLE, DEGRADED_ON]).message == DEGRADED_ON.message
    assert roll_up([OK_RECONCILED, OK_AVAILABLE]).message == OK_AVAILABLE.message


def test_roll_up_is_order_independent() -> None:
    conditions = [DEGRADED_ON, OK_AVAILABLE, OK_RECONCILED, TRAINING_ON]
    assert roll_up(conditions) == roll_up(list(reversed(conditions)))


# --- availability -----------------------------------------------------------------------------


def deployment(replicas: int = 2, generation: int = 3, observed: int | None = 3, updated: int = 2, total: int = 2,
               ready: int = 2, available: int = 2, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
                              "availableReplicas": available, "conditions": conditions or []}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "soccer-server", "generation": generation}, "spec": {"replicas": replicas},
            "status": status}


def test_missing_deployment() -> None:
    cond = availability(None)
    assert (cond.type, cond.status, cond.reason) == (AVAILABLE, False, "DeploymentMissing")


def test_generation_not_yet_observed() -> None:
    cond = availability(deployment(generation=4, observed=3))
    assert (cond.status, cond.reason) == (False, "RolloutInProgress")
    assert availability(deployment(observed=None)).reason == "RolloutInProgress"


def test_generation_we_just_applied_counts_even_if_the_read_copy_is_older() -> None:
    # The copy read back may predate our patch: the patch's generation is what must be observed.
    cond = availability(deployment(generation=3, observed=3), wanted_generation=4)
    assert (cond.status, cond.reason) == (False, "RolloutInProgress")
    assert availability(deployment(generation=3, observed=3), wanted_generation=2).status is True


def test_rolling_new_pods_not_all_updated() -> None:
    cond = availability(deployment(updated=1, total=3, ready=2, available=2))
    assert (cond.status, cond.reason) == (False, "RolloutInProgress")
    assert "1 of 2" in cond.message


def test_rolling_old_pods_still_terminating() -> None:
    cond = availability(deployment(updated=2, total=3, ready=3, available=3))
    assert (cond.status, cond.reason) == (False, "RolloutInProgress")


@pytest.mark.parametrize("ready, available", [(1, 1), (2, 1), (1, 2), (0, 0)])
def test_pods_not_ready(ready: int, available: int) -> None:
    cond = availability(deployment(ready=ready, available=available))
    assert (cond.status, cond.reason) == (False, "PodsNotReady")
    assert f"{min(ready, available)} of 2" in cond.message


def test_progress_deadline_exceeded_is_reported_with_the_controllers_message() -> None:
    stalled = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
               "message": 'ReplicaSet "soccer-server-7d9" has timed out progressing.'}
    cond = availability(deployment(updated=1, ready=1, available=1, conditions=[stalled]))
    assert (cond.status, cond.reason) == (False, "ProgressDeadlineExceeded")
    assert "timed out progressing" in cond.message


def test_progressing_condition_that_is_fine_does_not_block() -> None:
    fine = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    assert availability(deployment(conditions=[fine])).status is True


def test_scaled_to_zero() -> None:
    cond = availability(deployment(replicas=0, updated=0, total=0, ready=0, available=0))
    assert (cond.status, cond.reason) == (False, "ScaledToZero")
    assert "replicas" in cond.message


def test_rolled_out() -> None:
    cond = availability(deployment())
    assert (cond.type, cond.status, cond.reason) == (AVAILABLE, True, "RolledOut")
    assert "2 of 2" in cond.message


def test_replicas_default_to_one() -> None:
    deploy = deployment(updated=1, total=1, ready=1, available=1)
    del deploy["spec"]["replicas"]
    assert availability(deploy).status is True


def test_fresh_deployment_without_status() -> None:
    cond = availability({"metadata": {"generation": 1}, "spec": {"replicas": 1}})
    assert (cond.status, cond.reason) == (False, "RolloutInProgress")


# --- transition times ---------------------------------------------------------------------------


def test_condition_dict_has_the_kubernetes_fields() -> None:
    d = Condition(READY, True, "Serving", "1 of 1 pods ready").to_dict(7, T0, None)
    assert d == {"type": READY, "status": "True", "reason": "Serving", "message": "1 of 1 pods ready",
                 "lastTransitionTime": T0, "observedGeneration": 7}
    assert Condition(READY, False, "PodsNotReady").to_dict(7, T0, None)["status"] == "False"


def test_last_transition_time_is_kept_while_the_status_holds() -> None:
    before = Condition(AVAILABLE, False, "RolloutInProgress", "0 of 1").to_dict(1, T0, None)
    # Reason and message may change; the status did not flip, so the time stays.
    after = Condition(AVAILABLE, False, "PodsNotReady", "0 of 1 pods ready").to_dict(2, T1, before)
    assert after["lastTransitionTime"] == T0
    assert (after["reason"], after["observedGeneration"]) == ("PodsNotReady", 2)


def test_last_transition_time_moves_when_the_status_flips() -> None:
    before = Condition(AVAILABLE, False, "PodsNotReady").to_dict(1, T0, None)
    flipped = Condition(AVAILABLE, True, "RolledOut").to_dict(1, T1, before)
    assert flipped["lastTransitionTime"] == T1
    back = Condition(AVAILABLE, False, "PodsNotReady").to_dict(1, "2026-11-27T12:00:00Z", flipped)
    assert back["lastTransitionTime"] == "2026-11-27T12:00:00Z"


def test_merge_conditions_keeps_times_of_unchanged_and_orders_ready_first() -> None:
    first = merge_conditions([OK_AVAILABLE, OK_RECONCILED, roll_up([OK_RECONCILED, OK_AVAILABLE])], None, 1, T0)
    assert [c["type"] for c in first] == [READY, RECONCILED, AVAILABLE]
    assert {c["lastTransitionTime"] for c in first} == {T0}
    second_input = [OK_RECONCILED, BAD_AVAILABLE, roll_up([OK_RECONCILED, BAD_AVAILABLE]), TRAINING_ON]
    second = {c["type"]: c for c in merge_conditions(second_input, first, 2, T1)}
    assert second[RECONCILED]["lastTransitionTime"] == T0  # unchanged
    assert second[AVAILABLE]["lastTransitionTime"] == T1  # flipped
    assert second[READY]["lastTransitionTime"] == T1  # flipped
    assert second[TRAINING]["lastTransitionTime"] == T1  # new
    assert {c["observedGeneration"] for c in second.values()} == {2}


def test_merge_conditions_is_idempotent() -> None:
    conditions = [OK_RECONCILED, OK_AVAILABLE, roll_up([OK_RECONCILED, OK_AVAILABLE])]
    first = merge_conditions(conditions, None, 1, T0)
    assert merge_conditions(conditions, first, 1, T1) == first


def test_parse_conditions_round_trips() -> None:
    stored = merge_conditions([OK_RECONCILED, BAD_AVAILABLE, DEGRADED_ON], None, 1, T0)
    parsed = parse_conditions(stored)
    assert parsed == {RECONCILED: OK_RECONCILED, AVAILABLE: BAD_AVAILABLE, DEGRADED: DEGRADED_ON}
    assert parse_conditions(None) == {}
    assert parse_conditions([{"status": "True"}]) == {}  # an entry without a type is ignored
