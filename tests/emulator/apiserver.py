"""A Kubernetes API server for tests: kmock 0.8's KubernetesEmulator with the API semantics kopf needs.

kmock 0.8's stateful emulator sets no resourceVersion, replays
every object as ADDED on each watch (ignoring ?resourceVersion=), can lose events between a list
and the next watch, applies every PATCH as a naive dict merge (no JSON patch `test`, no RFC 7386
nulls, no strategic merge), answers server-side apply with a silent no-op, has no label or field
selectors, no status subresource, no generation and no garbage collection. This subclass keeps
kmock's HTTP server, discovery, request log (`server.requests`) and object history
(`server.objects[...]`), and replaces the storage semantics:

- one global, monotonic resourceVersion; `metadata.generation` bumps on non-metadata/status changes;
  uid and creationTimestamp; no-op writes keep the resourceVersion and emit no event (as the real
  server does, so level-based operators do not loop on their own no-op patches);
- watches resume from `?resourceVersion=` out of an event log (410 Gone once it is trimmed),
  and subscribe under the same lock that serves the list, so no event is lost in between;
- `?labelSelector=` / `?fieldSelector=` on lists and watches, `?sendInitialEvents=true`, `timeoutSeconds`;
- PATCH by Content-Type (JSON patch incl. `test` -> 422, merge patch, strategic merge patch);
  server-side apply is refused with 415 rather than silently ignored; PUT replaces;
  `metadata.resourceVersion` preconditions -> 409;
- the status subresource: the main endpoint ignores status, `/status` changes only status;
- finalizers and deletionTimestamp (no new finalizers on a deleting object), then DELETED;
- background garbage collection through ownerReferences (uid), like kube-controller-manager's;
- `Accept: ...;as=PartialObjectMetadata` on a GET returns only the object's metadata;
- name, label and ConfigMap-data validation (422), AlreadyExists (409), NotFound (404) Status bodies;
- optional per-resource admission: the harness plugs in the ContinualModel CRD's structural schema
  (pruning, defaulting, validation), since kmock registers custom resources without one.

There are still no controllers: nothing creates ReplicaSets or Pods or fills a Deployment's
status; tests play the Deployment controller explicitly (`Cluster.roll_out`).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import random
import string
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
import kmock
from kmock._internal import k8s_dicts

from tests.emulator import semantics

Key = tuple[kmock.resource, "str | None", str]
Event = dict[str, Any]
_VOLATILE_META = ("resourceVersion", "managedFields")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or {"causes": []})


@attrs.define(eq=False)
class _Subscriber:
    """One open watch: a queue and the filter its query string asked for."""

    namespace: str | None
    matches: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[Event] = attrs.field(factory=asyncio.Queue)

    def offer(self, event: Event) -> None:
        obj = event["object"]
        in_namespace = self.namespace is None or obj.get("metadata", {}).get("namespace") == self.namespace
        if in_namespace and self.matches(obj):
            self.queue.put_nowait(event)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersions, resumable watches, selectors, patch types and GC."""

    event_log_size: int = 20000
    # Called synchronously with (resource, event) for every change, e.g. to timestamp it exactly.
    listeners: list[Callable[[kmock.resource, Event], None]] = attrs.field(factory=list)
    # Per resource: the CRD's structural schema at work (prune, default, validate). It gets the whole
    # object about to be stored and returns what to store, or raises ValueError (-> 422 Invalid).
    admission: dict[kmock.resource, Callable[[dict[str, Any]], dict[str, Any]]] = attrs.field(factory=dict)
    _revision: int = attrs.field(default=0, init=False)
    _log: collections.deque[tuple[int, kmock.resource, Event]] = attrs.field(init=False)
    _log_floor: int = attrs.field(default=0, init=False)  # newest resourceVersion dropped from the log
    _watchers: dict[kmock.resource, set[_Subscriber]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False)
    _uids: set[str] = attrs.field(factory=set, init=False)  # of live objects, for the garbage collector

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # registers the fallbacks below via the overridden methods
        self._log = collections.deque()
        self.fallback[kmock.method.PUT] << self._serve_replace

    async def _handle(self, request: kmock.Request) -> Any:
        # kmock's own _handle mutates its naive store before dispatching; ours does it in the
        # handlers. Requests for the served resources go straight to them: kmock 0.8 matches
        # every request against its DSL filters by re-scanning all past requests (quadratic: ~0.1 s
        # per request after a few hundred), too slow for a benchmark of 200 objects. Discovery and
        # any other path still go through kmock's reactions.
        if request.resource is not None and request.resource in self.resources:
            handler = self._routes.get(request.action) if request.action else (
                self._serve_replace if request.method == kmock.method.PUT and request.name else None)
            if handler is not None:
                return await kmock.Response(payload=handler)(request)
        return await kmock.RawHandler._handle(self, request)

    @property
    def _routes(self) -> dict[kmock.action, Callable[[kmock.Request], Any]]:
        return {kmock.action.LIST: self._serve_list, kmock.action.WATCH: self._serve_watch,
                kmock.action.FETCH: self._serve_fetch, kmock.action.CREATE: self._serve_create,
                kmock.action.UPDATE: self._serve_update, kmock.action.DELETE: self._serve_delete}

    # ---- helpers ----------------------------------------------------------------------------

    def _info(self, request: kmock.Request) -> kmock.ResourceInfo:
        if request.resource is None or request.resource not in self.resources:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        return self.resources[request.resource]

    def _live(self, key: Key) -> dict[str, Any] | None:
        obj = self.objects._objects.get(key)
        return None if obj is None or obj.deleted else obj.raw

    def _not_found(self, request: kmock.Request, name: str | None) -> kmock.KubernetesError:
        assert request.resource is not None
        group = f".{request.resource.group}" if request.resource.group else ""
        return _error(404, "NotFound", f'{request.resource.plural}{group} "{name}" not found',
                      name=name, group=request.resource.group, kind=request.resource.plural)

    def _bump(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _emit(self, resource: kmock.resource, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": obj}
        self._log.append((self._revision, resource, event))
        while len(self._log) > self.event_log_size:
            self._log_floor = self._log.popleft()[0]
        for subscriber in list(self._watchers[resource]):
            subscriber.offer(event)
        for listener in self.listeners:
            listener(resource, event)

    def _store(self, key: Key, body: dict[str, Any]) -> None:
        if key in self.objects._objects:
            self.objects._objects[key].create(body)  # appends a version to kmock's history
        else:
            self.objects._objects[key] = k8s_dicts.Object(body)

    def _matcher(self, request: kmock.Request) -> Callable[[Mapping[str, Any]], bool]:
        labels = semantics.parse_label_selector(request.params.get("labelSelector", ""))
        fields = semantics.parse_field_selector(request.params.get("fieldSelector", ""))
        name = request.name
        return lambda obj: (
            (name is None or obj.get("metadata", {}).get("name") == name)
            and labels(obj.get("metadata", {}).get("labels") or {}) and fields(obj))

    def _select(self, request: kmock.Request) -> list[dict[str, Any]]:
        matches = self._matcher(request)
        return [
            obj.raw for (resource, namespace, _), obj in self.objects._objects.items()
            if resource == request.resource and not obj.deleted
            and (request.namespace is None or namespace == request.namespace) and matches(obj.raw)
        ]

    # ---- reads ------------------------------------------------------------------------------

    async def _serve_list(self, request: kmock.Request) -> Any:
        info = self._info(request)
        assert request.resource is not None
        async with self._lock:
            items = self._select(request)
            revision = str(self._revision)
        group_version = "/".join(filter(None, (request.resource.group, request.resource.version)))
        return {"apiVersion": group_version, "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": revision}, "items": items}

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        self._info(request)
        obj = self._live((request.resource, request.namespace, request.name))  # type: ignore[arg-type]
        if obj is None:
            raise self._not_found(request, request.name)
        if "as=PartialObjectMetadata" in request.headers.get("Accept", ""):
            # The metadata-only representation, as the real server sends it: no spec, data or status.
            return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]}
        return obj

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        self._info(request)
        assert request.resource is not None
        yield b""  # send the headers now: the client waits for them before reading events
        since = request.params.get("resourceVersion") or "0"
        initial = request.params.get("sendInitialEvents") == "true"
        subscriber = _Subscriber(namespace=request.namespace, matches=self._matcher(request))
        async with self._lock:  # snapshot + subscribe atomically: nothing falls in between
            backlog: list[Event]
            if since == "0" or initial:
                backlog = [{"type": "ADDED", "object": obj} for obj in self._select(request)]
                if initial:
                    backlog.append({"type": "BOOKMARK", "object": {"metadata": {
                        "resourceVersion": str(self._revision),
                        "annotations": {"k8s.io/initial-events-end": "true"}}}})
            elif int(since) < self._log_floor:
                backlog = [{"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {since} ({self._log_floor})"}}]
            else:
                probe = _Subscriber(namespace=request.namespace, matches=subscriber.matches)
                for revision, resource, event in self._log:
                    if resource == request.resource and revision > int(since):
                        probe.offer(event)
                backlog = [probe.queue.get_nowait() for _ in range(probe.queue.qsize())]
            if not backlog or backlog[-1]["type"] != "ERROR":
                self._watchers[request.resource].add(subscriber)
        try:
            for event in backlog:
                yield event
            if backlog and backlog[-1]["type"] == "ERROR":
                return
            timeout = float(request.params.get("timeoutSeconds") or 0) or None
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    yield await asyncio.wait_for(subscriber.queue.get(), remaining)
                except TimeoutError:
                    return
        finally:
            self._watchers[request.resource].discard(subscriber)

    # ---- writes -----------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> Any:
        info = self._info(request)
        assert request.resource is not None
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        body = copy.deepcopy(request.data)
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") and request.namespace and meta["namespace"] != request.namespace:
            raise _error(400, "BadRequest", "the namespace of the provided object does not match "
                                            "the namespace sent on the request")
        if info.namespaced and not request.namespace:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        async with self._lock:
            if not meta.get("name") and meta.get("generateName"):
                suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                meta["name"] = meta["generateName"] + suffix
            self._validate(request, info, body)
            key = (request.resource, request.namespace, meta["name"])
            if self._live(key) is not None:
                raise _error(409, "AlreadyExists", f'{request.resource.plural} "{meta["name"]}" already exists',
                             name=meta["name"], group=request.resource.group, kind=request.resource.plural)
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
                meta.pop(field, None)
            if request.namespace:
                meta["namespace"] = request.namespace
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1, resourceVersion=self._bump())
            body["apiVersion"] = "/".join(filter(None, (request.resource.group, request.resource.version)))
            body["kind"] = info.kind
            if "status" in info.subresources:
                body.pop("status", None)
            body = self._admit(request, info, body)
            self._store(key, body)
            self._uids.add(meta["uid"])
            self._emit(request.resource, "ADDED", body)
            self._collect_if_orphaned(key, body)
        return kmock.Response(status=201, payload=body)

    async def _serve_update(self, request: kmock.Request) -> Any:  # PATCH
        info = self._info(request)
        content_type = request.headers.get("Content-Type", "application/json")
        async with self._lock:
            current = self._current(request, info)
            try:
                wanted = semantics.apply_patch(current, request.data, content_type)
            except semantics.PatchError as exc:
                reasons = {400: "BadRequest", 415: "UnsupportedMediaType", 422: "Invalid"}
                raise _error(exc.status, reasons.get(exc.status, "Invalid"), str(exc)) from None
            return self._commit(request, info, current, wanted)

    async def _serve_replace(self, request: kmock.Request) -> Any:  # PUT
        info = self._info(request)
        if not isinstance(request.data, dict) or request.name is None:
            raise _error(400, "BadRequest", "PUT needs an object name in the URL and a JSON object body")
        if (request.data.get("metadata") or {}).get("name") not in (None, request.name):
            raise _error(400, "BadRequest", "the name of the object does not match the name on the URL")
        async with self._lock:
            current = self._current(request, info)
            return self._commit(request, info, current, copy.deepcopy(request.data))

    def _current(self, request: kmock.Request, info: kmock.ResourceInfo) -> dict[str, Any]:
        if request.subresource not in (None, "status") or (
                request.subresource == "status" and "status" not in info.subresources):
            raise _error(404, "NotFound", "the server could not find the requested resource")
        current = self._live((request.resource, request.namespace, request.name))  # type: ignore[arg-type]
        if current is None:
            raise self._not_found(request, request.name)
        return current

    def _commit(self, request: kmock.Request, info: kmock.ResourceInfo,
                current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        """Apply a PUT/PATCH result with the server-owned fields, preconditions and side effects."""
        assert request.resource is not None
        old_meta = current["metadata"]
        meta = wanted.setdefault("metadata", {})
        if meta.get("resourceVersion") not in (None, "", old_meta["resourceVersion"]):
            raise _error(409, "Conflict", f'Operation cannot be fulfilled on {request.resource.plural} '
                                          f'"{request.name}": the object has been modified; please apply '
                                          f'your changes to the latest version and try again')
        if "status" in info.subresources:
            if request.subresource == "status":
                status = wanted.get("status")
                wanted = copy.deepcopy(current)
                wanted.pop("status", None)
                if status is not None:
                    wanted["status"] = status
            else:
                wanted.pop("status", None)
                if "status" in current:
                    wanted["status"] = current["status"]
        meta = wanted.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion",
                      "deletionTimestamp", "deletionGracePeriodSeconds"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        wanted["apiVersion"], wanted["kind"] = current["apiVersion"], current["kind"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise _error(422, "Invalid", f"metadata.finalizers: Forbidden: no new finalizers can be added "
                                             f"if the object is being deleted, found new finalizers {sorted(added)}")
        self._validate(request, info, wanted)
        wanted = self._admit(request, info, wanted)
        meta = wanted["metadata"]
        if wanted == current:
            return current  # a no-op write: same resourceVersion, no event
        if any(wanted.get(k) != current.get(k) for k in set(wanted) | set(current)
               if k not in ("metadata", "status", "apiVersion", "kind")):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = self._bump()
        key = (request.resource, request.namespace, request.name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key, wanted)  # the last finalizer is gone: the object goes
        else:
            self._store(key, wanted)  # type: ignore[arg-type]
            self._emit(request.resource, "MODIFIED", wanted)
            self._collect_if_orphaned(key, wanted)  # type: ignore[arg-type]
        return wanted

    async def _serve_delete(self, request: kmock.Request) -> Any:
        self._info(request)
        async with self._lock:
            key = (request.resource, request.namespace, request.name)
            current = self._live(key)  # type: ignore[arg-type]
            if current is None:
                raise self._not_found(request, request.name)
            orphan = (request.data or {}).get("propagationPolicy") == "Orphan" if isinstance(request.data, dict) else False
            return self._delete(key, current, collect=not orphan)  # type: ignore[arg-type]

    def _delete(self, key: Key, current: dict[str, Any], collect: bool = True) -> dict[str, Any]:
        if current["metadata"].get("deletionTimestamp"):
            return current
        if current["metadata"].get("finalizers"):
            marked = copy.deepcopy(current)
            marked["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
                                      resourceVersion=self._bump())
            self._store(key, marked)
            self._emit(key[0], "MODIFIED", marked)
            return marked
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._bump()
        self._remove(key, gone, collect=collect)
        return gone

    def _remove(self, key: Key, last: dict[str, Any], collect: bool = True) -> None:
        self._store(key, last)
        self.objects._objects[key].delete()
        self._uids.discard(last["metadata"]["uid"])
        self._emit(key[0], "DELETED", last)
        if collect:
            self._collect_garbage(last["metadata"]["uid"])

    def _collect_garbage(self, owner_uid: str) -> None:
        """Background cascading deletion: dependents whose every owner is gone are deleted too."""
        for key, obj in list(self.objects._objects.items()):
            if not obj.deleted:
                refs = obj.raw["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == owner_uid for ref in refs):
                    self._collect_if_orphaned(key, obj.raw)

    def _collect_if_orphaned(self, key: Key, obj: dict[str, Any]) -> None:
        """kube-controller-manager deletes an object whose owners (by uid) all no longer exist,
        also when it is created or updated after its owner went (e.g. by a late reconcile)."""
        refs = obj["metadata"].get("ownerReferences") or []
        if refs and not any(ref.get("uid") in self._uids for ref in refs):
            self._delete(key, obj)

    def _admit(self, request: kmock.Request, info: kmock.ResourceInfo, body: dict[str, Any]) -> dict[str, Any]:
        admit = self.admission.get(request.resource)  # type: ignore[arg-type]
        if admit is None:
            return body
        try:
            return admit(body)
        except ValueError as exc:
            name = (body.get("metadata") or {}).get("name")
            assert request.resource is not None
            raise _error(422, "Invalid", f'{info.kind}.{request.resource.group} "{name}" is invalid: {exc}',
                         name=name, kind=info.kind) from None

    def _validate(self, request: kmock.Request, info: kmock.ResourceInfo, body: dict[str, Any]) -> None:
        errors = semantics.validation_errors(body, info.kind or "")
        if errors:
            name = (body.get("metadata") or {}).get("name")
            raise _error(422, "Invalid", f'{info.kind} "{name}" is invalid: ' + "; ".join(errors),
                         name=name, kind=info.kind, causes=[{"message": e} for e in errors])

