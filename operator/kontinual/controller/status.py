"""Status as conditions: build them, keep their transition times, and roll them up into Ready."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

READY, RECONCILED, AVAILABLE, TRAINING, DEGRADED = "Ready", "Reconciled", "Available", "Training", "Degraded"
ORDER = (READY, RECONCILED, AVAILABLE, TRAINING, DEGRADED)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""

    def to_dict(self, generation: int, now: str, previous: Mapping[str, Any] | None) -> dict[str, Any]:
        """Kubernetes condition dict; lastTransitionTime moves only when the status flips."""
        status = "True" if self.status else "False"
        since = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
        return {
            "type": self.type,
            "status": status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": since or now,
            "observedGeneration": generation,
        }


def roll_up(conditions: Iterable[Condition]) -> Condition:
    """Ready: Reconciled and Available, and not Degraded. The first blocker gives reason and message."""
    by_type = {c.type: c for c in conditions}
    for kind in (RECONCILED, AVAILABLE):
        cond = by_type.get(kind)
        if cond is None:
            return Condition(READY, False, f"{kind}Unknown", f"{kind} has not been observed yet")
        if not cond.status:
            return Condition(READY, False, cond.reason, cond.message)
    degraded = by_type.get(DEGRADED)
    if degraded is not None and degraded.status:
        return Condition(READY, False, degraded.reason, degraded.message)
    return Condition(READY, True, "Serving", by_type[AVAILABLE].message)


def availability(deploy: Mapping[str, Any] | None, wanted_generation: int | None = None) -> Condition:
    """Available: the Deployment has rolled out its current template with every replica ready."""
    if deploy is None:
        return Condition(AVAILABLE, False, "DeploymentMissing", "the server Deployment does not exist yet")
    spec, status = deploy.get("spec") or {}, deploy.get("status") or {}
    generation = (deploy.get("metadata") or {}).get("generation") or 0
    if wanted_generation is not None:
        generation = max(generation, wanted_generation)
    replicas = spec.get("replicas", 1)
    if (status.get("observedGeneration") or 0) < generation:
        return Condition(AVAILABLE, False, "RolloutInProgress", "the Deployment controller has not seen the change yet")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return Condition(AVAILABLE, False, "ProgressDeadlineExceeded", cond.get("message") or "rollout stalled")
    if replicas == 0:
        return Condition(AVAILABLE, False, "ScaledToZero", "spec.serving.replicas is 0")
    updated = status.get("updatedReplicas") or 0
    total = status.get("replicas") or 0
    ready = status.get("readyReplicas") or 0
    available = status.get("availableReplicas") or 0
    if updated < replicas:
        return Condition(AVAILABLE, False, "RolloutInProgress", f"{updated} of {replicas} pods run the wanted model")
    if total > updated:
        old = total - updated
        return Condition(AVAILABLE, False, "RolloutInProgress",
                         f"{old} pod{'s' if old != 1 else ''} of the previous template still running")
    if min(ready, available) < replicas:
        return Condition(AVAILABLE, False, "PodsNotReady", f"{min(ready, available)} of {replicas} pods ready")
    return Condition(AVAILABLE, True, "RolledOut", f"{ready} of {replicas} pods ready")


def merge_conditions(current: Iterable[Condition], previous: list[Mapping[str, Any]] | None,
                     generation: int, now: str) -> list[dict[str, Any]]:
    """The new conditions list: ours in a fixed order, preserving transition times of unchanged ones."""
    before = {c.get("type"): c for c in previous or []}
    ours = {c.type: c for c in current}
    return [ours[t].to_dict(generation, now, before.get(t)) for t in ORDER if t in ours]


def parse_conditions(items: list[Mapping[str, Any]] | None) -> dict[str, Condition]:
    """Conditions as stored in status -> Condition objects (for decisions that read the last state)."""
    return {
        c["type"]: Condition(c["type"], c.get("status") == "True", c.get("reason", ""), c.get("message", ""))
        for c in items or [] if c.get("type")
    }
