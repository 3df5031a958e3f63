"""Three wings (style rule 13): serving and training import without kopf; the operator without torch or deepsparse."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "kontinual"
CLUSTER_SIDE = ("kopf", "kubernetes")
HEAVY = ("torch", "torchvision", "deepsparse", "sparseml", "sparsezoo", "yolov5", "ultralytics", "onnx",
         "onnxruntime", "roboflow")  # `roboflow` is the SDK; kontinual.roboflow_api is ours and light
OPERATOR_MODULES = ["kontinual.handlers", "kontinual.reconcile", "kontinual.k8s", "kontinual.render", "kontinual.cli",
                    "kontinual.builders", "kontinual.spec", "kontinual.status", "kontinual.jobs", "kontinual.loop",
                    "kontinual.training_loop"]
# Operator-core modules a wing must never reach (directly or through a shared module).
OPERATOR_CORE = {"kontinual.handlers", "kontinual.reconcile", "kontinual.k8s", "kontinual.training_loop",
                 "kontinual.logs", "kontinual.render", "kontinual.cli"}


def loaded_after_import(*modules: str) -> set[str]:
    """Top-level names in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} | {n for n in sys.modules "
        "if n.startswith('kontinual.')})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env={"NM_DISABLE_ANALYTICS": "1", "PATH": "/usr/bin:/bin",
                                 "PYTHONPATH": str(ROOT / "operator"),
                                 "KTEST_NET_GUARD": os.environ.get("KTEST_NET_GUARD", "")})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def existing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is not None]


# --- runtime: what a real import pulls in ------------------------------------------------------


@pytest.mark.parametrize("wing", ["kontinual.serving", "kontinual.training"])
def test_wing_package_imports_without_kopf_or_a_cluster_client(wing: str) -> None:
    if importlib.util.find_spec(wing) is None:
        pytest.skip(f"{wing} does not exist yet")
    loaded = loaded_after_import(wing, "kontinual.contract", "kontinual.roboflow_api")
    assert not set(CLUSTER_SIDE) & loaded, f"{wing} pulls in {sorted(set(CLUSTER_SIDE) & loaded)}"


def test_operator_imports_without_torch_deepsparse_or_the_wings() -> None:
    modules = existing(*OPERATOR_MODULES)
    assert "kontinual.handlers" in modules and "kontinual.reconcile" in modules
    loaded = loaded_after_import(*modules)
    assert "kopf" in loaded  # the probe works: the operator does load kopf
    assert not set(HEAVY) & loaded, f"the operator pulls in {sorted(set(HEAVY) & loaded)}"
    wings = sorted(n for n in loaded if n.startswith(("kontinual.serving", "kontinual.training.")))
    assert not wings, f"the operator imports the wings' insides: {wings}"


def test_render_needs_neither_kopf_nor_heavy_packages() -> None:
    loaded = loaded_after_import("kontinual.render", "kontinual.builders", "kontinual.spec")
    assert not (set(HEAVY) | {"kopf"}) & loaded


# --- static: every module of each wing, lazy imports included -----------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any level (function-level imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def closure(start: str) -> set[str]:
    """All modules reachable from `start` through kontinual modules."""
    seen, todo = set(), [start]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [m for m in GRAPH.get(current, ()) if m in GRAPH]
    reached = set(seen)
    for module in seen:
        reached |= GRAPH.get(module, set())
    return reached


WING_MODULES = sorted(m for m in GRAPH if m.startswith(("kontinual.serving", "kontinual.training")) and
                      m != "kontinual.training_loop")


def test_the_static_scan_sees_the_wings() -> None:
    assert "kontinual.training" in WING_MODULES
    assert "kopf" in closure("kontinual.handlers")  # the scan finds what is there


@pytest.mark.parametrize("module", WING_MODULES)
def test_wing_module_never_reaches_kopf_or_the_operator_core(module: str) -> None:
    reached = closure(module)
    roots = {m.split(".")[0] for m in reached}
    assert not set(CLUSTER_SIDE) & roots, f"{module} reaches {sorted(set(CLUSTER_SIDE) & roots)}"
    assert not OPERATOR_CORE & reached, f"{module} reaches {sorted(OPERATOR_CORE & reached)}"
    other = "kontinual.training" if module.startswith("kontinual.serving") else "kontinual.serving"
    crossing = sorted(m for m in reached if m == other or m.startswith(other + "."))
    assert not crossing, f"{module} imports the other wing's insides: {crossing}"
