"""Pure Kubernetes API semantics the emulator adds to kmock 0.8: patch types, selectors, name rules."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

import jsonpatch

# The list fields the real API server merges by a key under a strategic-merge patch (from the
# `patchMergeKey` tags of k8s.io/api). Lists not named here are replaced as a whole, as the real
# server does for atomic lists (e.g. args, command, tolerations).
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "ports": ("containerPort", "port"),  # containers[].ports / service spec.ports
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
}
_SET_LISTS = {"finalizers"}  # merged as sets of strings (patchStrategy: merge, no key)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


class PatchError(ValueError):
    """A patch the real API server would refuse; `status` is the HTTP code it would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """A strategic-merge patch for the fields Kontinual's children use (keyed lists, $patch directives)."""
    if isinstance(patch, Mapping):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if patch.get("$patch") == "delete":
            return None
        result = dict(target) if isinstance(target, Mapping) else {}
        for key, value in patch.items():
            if key.startswith("$"):  # $setElementOrder/..., $retainKeys: ordering hints only here
                continue
            if value is None:
                result.pop(key, None)
            else:
                merged = strategic_merge_patch(result.get(key), value, key)
                if merged is None:
                    result.pop(key, None)
                else:
                    result[key] = merged
        return result
    if isinstance(patch, list) and isinstance(target, list):
        if field in _SET_LISTS:
            return list(target) + [item for item in patch if item not in target]
        if field in _MERGE_KEYS and all(isinstance(i, Mapping) for i in patch + target):
            return _merge_keyed_list(target, patch, _MERGE_KEYS[field])
    return copy.deepcopy(patch)


def _merge_keyed_list(target: list[Any], patch: list[Any], keys: tuple[str, ...]) -> list[Any]:
    key = next((k for k in keys if any(k in item for item in patch + target)), keys[0])
    result = [dict(item) for item in target]
    for item in patch:
        position = next((i for i, old in enumerate(result) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            result[position] = strategic_merge_patch(result[position], item)
    return result


def json_patch(target: Mapping[str, Any], operations: list[Any]) -> dict[str, Any]:
    """RFC 6902 JSON patch; a failed `test` op is 422 (kopf's optimistic concurrency relies on it)."""
    try:
        return jsonpatch.apply_patch(dict(copy.deepcopy(target)), operations, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(422, f"the server rejected our request due to an error in our request: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise PatchError(422, f"invalid JSON patch: {exc}") from None


def apply_patch(target: Mapping[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Dispatch on the PATCH Content-Type the way kube-apiserver does."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json-patch+json":
        if not isinstance(patch, list):
            raise PatchError(400, "a JSON patch must be a list of operations")
        return json_patch(target, patch)
    if not isinstance(patch, Mapping):
        raise PatchError(400, f"a {kind} body must be a JSON object")
    if kind == "application/merge-patch+json":
        return merge_patch(target, patch)
    if kind == "application/strategic-merge-patch+json":
        return strategic_merge_patch(target, patch)
    if kind.startswith("application/apply-patch"):
        # kmock 0.8 answers server-side apply with 200 and changes nothing; a silent no-op would
        # hide a product bug, so the emulator refuses it loudly instead.
        raise PatchError(415, "server-side apply is not emulated; use merge-patch, strategic-merge-patch or POST")
    raise PatchError(415, f"unsupported patch content type {content_type!r}")


def parse_label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """Compile `a=b,c!=d,e,!f,g in (x,y),h notin (z)` into a predicate over a labels dict."""
    clauses: list[Callable[[Mapping[str, str]], bool]] = []
    for raw in _split_selector(text):
        clause = raw.strip()
        if not clause:
            continue
        match = re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)", clause)
        if match:
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if op == "in":
                clauses.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                clauses.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in clause:
            key, value = (s.strip() for s in clause.split("!=", 1))
            clauses.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in clause:
            key, value = (s.strip() for s in clause.replace("==", "=").split("=", 1))
            clauses.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif clause.startswith("!"):
            absent = clause[1:].strip()
            clauses.append(lambda labels, k=absent: k not in labels)
        else:
            clauses.append(lambda labels, k=clause: k in labels)
    return lambda labels: all(clause(labels) for clause in clauses)


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside `( ... )` value sets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def parse_field_selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile `metadata.name=x,involvedObject.kind!=Pod` into a predicate over an object."""
    clauses: list[Callable[[Mapping[str, Any]], bool]] = []
    for clause in filter(None, (c.strip() for c in text.split(","))):
        negate = "!=" in clause
        path, value = clause.replace("!=", "=").replace("==", "=").split("=", 1)
        path, value = path.strip(), value.strip()
        clauses.append(lambda obj, p=path, v=value, n=negate: (_dig(obj, p) == v) != n)
    return lambda obj: all(clause(obj) for clause in clauses)


def _dig(obj: Any, path: str) -> str:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    return "" if obj is None else str(obj)


def validation_errors(body: Mapping[str, Any], kind: str) -> list[str]:
    """The metadata and ConfigMap rules the real API server enforces on every write."""
    meta = body.get("metadata") or {}
    name = meta.get("name") or ""
    errors = []
    name_rule = DNS1035_LABEL if kind == "Service" else DNS1123_SUBDOMAIN
    limit = 63 if kind == "Service" else 253
    if not name_rule.match(name) or len(name) > limit:
        errors.append(f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 name")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            errors.append(f"metadata.labels: Invalid value: {value!r}: a valid label must be 63 characters or less")
        if not _LABEL_NAME.match(key.rsplit("/", 1)[-1]) or len(key.rsplit("/", 1)[-1]) > 63:
            errors.append(f"metadata.labels: Invalid value: {key!r}: name part must be a valid label key")
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            errors.append(f"metadata.annotations.{key}: Invalid value: must be a string")
    if kind == "ConfigMap":
        for key, value in (body.get("data") or {}).items():
            if not isinstance(value, str):
                errors.append(f"data.{key}: Invalid value: ConfigMap data values must be strings")
    return errors
