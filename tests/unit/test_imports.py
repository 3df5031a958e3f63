"""What a real import pulls in (style rule 13): the wings without kopf, the controller without torch or deepsparse.

The static layers (every module, lazy imports included) are import-linter's contracts in pyproject.toml,
run by `make check`; this tier checks what only a real import shows, such as a package's own imports.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "kontinual"
CLUSTER_SIDE = ("kopf", "kubernetes")
HEAVY = ("torch", "torchvision", "deepsparse", "sparseml", "sparsezoo", "yolov5", "ultralytics", "onnx",
         "onnxruntime", "openvino", "kserve", "roboflow")  # `roboflow` is the SDK; kontinual.common.roboflow is ours


def modules_of(package: str) -> list[str]:
    """Every module of a subpackage of kontinual, found on disk (a new module is checked without listing it)."""
    path = PACKAGE / package.removeprefix("kontinual.").replace(".", "/")
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def loaded_after_import(*modules: str) -> set[str]:
    """Top-level names in sys.modules, plus every kontinual module, after importing `modules` in a fresh interpreter."""
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


@pytest.mark.parametrize("wing", ["kontinual.serving", "kontinual.trainer"])
def test_wing_package_imports_without_kopf_or_a_cluster_client(wing: str) -> None:
    loaded = loaded_after_import(wing, *modules_of("kontinual.common"))
    assert not set(CLUSTER_SIDE) & loaded, f"{wing} pulls in {sorted(set(CLUSTER_SIDE) & loaded)}"


def test_operator_imports_without_torch_deepsparse_or_the_wings() -> None:
    modules = ["kontinual.cli", *modules_of("kontinual.controller"), *modules_of("kontinual.common")]
    assert "kontinual.controller.handlers" in modules and "kontinual.controller.reconcile" in modules
    loaded = loaded_after_import(*modules)
    assert "kopf" in loaded  # the probe works: the operator does load kopf
    assert not set(HEAVY) & loaded, f"the operator pulls in {sorted(set(HEAVY) & loaded)}"
    wings = sorted(n for n in loaded if n.startswith(("kontinual.serving", "kontinual.trainer")))
    assert not wings, f"the operator imports the wings: {wings}"


def test_render_needs_neither_kopf_nor_heavy_packages() -> None:
    loaded = loaded_after_import("kontinual.controller.render", "kontinual.controller.builders", "kontinual.controller.spec")
    assert not (set(HEAVY) | {"kopf"}) & loaded
