"""The test suite's egress guard: it refuses and records what would leave the machine, in this process and children."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import NETGUARD, NETGUARD_RECORD


def _python(code: str, record: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter of the test venv whose guard writes to `record` (the venv's bootstrap installs it)."""
    env = {**os.environ, "KTEST_NET_GUARD": str(record)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_a_child_process_is_refused_an_outside_address_and_it_is_recorded(tmp_path: Path) -> None:
    record = tmp_path / "refused.jsonl"
    done = _python("""
        import socket
        try:
            socket.create_connection(("192.0.2.1", 53), timeout=2)
        except ConnectionRefusedError as error:
            print("refused:", error)
        """, record)
    assert done.returncode == 0, done.stderr
    assert "net guard" in done.stdout
    (entry,) = NETGUARD.refused(record)
    assert entry["event"] == "socket.connect" and "192.0.2.1" in entry["target"]


def test_a_name_lookup_off_the_machine_is_refused_before_any_dns_query(tmp_path: Path) -> None:
    record = tmp_path / "refused.jsonl"
    done = _python("""
        import socket
        try:
            socket.getaddrinfo("api.roboflow.com", 443)
        except socket.gaierror as error:
            print("refused:", error)
        """, record)
    assert "refused: " in done.stdout, done.stderr
    assert [e["event"] for e in NETGUARD.refused(record)] == ["socket.getaddrinfo"]


def test_loopback_and_this_machines_own_addresses_pass(tmp_path: Path) -> None:
    record = tmp_path / "refused.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        done = _python(f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
            socket.create_connection(("localhost", {port}), timeout=5).close()
            socket.getaddrinfo(socket.gethostname(), None)
            print("ok")
            """, record)
    assert done.stdout.strip() == "ok", done.stderr
    assert NETGUARD.refused(record) == []


def test_the_guard_is_on_in_this_process() -> None:
    """The session's own guard: an outside connect fails here too (recorded in a side file, not the session's)."""
    side = NETGUARD_RECORD.with_suffix(".side")
    NETGUARD.install(side)
    try:
        with pytest.raises(ConnectionRefusedError, match="net guard"):
            socket.create_connection(("198.51.100.7", 80), timeout=2)
    finally:
        NETGUARD.install(NETGUARD_RECORD)
    assert [e["target"] for e in NETGUARD.refused(side)] == ["('198.51.100.7', 80)"]
    side.unlink()
