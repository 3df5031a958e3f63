"""YAML out as people read it: no anchors/aliases, multi-line strings as literal blocks."""

from __future__ import annotations

from typing import Any, Iterable

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return str(yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False))


def dump_all(objs: Iterable[Any]) -> str:
    return str(yaml.dump_all(list(objs), Dumper=_Dumper, sort_keys=False, default_flow_style=False))
