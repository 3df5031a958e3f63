"""Leader election with a coordination.k8s.io/v1 Lease: only the holder runs kopf; the others wait.

kopf's own peering pauses an operator when it sees a peer of the same or a higher priority, but
it is no lock: two replicas of equal priority both pause, and a restarted replica of higher
priority resumes before the one it displaces has seen it (both reconcile for that moment).
A Lease is a lock: the API server's resourceVersion check lets only one candidate write it.
This follows client-go's leaderelection: a candidate takes the Lease when it is free, released,
or has not changed for `leaseDurationSeconds` as measured on the candidate's own clock (no
clock skew between pods matters); the holder renews it every `retry` seconds and exits the
process when it could not renew for `renew_deadline` seconds (< the lease duration), so it has
stopped before anyone else may take over. On a clean stop the holder releases the Lease and a
standby takes over within one `retry`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kontinual.controller import k8s

log = logging.getLogger(__name__)


def timings(lease_seconds: int) -> tuple[float, float]:
    """(renew deadline, retry period) for a lease duration: client-go's 15/10/2 s, scaled."""
    return lease_seconds * 2 / 3, max(1.0, lease_seconds / 7.5)


def identity(pod_name: str) -> str:
    """This process's candidate name: the pod's (or host's) name and a random suffix.

    The suffix makes a restarted container a new candidate: it waits for its dead predecessor's
    Lease to expire instead of resuming it (two processes never share a name).
    """
    return f"{pod_name or os.uname().nodename}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as the holder wrote it, and the resourceVersion it was read at."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0
    resource_version: str = ""

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> "LeaseRecord":
        spec = lease.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""),
                   duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=str(spec.get("acquireTime") or ""), renew_time=str(spec.get("renewTime") or ""),
                   transitions=int(spec.get("leaseTransitions") or 0),
                   resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""))


def may_take(record: LeaseRecord | None, me: str, unchanged_for: float) -> bool:
    """Whether `me` may write the Lease: none yet, released, mine, or not renewed for its duration."""
    if record is None or not record.holder or record.holder == me:
        return True
    return unchanged_for >= record.duration_seconds


def _micro_time() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for the Lease `namespace/name`."""

    def __init__(self, namespace: str, name: str, me: str, lease_seconds: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.namespace, self.name, self.me, self.lease_seconds = namespace, name, me, lease_seconds
        self.renew_deadline, self.retry = timings(lease_seconds)
        self._clock = clock
        self._seen: tuple[str, str] | None = None  # (holder, renewTime) last read
        self._seen_at = 0.0  # our clock when that last changed
        self.holder = ""  # the holder as last read (for logs and /healthz)
        self.renewed_at = 0.0  # our clock at our last successful write
        self._stop = threading.Event()

    def _observe(self, record: LeaseRecord | None) -> float:
        """How long the Lease has been unchanged, on our clock (0 the first time we see a version)."""
        now = self._clock()
        key = (record.holder, record.renew_time) if record else None
        if key != self._seen:
            self._seen, self._seen_at = key, now
        self.holder = record.holder if record else ""
        return now - self._seen_at

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when we hold the Lease afterwards."""
        current = k8s.read_lease(self.namespace, self.name, timeout=self.retry)
        record = LeaseRecord.from_lease(current) if current is not None else None
        if not may_take(record, self.me, self._observe(record)):
            return False
        now = _micro_time()
        ours = record is not None and record.holder == self.me
        spec = {"holderIdentity": self.me, "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": record.acquire_time if ours and record else now, "renewTime": now,
                "leaseTransitions": (record.transitions if record else 0) + (0 if ours or record is None else 1)}
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if record is not None:
            metadata["resourceVersion"] = record.resource_version
        written = k8s.write_lease({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                                   "spec": spec}, timeout=self.retry)
        if written is None:
            return False  # someone else wrote it since we read it
        self._observe(LeaseRecord.from_lease(written))
        self.renewed_at = self._clock()
        return True

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as exc:  # noqa: BLE001 - the API server is away: a failed attempt, retried
            log.warning("leader election: Lease %s/%s: %s", self.namespace, self.name, k8s_message(exc))
            return False

    def acquire(self) -> bool:
        """Block until we hold the Lease (True) or stop() was called (False)."""
        log.info("leader election: %s waits for Lease %s/%s (taken over when not renewed for %s s)",
                 self.me, self.namespace, self.name, self.lease_seconds)
        announced = ""
        while not self._stop.is_set():
            if self._attempt():
                log.info("leader election: %s is the leader (Lease %s/%s)", self.me, self.namespace, self.name)
                return True
            if self.holder and self.holder != announced:
                log.info("leader election: standby; %s holds the Lease", self.holder)
                announced = self.holder
            self._stop.wait(self.retry)
        return False

    def keep(self, on_lost: Callable[[str], None]) -> threading.Thread:
        """Renew every `retry` s in a daemon thread; `on_lost(why)` once the Lease is no longer surely ours."""
        def renew() -> None:
            while not self._stop.wait(self.retry):
                if self._attempt():
                    continue
                if self.holder and self.holder != self.me:
                    on_lost(f"{self.holder} holds the Lease now")
                    return
                if self._clock() - self.renewed_at >= self.renew_deadline:
                    on_lost(f"could not renew the Lease for {self.renew_deadline:.0f} s")
                    return
        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def release(self) -> None:
        """Give the Lease up (after kopf has stopped), so a standby takes over without waiting it out."""
        self.stop()
        try:
            current = k8s.read_lease(self.namespace, self.name, timeout=self.retry)
            record = LeaseRecord.from_lease(current) if current is not None else None
            if record is None or record.holder != self.me:
                return
            k8s.write_lease({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": self.name, "namespace": self.namespace,
                                          "resourceVersion": record.resource_version},
                             "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time(),
                                      "acquireTime": record.acquire_time, "leaseTransitions": record.transitions}},
                            timeout=self.retry)
            log.info("leader election: %s released Lease %s/%s", self.me, self.namespace, self.name)
        except Exception as exc:  # noqa: BLE001 - the standby then takes over when the Lease expires
            log.warning("leader election: could not release Lease %s/%s: %s", self.namespace, self.name,
                        k8s_message(exc))


def k8s_message(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"{status} {getattr(exc, 'reason', '')}".strip() if status else str(exc) or type(exc).__name__


class StandbyHealth:
    """/healthz of a standby (kopf, which serves the leader's, is not running yet): 200 while it waits."""

    def __init__(self, host: str, port: int, elector: LeaderElector) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/healthz":
                    self.send_error(404)
                    return
                body = json.dumps({"leader": False, "holder": elector.holder}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # the kubelet probes every few seconds: no access log
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="standby-health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Free the port for kopf's liveness endpoint."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
