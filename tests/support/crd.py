"""The ContinualModel CRD as tests see it: load it, validate CRs and default them like the API server."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "continualmodels.kontinual.io.yaml"
EXAMPLES = ROOT / "examples"
VERSION = "v1alpha1"

Schema = dict[str, Any]
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CRValidationError(ValueError):
    """A custom resource the API server would reject; `path` is the offending field (spec.x.y)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message


@functools.cache
def _parsed_crd() -> dict[str, Any]:
    return yaml.load(CRD_PATH.read_text(encoding="utf-8"), Loader=_Loader)


def load_crd() -> dict[str, Any]:
    """The CRD manifest (a fresh copy each call, so callers may mutate it)."""
    return copy.deepcopy(_parsed_crd())


def schema(version: str = VERSION) -> Schema:
    """The raw openAPIV3Schema of one served version, with the Kubernetes x- extensions."""
    for entry in load_crd()["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"the CRD serves no version {version!r}")


def load_examples() -> dict[str, dict[str, Any]]:
    """Every ContinualModel in examples/*.yaml, keyed 'file.yaml:name'."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "ContinualModel":
                found[f"{path.name}:{doc['metadata']['name']}"] = doc
    return found


# --- defaulting, as the apiextensions-apiserver does it -------------------------------------

def apply_defaults(cr: dict[str, Any], version: str = VERSION) -> dict[str, Any]:
    """Return a defaulted deep copy of `cr`, following the API server's structural defaulting.

    Like apiextensions-apiserver (schema/defaulting): a missing property with a default gets a
    copy of it; defaulting then recurses into every present property, the freshly defaulted
    ones included, so nested defaults apply only when their parent exists or was itself
    defaulted (hence the `default: {}` on spec.serving, spec.storage, ...). A null value in a
    non-nullable field is replaced by its default, or dropped when there is none.
    """
    out = copy.deepcopy(cr)
    default_in_place(out, schema(version))
    return out


def default_in_place(value: Any, node: Schema) -> None:
    """Apply the defaults of schema `node` to `value` (a dict or list), recursively, in place.

    Mirrors Default() and PruneNonNullableNullsWithoutDefaults() of apiextensions-apiserver 1.20
    (pkg/apiserver/schema/defaulting).
    """
    if isinstance(value, dict):
        props: dict[str, Schema] = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, prop in props.items():
            if key not in value or _non_nullable_null(value[key], prop):
                value.pop(key, None)
                if "default" in prop:
                    value[key] = copy.deepcopy(prop["default"])
        for key in list(value):
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            if _non_nullable_null(value[key], sub):
                if "default" not in sub:
                    del value[key]
                    continue
                value[key] = copy.deepcopy(sub["default"])
            default_in_place(value[key], sub)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        items = node["items"]
        for index, item in enumerate(value):
            if _non_nullable_null(item, items) and "default" in items:
                value[index] = copy.deepcopy(items["default"])
            default_in_place(value[index], items)


def _non_nullable_null(value: Any, node: Schema) -> bool:
    return value is None and not node.get("nullable", False)


# --- validation ---------------------------------------------------------------------------------

_K8S_ONLY = ("nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
             "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-map-type",
             "x-kubernetes-list-map-keys")


def to_json_schema(node: Schema, strict: bool = True) -> Schema:
    """Translate a Kubernetes structural schema into plain JSON Schema (draft 7).

    nullable -> the type also admits null; x-kubernetes-int-or-string keeps its
    anyOf[integer, string]; x-kubernetes-preserve-unknown-fields allows unknown keys. With
    `strict`, unknown keys elsewhere are errors (the API server would silently prune them,
    which hides typos in examples).
    """
    out: Schema = {k: v for k, v in node.items() if k not in _K8S_ONLY and k != "default"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v, strict) for k, v in node["properties"].items()}
        if strict and not node.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in node:
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"], strict)
    if isinstance(node.get("items"), dict):
        out["items"] = to_json_schema(node["items"], strict)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [to_json_schema(sub, strict) for sub in node[key]]
    if node.get("nullable") and "anyOf" in node and "type" not in node:
        out["anyOf"] = out["anyOf"] + [{"type": "null"}]
    return out


@functools.cache
def _validator(version: str, strict: bool) -> jsonschema.Draft7Validator:
    translated = to_json_schema(schema(version), strict)
    # metadata is a full ObjectMeta for the API server; the CRD only restricts its name.
    translated.get("properties", {}).get("metadata", {}).pop("additionalProperties", None)
    return jsonschema.Draft7Validator(translated)


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: jsonschema.ValidationError) -> CRValidationError:
    path = _path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        field = f"{path}.{missing[0]}" if path else missing[0]
        return CRValidationError(field, "required field is missing")
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        field = f"{path}.{unknown[0]}" if path else unknown[0]
        return CRValidationError(field, f"unknown field (known: {', '.join(sorted(known))})")
    if error.validator == "pattern":
        return CRValidationError(path, f"{error.instance!r} does not match {error.validator_value}")
    return CRValidationError(path, error.message)


def errors(cr: dict[str, Any], *, strict: bool = True, version: str = VERSION) -> list[CRValidationError]:
    """Every reason the API server would reject `cr` (validated after defaulting, as it does)."""
    found = _validator(version, strict).iter_errors(apply_defaults(cr, version))
    ordered = sorted(found, key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    return [_describe(e) for e in ordered]


def validate(cr: dict[str, Any], *, strict: bool = True, version: str = VERSION) -> dict[str, Any]:
    """Return the defaulted CR, or raise CRValidationError naming the first bad field."""
    problems = errors(cr, strict=strict, version=version)
    if problems:
        raise problems[0]
    return apply_defaults(cr, version)
