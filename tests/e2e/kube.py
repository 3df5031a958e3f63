"""What the end-to-end tests do to a real API server: apply manifests, wait, and play kubelet."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, utils
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "kontinual.io", "v1alpha1", "continualmodels"
SECRET_LABEL = "kontinual.io/allow-continualmodels"  # what a Secret's owner sets to let ContinualModels use it (README)
T = TypeVar("T")


class AdminApis:
    """The typed APIs over an `admin` client (the control plane's here, the real node's in tests/node)."""

    admin: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.admin)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.admin)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.admin)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.admin)


@dataclass(frozen=True)
class Cluster(AdminApis):
    """A running control plane as the tests see it: kubeconfig, server and an admin client."""

    kubeconfig: Path
    server: str
    ca_file: Path
    admin: client.ApiClient
    logs: Path


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0,
             interval: float = 0.25, diagnose: Callable[[], str] | None = None) -> T:
    """Polls `probe` until it returns something truthy; fails naming `what` (and diagnostics)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except ApiException as error:
            last_error = error
        time.sleep(interval)
    detail = f"; last API error: {last_error.status} {last_error.reason}" if last_error else ""
    extra = f"\n{diagnose()}" if diagnose else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}{extra}")


def apply_manifests(api: client.ApiClient, manifests: Iterable[dict[str, Any]]) -> None:
    """Create built-in objects (ConfigMap, Secret, RBAC, ...) as an admin would with kubectl."""
    for manifest in manifests:
        try:
            utils.create_from_dict(api, manifest)
        except utils.FailToCreateError as error:
            conflicts = [e for e in error.api_exceptions if e.status != 409]
            if conflicts:
                raise


def ensure_namespace(cluster: Cluster, name: str) -> None:
    try:
        cluster.core.create_namespace({"metadata": {"name": name}})
    except ApiException as error:
        if error.status != 409:
            raise
    wait_for(f"the default ServiceAccount of namespace {name}",
             lambda: cluster.core.read_namespaced_service_account("default", name).secrets)


def get_model(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def condition(model: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for entry in ((model or {}).get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return dict(entry)
    return {}


def error_message(error: ApiException) -> str:
    """The API server's own message of a rejected request."""
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.body)


def owned_by(obj: Any, uid: str) -> bool:
    refs = obj.metadata.owner_references or []
    return any(ref.uid == uid and ref.controller for ref in refs)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def play_kubelet_ready(cluster: Cluster, pod: client.V1Pod) -> None:
    """Report a server pod Running and Ready, as a kubelet would once its probes pass."""
    now = _now()
    statuses = [{"name": c.name, "ready": True, "started": True, "restartCount": 0,
                 "image": c.image, "imageID": "", "state": {"running": {"startedAt": now}}}
                for c in pod.spec.containers]
    conditions = [{"type": kind, "status": "True", "lastTransitionTime": now}
                  for kind in ("Initialized", "ContainersReady", "Ready", "PodScheduled")]
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
        "phase": "Running", "startTime": now, "conditions": conditions, "containerStatuses": statuses}})


def play_kubelet_terminated(cluster: Cluster, pod: client.V1Pod, *, exit_code: int, message: str) -> None:
    """Report the pod's container terminated with `message` (the termination-log text)."""
    now = _now()
    statuses = [{"name": c.name, "ready": False, "restartCount": 0, "image": c.image, "imageID": "",
                 "state": {"terminated": {
                     "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                     "message": message, "startedAt": now, "finishedAt": now}}}
                for c in pod.spec.containers]
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed", "startTime": now,
        "containerStatuses": statuses}})
