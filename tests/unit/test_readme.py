"""The README stays a short, true front door: its spec fields, make targets, commands and links exist."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.support.crd import CRD_PATH, ROOT

README = ROOT / "README.md"
MAX_LINES = 350
# `spec.a.b` anywhere in backticks, and the API table's first column (paths relative to spec).
SPEC_PATH_RE = re.compile(r"`spec\.([A-Za-z][A-Za-z0-9.]*)")
TABLE_PATH_RE = re.compile(r"`([a-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*)`")
MAKE_RE = re.compile(r"\bmake ([a-z][a-z0-9-]*)")
KONTINUAL_RE = re.compile(r"(?:^|`)kontinual ([a-z][a-z-]*)", re.MULTILINE)  # a command, not a release name
LINK_RE = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
REPO_PATH_RE = re.compile(r"`((?:docs|examples|benchmarks|crds|helm|hack)/[A-Za-z0-9_./-]+)`")


def _text() -> str:
    return README.read_text()


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _resolves(schema: dict[str, Any], path: str) -> bool:
    node = schema
    for part in path.split("."):
        if node.get("type") == "array":
            node = node.get("items", {})
        props = node.get("properties")
        if props is None or part not in props:
            return False
        node = props[part]
    return True


def _api_table_paths(text: str) -> list[str]:
    section = text.split("## The API", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) > 30, "the API section's field table is missing or was cut short"
    return [path for row in rows for path in TABLE_PATH_RE.findall(row.split(" | ", 1)[0])]


def test_readme_is_short() -> None:
    lines = len(_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines; keep it at most {MAX_LINES} (details go to docs/)"


def test_every_field_of_the_api_table_is_in_the_crd() -> None:
    schema = _spec_schema()
    paths = _api_table_paths(_text())
    missing = [p for p in paths if not _resolves(schema, p)]
    assert not missing, f"README API table names fields the CRD does not have: {missing}"


def test_every_spec_path_the_readme_names_is_in_the_crd() -> None:
    schema = _spec_schema()
    named = set(SPEC_PATH_RE.findall(_text()))
    assert named, "expected the README to name spec fields as `spec.x.y`"
    missing = sorted(p for p in named if not _resolves(schema, p.rstrip(".")))
    assert not missing, f"README names spec fields the CRD does not have: {missing}"


def test_every_top_level_spec_field_is_in_the_api_table() -> None:
    paths = _api_table_paths(_text())
    tops = {p.split(".", 1)[0] for p in paths}
    missing = sorted(set(_spec_schema()["properties"]) - tops)
    assert not missing, f"README API table does not mention spec fields {missing}"


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.MULTILINE))


def test_every_make_target_the_readme_shows_exists() -> None:
    shown = set(MAKE_RE.findall(_text()))
    assert {"up", "test"} <= shown, "the README must show `make up` and `make test`"
    missing = sorted(shown - _make_targets())
    assert not missing, f"README shows make targets the Makefile lacks: {missing}"


def test_every_kontinual_command_the_readme_shows_exists() -> None:
    from kontinual.cli import _parser

    subparsers = next(a for a in _parser()._actions if a.dest == "command")
    commands = set(subparsers.choices)  # type: ignore[arg-type]
    shown = set(KONTINUAL_RE.findall(_text()))
    assert shown, "expected the README to show kontinual commands"
    missing = sorted(shown - commands)
    assert not missing, f"README shows `kontinual` commands the CLI lacks: {missing} (it has {sorted(commands)})"


@pytest.mark.parametrize("kind", ["links", "paths"])
def test_every_file_the_readme_points_at_exists(kind: str) -> None:
    text = _text()
    if kind == "links":
        targets = {t for t in LINK_RE.findall(text) if "://" not in t}
    else:
        targets = {t.rstrip(".") for t in REPO_PATH_RE.findall(text)}
    assert targets
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README points at files that do not exist: {missing}"


def test_license_file_and_the_readme_agree() -> None:
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert "Apache-2.0" in _text()
