"""Roboflow polls off the reconcile path: their own bounded pool, a total deadline per call, results kept for the next reconcile.

A poll never runs inside a reconcile (which holds the object's lock and one of kopf's workers):
the reconcile asks for one after the serving children are applied and returns. A worker of this
pool reads the key, calls Roboflow with a total deadline, keeps the result in memory and wakes
a reconcile of that object, which records the count, the error and the next poll time in
status. Status is the only memory that matters: a result lost with a restart is polled again,
because `nextPollAt` was never moved. At most one poll per object is queued or running.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from kontinual.controller import k8s
from kontinual.controller.metrics import METRICS
from kontinual.common.names import SECRET_LABEL
from kontinual.common.roboflow import RoboflowClient, RoboflowError, redact

log = logging.getLogger(__name__)
Wake = Callable[[str, str], None]  # (namespace, name): reconcile that object soon


@dataclass(frozen=True)
class PollRequest:
    """One annotated-image count to fetch for one ContinualModel (by uid: a re-created CR starts over)."""

    namespace: str
    name: str
    uid: str
    api_url: str
    workspace: str
    project: str
    secret_name: str
    secret_key: str

    @property
    def source(self) -> tuple[str, str, str]:
        return self.api_url, self.workspace, self.project


@dataclass(frozen=True)
class PollResult:
    source: tuple[str, str, str]  # what was polled: a result for a since-edited spec is dropped
    labeled: int | None
    error: str | None
    finished: datetime.datetime


def poll_once(request: PollRequest, deadline: float) -> PollResult:
    """Read the key and fetch the count; every failure becomes an error message without the key."""
    key = ""
    labeled, error = None, None
    try:
        key = k8s.secret_value(request.namespace, request.secret_name, request.secret_key, label=SECRET_LABEL)
        client = RoboflowClient(key, request.api_url, deadline=deadline)
        labeled = client.project_info(request.workspace, request.project).annotated
    except (LookupError, RoboflowError, OSError, ValueError) as exc:
        error = f"polling Roboflow project {request.workspace}/{request.project} failed: {exc}"
    except Exception as exc:  # noqa: BLE001 - a poll must never take the pool (or a reconcile) down
        log.exception("unexpected error polling %s/%s", request.namespace, request.name)
        error = f"polling Roboflow project {request.workspace}/{request.project} failed: unexpected {type(exc).__name__}"
    if error is not None:
        error = redact(error, key)
    return PollResult(request.source, labeled, error, datetime.datetime.now(datetime.timezone.utc))


class Poller:
    """A bounded pool of poll workers with one slot per object and a record of how long each call runs."""

    def __init__(self, workers: int, deadline: float, wake: Wake) -> None:
        self.deadline = deadline
        self._wake = wake
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kontinual-poll")
        self._lock = threading.Lock()
        self._queued: set[str] = set()  # uids with a poll queued or running
        self._running: dict[str, float] = {}  # uid -> monotonic start
        self._results: dict[str, PollResult] = {}

    def submit(self, request: PollRequest) -> bool:
        """Queue a poll unless one is queued or running for that object already; never blocks."""
        with self._lock:
            if request.uid in self._queued or request.uid in self._results:
                return False  # one in flight, or a result the next reconcile has not taken yet
            self._queued.add(request.uid)
        # kopf.event needs kopf's context variables in the thread that posts (the woken reconcile).
        context = contextvars.copy_context()
        self._pool.submit(context.run, self._work, request)
        return True

    def _work(self, request: PollRequest) -> None:
        started = time.monotonic()
        with self._lock:
            self._running[request.uid] = started
        try:
            result = poll_once(request, self.deadline)
            METRICS.polled(request.namespace, request.name, seconds=time.monotonic() - started,
                           failed=result.error is not None, uid=request.uid)
            with self._lock:
                self._results[request.uid] = result
        finally:
            with self._lock:
                self._running.pop(request.uid, None)
                self._queued.discard(request.uid)
        try:
            self._wake(request.namespace, request.name)
        except Exception:  # noqa: BLE001 - the next resync picks the result up
            log.exception("reconcile after the poll of %s/%s failed", request.namespace, request.name)

    def take(self, uid: str) -> PollResult | None:
        """The finished poll of that object, once (the reconcile that records it takes it)."""
        with self._lock:
            return self._results.pop(uid, None)

    def pending(self, uid: str) -> bool:
        """A poll of that object is queued, running, or finished but not yet taken."""
        with self._lock:
            return uid in self._queued or uid in self._results

    def forget(self, uid: str) -> None:
        with self._lock:
            self._results.pop(uid, None)

    def oldest_running(self) -> float:
        """Seconds the longest-running poll has been running (0 when none runs)."""
        with self._lock:
            starts = list(self._running.values())
        return max((time.monotonic() - s for s in starts), default=0.0)

    def busy(self) -> tuple[int, int]:
        """(running, queued or running) polls."""
        with self._lock:
            return len(self._running), len(self._queued)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_poller: Poller | None = None


def start(workers: int, deadline: float, wake: Wake) -> Poller:
    """The process's poller (a restarted operator in the same process gets a fresh one)."""
    global _poller
    if _poller is not None:
        _poller.shutdown()
    _poller = Poller(workers, deadline, wake)
    return _poller


def current() -> Poller | None:
    return _poller


def stop() -> None:
    """At the operator's exit: queued polls are dropped, running ones end at their deadline."""
    global _poller
    if _poller is not None:
        _poller.shutdown()
        _poller = None
