"""Typed, path-aware reading of a ContinualModel's spec: every error names the field it is about."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Secrets and ConfigMaps are named by DNS subdomains: labels joined by dots (`team.roboflow-key`).
SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SpecError(ValueError):
    """An invalid ContinualModel spec; the message names the field and what is expected."""


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


class Reader:
    """Typed access to one mapping of the spec, remembering its field path for messages."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(f"{path} must be an object, got {type(data).__name__}")
        self.data, self.path = data, path

    def sub(self, key: str) -> "Reader":
        return Reader(self.data.get(key), f"{self.path}.{key}")

    def has(self, key: str) -> bool:
        return self.data.get(key) not in (None, "", {})

    def present(self, key: str) -> bool:
        """Set at all, even as `{}` (e.g. `training: {}` turns training on with its defaults)."""
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.data.get(key)
        if value in (None, ""):
            if required:
                raise SpecError(f"{self.path}.{key} is required")
            return default if default is not None else ""
        if not isinstance(value, str):
            raise SpecError(f"{self.path}.{key} must be a string, got {value!r}")
        return value

    def integer(self, key: str, default: int | None, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{self.path}.{key} must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            raise SpecError(f"{self.path}.{key} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise SpecError(f"{self.path}.{key} must be <= {maximum}, got {value}")
        return value

    def req_int(self, key: str, default: int, **bounds: int) -> int:
        value = self.integer(key, default, **bounds)
        return default if value is None else value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(f"{self.path}.{key} must be true or false, got {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{self.path}.{key} must be a number, got {value!r}")
        return float(value)

    def enum(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise SpecError(f"{self.path}.{key} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SpecError(f"{self.path}.{key} must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def mapping(self, key: str) -> dict[str, Any]:
        return dict(self.sub(key).data)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.mapping(key)
        bad = {k: v for k, v in value.items() if not isinstance(v, str)}
        if bad:
            raise SpecError(f"{self.path}.{key} values must be strings (quote numbers and booleans), got {bad!r}")
        return value

    def objects(self, key: str) -> tuple[Mapping[str, Any], ...]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise SpecError(f"{self.path}.{key} must be a list of objects")
        return tuple(dict(v) for v in value)

    def name(self, key: str, *, required: bool = False) -> str:
        value = self.text(key, required=required)
        if value and (len(value) > 253 or not NAME_RE.match(value)):
            raise SpecError(f"{self.path}.{key} must be a Kubernetes name (lowercase letters, digits, '-'), got {value!r}")
        return value

    def secret_ref(self, key: str, default_key: str) -> SecretKeyRef:
        """A Secret's or ConfigMap's name (a DNS subdomain: dots allowed) and one of its keys."""
        ref = self.sub(key)
        name = ref.text("name", required=True)
        if len(name) > 253 or not SUBDOMAIN_RE.match(name):
            raise SpecError(f"{ref.path}.name must be a Kubernetes object name (lowercase letters, digits, '-' "
                            f"and '.'), got {name!r}")
        return SecretKeyRef(name=name, key=ref.text("key", default_key))


# A NetworkPolicy peer that admits every pod of the policy's own namespace (and nothing else).
SAME_NAMESPACE_PEER: Mapping[str, Any] = {"podSelector": {}}
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _selector(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) - {"matchLabels", "matchExpressions"}:
        raise SpecError(f"{path} must be a label selector {{matchLabels, matchExpressions}} ({{}} selects all), "
                        f"got {value!r}")
    labels = value.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise SpecError(f"{path}.matchLabels must map label keys to string values, got {labels!r}")
    expressions = value.get("matchExpressions") or []
    if not isinstance(expressions, list) or not all(
            isinstance(e, Mapping) and isinstance(e.get("key"), str) and e.get("operator") in SELECTOR_OPERATORS
            for e in expressions):
        raise SpecError(f"{path}.matchExpressions entries must be {{key, operator ({', '.join(SELECTOR_OPERATORS)}), "
                        f"values}}, got {expressions!r}")
    out: dict[str, Any] = {}  # {} stays {}: every pod (or namespace)
    if labels:
        out["matchLabels"] = dict(labels)
    if expressions:
        out["matchExpressions"] = [dict(e) for e in expressions]
    return out


def _cidr(value: Any, path: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise SpecError(f"{path} must be a CIDR such as 10.0.0.0/8 or fd00::/8, got {value!r}") from None
    return str(value)


def peers(r: Reader, key: str) -> tuple[Mapping[str, Any], ...]:
    """NetworkPolicy ingress sources: absent = this namespace's pods, [] = nobody, else each peer checked."""
    value = r.data.get(key)
    if value is None:
        return (SAME_NAMESPACE_PEER,)
    if not isinstance(value, list):
        raise SpecError(f"{r.path}.{key} must be a list of sources (podSelector, namespaceSelector, ipBlock)")
    out = []
    for index, peer in enumerate(value):
        where = f"{r.path}.{key}[{index}]"
        if not isinstance(peer, Mapping) or not peer or set(peer) - {"podSelector", "namespaceSelector", "ipBlock"}:
            raise SpecError(f"{where} must set podSelector and/or namespaceSelector, or ipBlock, got {peer!r}")
        if "ipBlock" in peer and len(peer) > 1:
            raise SpecError(f"{where}: ipBlock cannot be combined with podSelector or namespaceSelector")
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            if not isinstance(block, Mapping) or "cidr" not in block or set(block) - {"cidr", "except"}:
                raise SpecError(f"{where}.ipBlock must be {{cidr, except}}, got {block!r}")
            excepted = block.get("except") or []
            if not isinstance(excepted, list):
                raise SpecError(f"{where}.ipBlock.except must be a list of CIDRs, got {excepted!r}")
            ip_block: dict[str, Any] = {"cidr": _cidr(block["cidr"], f"{where}.ipBlock.cidr")}
            if excepted:
                ip_block["except"] = [_cidr(c, f"{where}.ipBlock.except[{i}]") for i, c in enumerate(excepted)]
            out.append({"ipBlock": ip_block})
            continue
        out.append({k: _selector(peer[k], f"{where}.{k}") for k in ("namespaceSelector", "podSelector") if k in peer})
    return tuple(out)
