"""The test suite's egress guard: refuses and records any connection or name lookup that would leave this machine.

Tests may send traffic only to loopback and to this machine's own addresses (the real node's
bridge, its pods and Services included). This module installs a `sys.addaudithook` that sees
every `socket.connect`, `socket.sendto`, `socket.getaddrinfo`, `socket.gethostbyname` and
`socket.gethostbyaddr` of the process, lets local destinations through and refuses every other
one *before* a packet is sent (the audit hook raises, so the call fails with an OSError as it
would on a closed network), appending one JSON line per refusal to the record file named by
the environment variable `KTEST_NET_GUARD`.

It reaches every Python process of a test run, not only pytest's: `make venv` writes a
bootstrap into the test venv's site-packages (`python tests/support/netguard.py
--install-bootstrap`), a `.pth` file that loads this module at interpreter start-up whenever
`KTEST_NET_GUARD` is set, so the trainer, `deepsparse.server`, the operator and benchmark
children inherit the guard with the variable. tests/conftest.py sets the variable for the whole
session and fails a test during which anything was refused. Non-Python processes (kubelet,
pods of the real node) are kept on the machine by the node tier's iptables rules instead.

Stdlib only: it runs before anything else in every interpreter.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ENV_RECORD = "KTEST_NET_GUARD"  # path of the record file; the guard is on while this is set
ENV_ALLOW = "KTEST_NET_GUARD_ALLOW"  # extra comma-separated CIDRs on this machine (the node's pod/service ranges)
MODULE_NAME = "kontinual_netguard"
BOOT_MODULE = "_kontinual_netguard_boot"
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
EVENTS = {"socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}


class _Guard:
    def __init__(self) -> None:
        self.record: Path | None = None
        self.local: set[ipaddress._BaseAddress] = set()
        self.local_read_at = 0.0
        self.busy = threading.local()  # no re-entry: the guard's own look-ups are audited too

    # --- what is on this machine -------------------------------------------------------------
    def _refresh_local(self) -> None:
        """Every address of this machine's interfaces (read from /proc, so bridges added later count)."""
        found: set[ipaddress._BaseAddress] = set()
        try:
            lines = Path("/proc/net/fib_trie").read_text().splitlines()
            for previous, line in zip(lines, lines[1:]):
                if "/32 host LOCAL" in line:
                    found.add(ipaddress.ip_address(previous.split()[-1]))
        except (OSError, ValueError, IndexError):
            pass
        try:
            for line in Path("/proc/net/if_inet6").read_text().splitlines():
                found.add(ipaddress.ip_address(":".join(line[i:i + 4] for i in range(0, 32, 4))))
        except (OSError, ValueError):
            pass
        self.local = found
        self.local_read_at = time.monotonic()

    def _extra(self) -> list[ipaddress._BaseNetwork]:
        nets = []
        for text in os.environ.get(ENV_ALLOW, "").split(","):
            try:
                nets.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                continue
        return nets

    def allowed_ip(self, ip: ipaddress._BaseAddress) -> bool:
        if ip.is_loopback or ip.is_unspecified:
            return True
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            return self.allowed_ip(mapped)
        if ip in self.local:
            return True
        if time.monotonic() - self.local_read_at > 1.0:
            self._refresh_local()
            if ip in self.local:
                return True
        return any(ip in net for net in self._extra())

    def allowed_host(self, host: Any) -> bool:
        """A literal address on this machine, a local name, or no host at all (a bind or a socketpair)."""
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if not isinstance(host, str) or host == "":
            return True
        ip = _literal(host)
        if ip is not None:
            return self.allowed_ip(ip)
        name = host.rstrip(".").lower()
        return name in LOCAL_NAMES or name.endswith(".localhost") or name == _hostname()

    def allowed_address(self, address: Any) -> bool:
        if isinstance(address, (str, bytes)):  # AF_UNIX path
            return True
        if isinstance(address, tuple) and address:
            return self.allowed_host(address[0])
        return True

    # --- the hook ------------------------------------------------------------------------------
    def check(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in EVENTS or self.record is None or getattr(self.busy, "on", False):
            return
        self.busy.on = True
        try:
            if event in ("socket.connect", "socket.sendto"):
                ok, target = self.allowed_address(args[1]), args[1]
            elif event == "socket.gethostbyaddr":  # a reverse lookup asks a DNS server about any outside address
                ok, target = self.allowed_host(args[0]), args[0]
            else:  # a literal address resolves without a query; the connect to it is checked then
                ok, target = _literal(args[0]) is not None or self.allowed_host(args[0]), args[0]
            if ok:
                return
            self._write(event, target)
        finally:
            self.busy.on = False
        message = (f"kontinual test net guard: {event} to {target!r} refused - tests may reach only loopback "
                   f"and this machine's own addresses (see tests/support/netguard.py)")
        if event == "socket.getaddrinfo" or event.startswith("socket.gethostby"):
            raise socket.gaierror(socket.EAI_NONAME, message)
        raise ConnectionRefusedError(111, message)

    def _write(self, event: str, target: Any) -> None:
        entry = {"pid": os.getpid(), "argv": sys.argv[:3], "event": event, "target": repr(target),
                 "stack": [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack()[-8:-2]]}
        try:
            with open(self.record, "a", encoding="utf-8") as out:  # type: ignore[arg-type]
                out.write(json.dumps(entry) + "\n")
        except OSError:
            pass


def _literal(host: Any) -> ipaddress._BaseAddress | None:
    """The address a host string spells literally (IPv6 scope ids dropped), else None (a name, or no host)."""
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return None
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


_hostname_cache: list[str] = []


def _hostname() -> str:
    if not _hostname_cache:
        _hostname_cache.append(socket.gethostname().lower())
    return _hostname_cache[0]


_GUARD = _Guard()
_installed = False


def install(record: str | os.PathLike[str]) -> None:
    """Turn the guard on in this process (idempotent; a later call only moves the record file)."""
    global _installed
    _GUARD.record = Path(record)
    os.environ[ENV_RECORD] = str(record)
    if not _installed:
        _hostname()
        _GUARD._refresh_local()
        sys.addaudithook(_GUARD.check)
        _installed = True


def refused(record: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The refusals written to a record file so far."""
    path = Path(record)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def install_bootstrap(site_packages: Path) -> None:
    """Write the start-up hook into a venv: every interpreter of it loads this guard when KTEST_NET_GUARD is set."""
    boot = site_packages / f"{BOOT_MODULE}.py"
    boot.write_text(
        '"""Loads the Kontinual test suite\'s egress guard when KTEST_NET_GUARD is set (written by make venv)."""\n'
        "import os\n"
        f"if os.environ.get({ENV_RECORD!r}):\n"
        "    import importlib.util, sys\n"
        "    try:\n"
        f"        _spec = importlib.util.spec_from_file_location({MODULE_NAME!r}, {str(Path(__file__).resolve())!r})\n"
        "        _module = importlib.util.module_from_spec(_spec)\n"
        "        _spec.loader.exec_module(_module)\n"
        f"        sys.modules[{MODULE_NAME!r}] = _module\n"
        f"        _module.install(os.environ[{ENV_RECORD!r}])\n"
        "    except Exception as _error:  # a moved checkout: say so, never stop the interpreter\n"
        "        sys.stderr.write(f'kontinual test net guard NOT active: {_error} (re-run make venv)\\n')\n")
    (site_packages / "kontinual_netguard.pth").write_text(f"import {BOOT_MODULE}\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--install-bootstrap"]:
        sys.exit("usage: python tests/support/netguard.py --install-bootstrap")
    import sysconfig

    install_bootstrap(Path(sysconfig.get_paths()["purelib"]))
    print(f"net guard bootstrap installed in {sysconfig.get_paths()['purelib']}")
