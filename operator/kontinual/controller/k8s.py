"""The one module that talks to the Kubernetes API (besides kopf itself): apply, get, list, status.

Children are applied with JSON merge-patch under one field manager (and created on 404): the
patch carries the whole desired object, so lists we own (containers, volumes, env) are replaced
as a whole and hand edits to them are undone; fields we never set are left to their owners.
An existing object is patched only if its controller ownerReference is the desired one's (the
same ContinualModel uid), checked on the object as read and pinned by its resourceVersion, so
the operator never takes over (and the garbage collector never deletes) another team's object.
Every resource and verb used here is declared in `API_USAGE`, from which the Helm chart's RBAC
is checked (tests/chart), so the code and the chart cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kontinual.common.names import GROUP, PLURAL, VERSION

FIELD_MANAGER = "kontinual"
log = logging.getLogger(__name__)

# (apiGroup, resource, verbs) for every call this module can make; see the module docstring.
API_USAGE: list[tuple[str, str, tuple[str, ...]]] = []


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    verbs: tuple[str, ...]

    def __post_init__(self) -> None:
        API_USAGE.append((self.group, self.plural, self.verbs))

    def path(self, namespace: str, name: str = "", version: str = "") -> str:
        version = version or self.version
        base = f"/api/{version}" if not self.group else f"/apis/{self.group}/{version}"
        plural, _, subresource = self.plural.partition("/")
        path = f"{base}/namespaces/{namespace}/{plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


RESOURCES: dict[str, Resource] = {
    "ContinualModel": Resource(GROUP, VERSION, PLURAL, ("get", "list", "watch", "patch")),
    "ConfigMap": Resource("", "v1", "configmaps", ("get", "list", "watch", "create", "patch")),
    "Service": Resource("", "v1", "services", ("get", "list", "watch", "create", "patch")),
    "PersistentVolumeClaim": Resource("", "v1", "persistentvolumeclaims", ("get", "list", "watch", "create", "patch")),
    "Deployment": Resource("apps", "v1", "deployments", ("get", "list", "watch", "create", "patch")),
    "Job": Resource("batch", "v1", "jobs", ("get", "list", "watch", "create")),
    "Pod": Resource("", "v1", "pods", ("get", "list", "watch")),
    # The server's HPA (spec.serving.autoscaling); deleted when autoscaling is switched off.
    "HorizontalPodAutoscaler": Resource("autoscaling", "v2beta2", "horizontalpodautoscalers",
                                        ("get", "create", "patch", "delete")),
    # The server pods' NetworkPolicy (spec.serving.networkPolicy); watched so a deleted one comes
    # back at once, deleted when the spec drops it.
    "NetworkPolicy": Resource("networking.k8s.io", "v1", "networkpolicies",
                              ("get", "list", "watch", "create", "patch", "delete")),
    # Only the Roboflow key, for minNewLabeledImages polling; never logged or stored.
    "Secret": Resource("", "v1", "secrets", ("get",)),
}
STATUS = Resource(GROUP, VERSION, f"{PLURAL}/status", ("get", "patch"))
# Leader election's Lease lives in the operator's own namespace, not in the watched ones: kept out
# of API_USAGE (granted where ContinualModels are) and granted by a Role of its own (tests/chart).
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
LEADER_API_USAGE: list[tuple[str, str, tuple[str, ...]]] = [("coordination.k8s.io", "leases", ("get", "create", "update"))]

PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ChildConflict(Exception):
    """An object with a child's name exists but is not controlled by this ContinualModel: left unchanged."""

    def __init__(self, kind: str, namespace: str, name: str, controller: str) -> None:
        super().__init__(f"{kind} {namespace}/{name} exists and is not controlled by this ContinualModel "
                         f"({controller}); Kontinual leaves it unchanged: rename the ContinualModel or remove "
                         f"that {kind}")
        self.kind, self.namespace, self.name = kind, namespace, name


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with controller: true, if any."""
    return next((ref for ref in (obj.get("metadata") or {}).get("ownerReferences") or [] if ref.get("controller")),
                None)


def _check_controller(desired: dict[str, Any], existing: dict[str, Any]) -> None:
    wanted, found = controller_of(desired), controller_of(existing)
    if (wanted or {}).get("uid") == (found or {}).get("uid"):
        return
    meta = desired["metadata"]
    owner = f"controlled by {found.get('kind')} {found.get('name')}" if found else "it has no controller"
    raise ChildConflict(desired["kind"], meta["namespace"], meta["name"], owner)


_client: client.ApiClient | None = None
_autoscaling_api: str | None = None  # discovered once per process
_lock = threading.Lock()


def load_config() -> None:
    """Use the in-cluster config inside a pod, else KUBECONFIG / ~/.kube/config."""
    global _client
    with _lock:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _client = client.ApiClient()


def _api() -> client.ApiClient:
    if _client is None:
        load_config()
    assert _client is not None
    return _client


def _call(method: str, path: str, body: Any = None, *, content_type: str = "application/json",
          query: list[tuple[str, str]] | None = None, accept: str = "application/json",
          timeout: float | None = None) -> dict[str, Any]:
    """The API server's answer, decoded: an object (a single one, a List or a Status)."""
    return cast(dict[str, Any], _api().call_api(
        path, method,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": accept},
        body=body,
        response_types_map={200: "object", 201: "object"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _request_timeout=timeout,
    ))


def api_error(exc: ApiException) -> str:
    """The API server's own message of a failed call (e.g. the schema violation)."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def get(kind: str, namespace: str, name: str, version: str = "") -> dict[str, Any] | None:
    try:
        return _call("GET", RESOURCES[kind].path(namespace, name, version))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_objects(kind: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
    query = [("labelSelector", label_selector)] if label_selector else []
    result = _call("GET", RESOURCES[kind].path(namespace), query=query)
    return list(result.get("items") or [])


def _version(obj: dict[str, Any]) -> str:
    return str(obj.get("apiVersion", "")).rpartition("/")[2]


def preferred_autoscaling_api() -> str:
    """autoscaling/v2 where the API server serves it (1.23+), else autoscaling/v2beta2 (1.20)."""
    global _autoscaling_api
    if _autoscaling_api is None:
        try:
            group = _call("GET", "/apis/autoscaling")
            served = {v.get("version") for v in (group or {}).get("versions") or []}
        except ApiException as exc:
            log.warning("API discovery of autoscaling failed (%s); assuming autoscaling/v2beta2", api_error(exc))
            return "autoscaling/v2beta2"
        _autoscaling_api = "autoscaling/v2" if "v2" in served else "autoscaling/v2beta2"
    return _autoscaling_api


def delete_owned(kind: str, namespace: str, name: str, owner_uid: str, version: str = "") -> bool:
    """Delete a child only if `owner_uid` controls it (never someone else's object); True if deleted."""
    current = get(kind, namespace, name, version)
    refs = ((current or {}).get("metadata") or {}).get("ownerReferences") or []
    if current is None or not any(r.get("uid") == owner_uid and r.get("controller") for r in refs):
        return False
    try:
        _call("DELETE", RESOURCES[kind].path(namespace, name, version))
    except ApiException as exc:
        if exc.status != 404:
            raise
    return True


def apply(obj: dict[str, Any], *, metadata_only: bool = False) -> dict[str, Any]:
    """Make the object match `obj`: create it when absent, else merge-patch it if `obj`'s controller owns it.

    An existing object whose controller ownerReference is not `obj`'s raises ChildConflict and is
    not touched. The patch is pinned to the resourceVersion the check saw (a 409 re-reads and
    re-checks), so an object replaced in between is never patched either. `metadata_only`
    patches only labels/ownerReferences (for kinds whose spec is immutable, like PVCs).
    """
    resource = RESOURCES[obj["kind"]]
    meta = obj["metadata"]
    path = resource.path(meta["namespace"], meta["name"], _version(obj))
    for _ in range(3):
        existing = get(obj["kind"], meta["namespace"], meta["name"], _version(obj))
        if existing is None:
            try:
                return _call("POST", resource.path(meta["namespace"], version=_version(obj)), obj,
                             query=[("fieldManager", FIELD_MANAGER)])
            except ApiException as exc:
                if exc.status != 409:  # 409: created concurrently; check whose it is
                    raise
                continue
        _check_controller(obj, existing)
        patch = {"metadata": {k: meta[k] for k in ("labels", "ownerReferences") if k in meta}} if metadata_only else obj
        patch = {**patch, "metadata": {**patch["metadata"],
                                       "resourceVersion": existing["metadata"].get("resourceVersion")}}
        try:
            return _call("PATCH", path, patch, content_type="application/merge-patch+json",
                         query=[("fieldManager", FIELD_MANAGER)])
        except ApiException as exc:
            if exc.status not in (404, 409):  # deleted or changed since the read: read and check again
                raise
    raise ApiException(status=409, reason=f"{obj['kind']} {meta['namespace']}/{meta['name']} kept changing "
                                          "while it was applied; retried on the next reconcile")


def create(obj: dict[str, Any]) -> dict[str, Any] | None:
    """Create once; None if it already exists and is ours (names are deterministic, so this is idempotent).

    An existing object of that name with another controller raises ChildConflict.
    """
    meta = obj["metadata"]
    try:
        return _call("POST", RESOURCES[obj["kind"]].path(meta["namespace"]), obj,
                     query=[("fieldManager", FIELD_MANAGER)])
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = get(obj["kind"], meta["namespace"], meta["name"])
    if existing is not None:
        _check_controller(obj, existing)
    return None


def secret_labels(namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's labels, None if it does not exist. Only its metadata is fetched: never its values."""
    try:
        meta = _call("GET", RESOURCES["Secret"].path(namespace, name), accept=PARTIAL_METADATA)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict((meta.get("metadata") or {}).get("labels") or {})


def secret_value(namespace: str, name: str, key: str, *, label: str) -> str:
    """One key of a Secret that carries `label: "true"`, decoded; otherwise LookupError naming what is wrong.

    The label is checked on the Secret's metadata before its values are fetched at all, and
    again on the full object (it may have changed in between).
    """
    labels = secret_labels(namespace, name)
    if labels is not None and labels.get(label) != "true":
        raise LookupError(f"Secret {namespace}/{name} is not labelled {label}=true")
    secret = get("Secret", namespace, name) if labels is not None else None
    if secret is None:
        raise LookupError(f"Secret {namespace}/{name} not found")
    if ((secret.get("metadata") or {}).get("labels") or {}).get(label) != "true":
        raise LookupError(f"Secret {namespace}/{name} is not labelled {label}=true")
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        raise LookupError(f"Secret {namespace}/{name} has no key {key!r}")
    try:
        value = base64.b64decode(raw, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        # Never the bytes themselves: they are a secret, whatever their encoding.
        raise LookupError(f"Secret {namespace}/{name} key {key!r} is not UTF-8 text (an API key is plain text)") from None
    if not value or not value.isprintable():
        raise LookupError(f"Secret {namespace}/{name} key {key!r} is empty or holds control characters "
                          "(an API key is one line of plain text)")
    return value


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch the ContinualModel's status subresource; None if the object is gone."""
    try:
        return _call("PATCH", STATUS.path(namespace, name), {"status": status},
                     content_type="application/merge-patch+json", query=[("fieldManager", FIELD_MANAGER)])
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def read_lease(namespace: str, name: str, *, timeout: float) -> dict[str, Any] | None:
    """The leader-election Lease, or None when there is none yet."""
    try:
        return _call("GET", f"{LEASE_PATH.format(namespace=namespace)}/{name}", timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def write_lease(lease: dict[str, Any], *, timeout: float) -> dict[str, Any] | None:
    """Create the Lease (no resourceVersion) or replace it at the resourceVersion it was read at.

    None when another operator got there first (409): the API server's compare-and-swap is what
    makes only one of two candidates the leader.
    """
    meta = lease["metadata"]
    path = LEASE_PATH.format(namespace=meta["namespace"])
    try:
        if meta.get("resourceVersion"):
            return _call("PUT", f"{path}/{meta['name']}", lease, timeout=timeout,
                         query=[("fieldManager", FIELD_MANAGER)])
        return _call("POST", path, lease, timeout=timeout, query=[("fieldManager", FIELD_MANAGER)])
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise
