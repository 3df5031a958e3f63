"""Every distribution in the kserve runtime's venv (what images/server-openvino ships) has an OSI licence fit for
production use; the DeepSparse venv does not (the reason the runtime exists)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"


def _check(python: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), str(ROOT / "hack" / "licenses.py")], capture_output=True, text=True,
                          timeout=120)


def test_runtime_venv_is_production_licensed() -> None:
    if not RUNTIME_PYTHON.is_file():
        pytest.skip(f"{RUNTIME_PYTHON} missing: `make venv` creates it")
    result = _check(RUNTIME_PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("kserve==", "openvino==", "onnxruntime==", "fastapi==", "opencv-python-headless=="):
        assert any(line.startswith("ok") and name in line for line in lines), (name, result.stdout)
    lock = (ROOT / "requirements" / "runtime-lock.txt").read_text().split()
    installed = {line.split()[1].split(":")[0].lower() for line in lines if "==" in line}
    # The lock is what the venv holds (pip itself is the venv's, not a locked package).
    pinned = {pin.lower() for pin in lock if "==" in pin}
    assert pinned <= installed, sorted(pinned - installed)


def test_deepsparse_venv_is_not() -> None:
    result = _check(sys.executable)
    assert result.returncode == 1
    assert any(line.startswith("FAIL deepsparse==") for line in result.stdout.splitlines()), result.stdout
