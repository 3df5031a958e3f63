"""The emulator harness: an API server on 127.0.0.1, a kubeconfig for it, a client, and kopf in-process.

Why kopf runs in-process (in a thread with its own event loop) and not as `kontinual operator` in
a subprocess: the tests then see every API request exactly, start in well under a second and
need no port or process cleanup; the operator still talks to the server only over real HTTP
through the kubeconfig (kopf's aiohttp client and `kontinual.controller.k8s`'s kubernetes client, whose sync
calls kopf runs in its executor threads), exactly as in a cluster.
The benchmark (benchmarks/reconcile.py) runs the real `kontinual operator` process instead, so that
its peak RSS is the operator's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import kmock

from tests.emulator.apiserver import ApiServer

T = TypeVar("T")
MERGE = "application/merge-patch+json"
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}


@dataclass(frozen=True)
class Kind:
    """One resource the emulated cluster serves."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [root] + ([f"namespaces/{namespace}"] if namespace and self.namespaced else [])
        parts += [self.plural] + ([name] if name else []) + ([subresource] if subresource else [])
        return "/".join(parts)


KINDS: dict[str, Kind] = {k.plural: k for k in (
    Kind("kontinual.io", "v1alpha1", "continualmodels", "ContinualModel", subresources=("status",),
         shortnames=("cmodel",), categories=("kontinual",)),
    Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "services", "Service", subresources=("status",)),
    Kind("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", subresources=("status",)),
    Kind("", "v1", "pods", "Pod", subresources=("status",)),
    Kind("", "v1", "events", "Event"),
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, subresources=("status",)),
    Kind("apps", "v1", "deployments", "Deployment", subresources=("status", "scale")),
    Kind("batch", "v1", "jobs", "Job", subresources=("status",)),
    Kind("autoscaling", "v2beta2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", subresources=("status",)),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
)}
# The events.k8s.io/v1 flavour shares the plural with core v1 events.
EVENTS_V1 = Kind("events.k8s.io", "v1", "events", "Event")


def register_kinds(server: ApiServer) -> None:
    for kind in (*KINDS.values(), EVENTS_V1):
        server.resources[kind.resource] = kmock.ResourceInfo(
            kind=kind.kind, singular=kind.kind.lower(), namespaced=kind.namespaced, verbs=VERBS,
            subresources=set(kind.subresources), shortnames=set(kind.shortnames),
            categories=set(kind.categories))


def crd_admission() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What the API server does with a ContinualModel per crds/: prune unknown fields, default, validate."""
    from tests.support import crd

    root = crd.schema()

    def admit(obj: dict[str, Any]) -> dict[str, Any]:
        pruned = {k: (v if k == "metadata" else prune(v, root["properties"][k]))
                  for k, v in obj.items() if k in root["properties"]}
        problems = crd.errors(pruned, strict=False)
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return crd.apply_defaults(pruned)
    return admit


def prune(value: Any, node: Mapping[str, Any]) -> Any:
    """Structural pruning: drop fields the schema does not know, unless it preserves unknown fields."""
    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        keep_unknown = node.get("x-kubernetes-preserve-unknown-fields") or extra is True
        out = {}
        for key, item in value.items():
            if key in props:
                out[key] = prune(item, props[key])
            elif isinstance(extra, dict):
                out[key] = prune(item, extra)
            elif keep_unknown:
                out[key] = item
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [prune(item, node["items"]) for item in value]
    return value


def write_kubeconfig(url: str, directory: pathlib.Path) -> pathlib.Path:
    path = directory / "kubeconfig"
    path.write_text(json.dumps({  # JSON is YAML: no yaml dependency needed here
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
    }))
    return path


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


async def wait_for(predicate: Callable[[], Awaitable[T] | T], timeout: float = 10.0,
                   interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate` (sync or async) until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = predicate()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


def condition(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The status condition of that type, or None."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


class Cluster:
    """A running ApiServer plus an HTTP client that acts as the user (kubectl) would."""

    def __init__(self, server: ApiServer, session: aiohttp.ClientSession, url: str, kubeconfig: pathlib.Path):
        self.server, self.session, self.url, self.kubeconfig = server, session, url, kubeconfig

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                    params: Mapping[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.url + path, data=data, params=params,
                                        headers={"Content-Type": content_type}) as rsp:
            payload = await rsp.json(content_type=None)
            if rsp.status >= 400:
                raise ApiError(rsp.status, payload)
            return payload

    async def create(self, body: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        kind = kind_of(body)
        ns = namespace or body.get("metadata", {}).get("namespace")
        return await self._call("POST", kind.path(ns), body)  # type: ignore[no-any-return]

    async def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", KINDS[plural].path(namespace, name))  # type: ignore[no-any-return]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, plural: str, namespace: str | None = None, labels: str = "",
                   kind: Kind | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": labels} if labels else None
        rsp = await self._call("GET", (kind or KINDS[plural]).path(namespace), params=params)
        return rsp["items"]  # type: ignore[no-any-return]

    async def patch(self, plural: str, namespace: str | None, name: str, patch: Any,
                    subresource: str | None = None, content_type: str = MERGE) -> dict[str, Any]:
        path = KINDS[plural].path(namespace, name, subresource)
        return await self._call("PATCH", path, patch, content_type)  # type: ignore[no-any-return]

    async def delete(self, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        return await self._call("DELETE", KINDS[plural].path(namespace, name))  # type: ignore[no-any-return]

    async def events(self, namespace: str, involved_name: str | None = None) -> list[dict[str, Any]]:
        """Core v1 and events.k8s.io/v1 Events, normalised to {type, reason, message, object}."""
        found = []
        for event in await self.list("events", namespace):
            found.append({"type": event.get("type"), "reason": event.get("reason"),
                          "message": event.get("message") or "", "object": event.get("involvedObject") or {}})
        for event in await self.list("events", namespace, kind=EVENTS_V1):
            found.append({"type": event.get("type"), "reason": event.get("reason"),
                          "message": event.get("note") or "", "object": event.get("regarding") or {}})
        return [e for e in found if involved_name is None or e["object"].get("name") == involved_name]

    def requests(self, method: str, plural: str | None = None, name: str | None = None,
                 subresource: str | None = None) -> list[kmock.Request]:
        """Requests the server received (from anyone), e.g. to prove there is no retry loop."""
        return [r for r in self.server
                if r.method.value == method.upper()
                and (plural is None or (r.resource is not None and r.resource.plural == plural))
                and (name is None or r.name == name) and (subresource is None or r.subresource == subresource)]

    async def roll_out(self, namespace: str, name: str, ready: bool = True) -> dict[str, Any]:
        """Play the Deployment controller: report the current template as rolled out (or not ready)."""
        deployment = await self.get("deployments", namespace, name)
        assert deployment is not None, f"deployment {namespace}/{name} does not exist"
        replicas = deployment["spec"].get("replicas", 1)
        ready_replicas = replicas if ready else 0
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready_replicas, "availableReplicas": ready_replicas,
            "unavailableReplicas": replicas - ready_replicas,
            "conditions": [
                {"type": "Available", "status": "True" if ready else "False",
                 "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        }
        return await self.patch("deployments", namespace, name, {"status": status}, subresource="status")


def kind_of(body: Mapping[str, Any]) -> Kind:
    group, _, version = body["apiVersion"].rpartition("/")
    for kind in (*KINDS.values(), EVENTS_V1):
        if (kind.group, kind.version, kind.kind) == (group, version, body["kind"]):
            return kind
    raise KeyError(f"the emulated cluster does not serve {body['apiVersion']} {body['kind']}")


@contextlib.asynccontextmanager
async def running_cluster() -> AsyncIterator[Cluster]:
    """Start the API server on a free 127.0.0.1 port, with a kubeconfig in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="kontinual-emulator-") as tmp:
        async with ApiServer() as server, kmock.Server(server, host="127.0.0.1") as http:
            register_kinds(server)
            server.admission[KINDS["continualmodels"].resource] = crd_admission()
            url = str(http.url).rstrip("/")
            kubeconfig = write_kubeconfig(url, pathlib.Path(tmp))
            async with aiohttp.ClientSession() as session:
                yield Cluster(server, session, url, kubeconfig)


@contextlib.asynccontextmanager
async def running_operator(registry: Any, kubeconfig: pathlib.Path, startup_timeout: float = 20.0,
                           **kwargs: Any) -> AsyncIterator[threading.Thread]:
    """Run kopf with `registry` cluster-wide and standalone, logged in via `kubeconfig`.

    kopf gets its own event loop in a thread (as kopf.testing.KopfRunner does): at shutdown kopf
    treats every task of its loop as its own and waits 5 s for them before cancelling them, which
    in a shared loop would include the API server's request handlers.
    """
    import kopf
    import kubernetes.config
    import kubernetes.config.kube_config

    # The kubernetes client reads $KUBECONFIG once, when `kubernetes.config` is first imported
    # (KUBE_CONFIG_DEFAULT_LOCATION); a process started with the variable set needs nothing more,
    # an in-process operator also needs the module constants pointed at this test's kubeconfig.
    old = os.environ.get("KUBECONFIG"), kubernetes.config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = str(kubeconfig)
    kubernetes.config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True,
                                      stop_flag=stop, ready_flag=ready, **kwargs))
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=main, name="kopf-operator", daemon=True)
    thread.start()
    try:
        await wait_for(lambda: ready.is_set() or not thread.is_alive(), startup_timeout,
                       what="the operator to start")
        if not thread.is_alive():
            raise AssertionError(f"the operator exited during startup: {failure!r}")
        yield thread
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        if old[0] is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old[0]
        kubernetes.config.KUBE_CONFIG_DEFAULT_LOCATION = old[1]
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old[1]
    if failure and not isinstance(failure[0], asyncio.CancelledError):
        raise AssertionError("the operator failed") from failure[0]
