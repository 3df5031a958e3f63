"""What the node needs from the host and gives back: Debian packages, dockerd, iptables guards, sysctls.

Everything here is stdlib and talks to the host through its own tools (apt-get, dockerd,
iptables, ip, sysctl files). Every change the node makes to the host is recorded in the
node's state file by the caller and undone by `down`, so a machine is left as it was found
(Debian packages and Docker's images stay: they are the cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.cluster.build import BuildFailed, log, run

PACKAGES = {  # binary -> the Debian package that ships it
    "dockerd": "docker.io", "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables", "ipset": "ipset", "debootstrap": "debootstrap", "socat": "socat",
    "ip": "iproute2",
}
DOCKER_SOCKET = Path("/var/run/docker.sock")
# Debian's client speaks the daemon's API and builds with its BuildKit (per-Dockerfile
# .dockerignore files need it); a newer client on PATH may lack the buildx plugin.
DEBIAN_DOCKER = Path("/usr/bin/docker")
GUARD_COMMENT = "kontinual-node-guard"
METADATA_CIDR = "169.254.0.0/16"
# What kubelet and kube-proxy set on start; restored on `down`.
SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops",
           "net/ipv4/conf/all/route_localnet", "net/ipv4/ip_forward")  # ip_forward: the CNI bridge plugin


class NodeUnavailable(RuntimeError):
    """This machine cannot run a node at all (not root, no apt, no cgroups): skip, loudly."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise NodeUnavailable("a kubelet needs root (mounts, cgroups, iptables); this process is "
                              f"uid {os.geteuid()}")
    if not Path("/sys/fs/cgroup/memory").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        raise NodeUnavailable("no cgroup filesystem at /sys/fs/cgroup")


def ensure_packages() -> None:
    """Installs the Debian packages the node needs (once per machine); services are not started."""
    missing = sorted({pkg for binary, pkg in PACKAGES.items()
                      if not (Path(binary).exists() if binary.startswith("/") else shutil.which(binary))})
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise NodeUnavailable(f"missing {', '.join(missing)} and no apt-get to install them")
    started = time.monotonic()
    log(f"installing Debian packages {', '.join(missing)} (once per machine)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise NodeUnavailable(f"apt-get install {' '.join(missing)} failed:\n{proc.stdout[-2000:]}")
    log(f"installed in {time.monotonic() - started:.0f} s")


def docker_cli() -> str:
    found = str(DEBIAN_DOCKER) if DEBIAN_DOCKER.exists() else shutil.which("docker")
    if not found:
        raise NodeUnavailable("no docker client")
    return found


def docker_ready() -> bool:
    proc = subprocess.run([docker_cli(), "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


def start_dockerd(logs: Path) -> int | None:
    """Starts dockerd unless one answers already; returns the pid of the one we started.

    No docker bridge, no iptables rules, no masquerading: pods are on the CNI bridge, whose
    traffic the node's own FORWARD guard keeps on this machine (Docker's FORWARD DROP policy
    would also cut pod-to-pod traffic).
    """
    if DOCKER_SOCKET.exists() and docker_ready():
        return None
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "dockerd.log", "ab") as out:
        proc = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none", "--ip-forward=false",
             "--log-level=warn", "--host", f"unix://{DOCKER_SOCKET}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BuildFailed(f"dockerd exited {proc.returncode}:\n{(logs / 'dockerd.log').read_text()[-3000:]}")
        if DOCKER_SOCKET.exists() and docker_ready():
            return proc.pid
        time.sleep(0.2)
    raise BuildFailed(f"dockerd not ready after 60 s:\n{(logs / 'dockerd.log').read_text()[-3000:]}")


def iptables(*args: str, table: str = "filter") -> str:
    return run(["iptables", "-w", "-t", table, *args], quiet=True)


def insert_guard(table: str, chain: str, *rule: str) -> list[str]:
    """Inserts `rule` first in `table` `chain`, tagged so `remove_guards` finds it; returns the rule."""
    full = [*rule, "-m", "comment", "--comment", GUARD_COMMENT]
    iptables("-I", chain, "1", *full, table=table)
    return ["-t", table, chain, *full]


def remove_guards(rules: list[list[str]]) -> None:
    for rule in rules:
        subprocess.run(["iptables", "-w", rule[0], rule[1], "-D", *rule[2:]], capture_output=True)


def guard_packets(chain: str, destination: str, table: str = "filter") -> int:
    """Packets counted by our guard rule in `chain` for `destination` (0 = nothing tried)."""
    out = iptables("-L", chain, "-v", "-n", "-x", table=table)
    for line in out.splitlines():
        if GUARD_COMMENT in line and destination in line:
            return int(line.split()[0])
    raise BuildFailed(f"the {chain} guard for {destination} is not installed")


def read_sysctls() -> dict[str, str]:
    return {name: (Path("/proc/sys") / name).read_text().strip() for name in SYSCTLS
            if (Path("/proc/sys") / name).exists()}


def restore_sysctls(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        path = Path("/proc/sys") / name
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as error:
            log(f"could not restore {name}={value}: {error}")


def ip(*args: str) -> None:
    run(["ip", *args], quiet=True)


def docker_json(*args: str) -> object:
    return json.loads(run([docker_cli(), *args], quiet=True) or "null")



