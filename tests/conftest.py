"""Test-suite wide setup: offline, no analytics, writable config dirs, repo root importable, the egress guard.

The egress guard (tests/support/netguard.py) is on for the whole session, in this process and,
through KTEST_NET_GUARD and the venv's bootstrap, in every Python process a test starts: a test
during which anything tried to reach an address off this machine fails, naming who and where.
"""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
_cfg = os.environ.get("YOLO_CONFIG_DIR") or tempfile.mkdtemp(prefix="kontinual-yolo-")
os.environ.setdefault("YOLO_CONFIG_DIR", _cfg)
os.environ.setdefault("YOLOV5_CONFIG_DIR", _cfg)


def _netguard() -> ModuleType:
    """The guard module the venv's bootstrap loaded at start-up, else this checkout's (same name either way)."""
    module = sys.modules.get("kontinual_netguard")
    if module is None:
        spec = importlib.util.spec_from_file_location("kontinual_netguard", ROOT / "tests" / "support" / "netguard.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["kontinual_netguard"] = module
    return module


NETGUARD = _netguard()
_fd, _record = tempfile.mkstemp(prefix="kontinual-netguard-", suffix=".jsonl")
os.close(_fd)
NETGUARD_RECORD = Path(_record)
NETGUARD.install(NETGUARD_RECORD)  # also exports KTEST_NET_GUARD to every child process

# Tests that build models import yolov5 themselves: keep it offline here too, as the trainer does.
import kontinual.trainer  # noqa: E402,F401 - installs kontinual.trainer.offline


def _describe(entries: list[dict]) -> str:
    return "\n".join(f"  pid {e['pid']} {' '.join(e['argv'])}: {e['event']} {e['target']}\n    "
                     + "\n    ".join(e["stack"][-4:]) for e in entries)


@pytest.fixture(autouse=True)
def _no_egress() -> Iterator[None]:
    """Fails the test if anything (this process or a child) tried to reach an address off this machine."""
    before = len(NETGUARD.refused(NETGUARD_RECORD))
    yield
    new = NETGUARD.refused(NETGUARD_RECORD)[before:]
    if new:
        pytest.fail(f"{len(new)} connection(s) to addresses off this machine were refused:\n{_describe(new)}",
                    pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    entries = NETGUARD.refused(NETGUARD_RECORD)
    if entries:
        sys.stderr.write(f"\nNET GUARD: {len(entries)} refused destination(s) in this run:\n{_describe(entries)}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    NETGUARD_RECORD.unlink(missing_ok=True)
