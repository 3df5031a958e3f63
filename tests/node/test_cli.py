"""`python -m tests.node up DIR` / `down DIR` as a person runs them: the node comes up, and down puts
the host back exactly as it was (iptables, sysctls, links, mounts, processes).

Runs before the session's `node` fixture starts (file order): only one node runs per machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.node.conftest import ROOT, binaries
from tests.node.node import MARKER, NODE_IP

HOST_STATE_FILES = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops",
                    "net/ipv4/conf/all/route_localnet", "net/ipv4/ip_forward")


def host_state(under: Path) -> dict[str, object]:
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return {
        "iptables": sorted(line for line in rules.splitlines() if not line.startswith(("#", ":"))),
        "sysctls": {name: (Path("/proc/sys") / name).read_text().strip() for name in HOST_STATE_FILES},
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()),
        "mounts": sorted(line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                         if line.split()[1].startswith(str(under))),
        "kubepods": Path("/sys/fs/cgroup/memory/kubepods").exists(),
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "tests.node", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_up_then_down_leaves_the_host_as_it_was(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    binaries(request)  # skip (or fail under CI) with the tier's banner where no node can run
    state = tmp_path / "node"
    before = host_state(tmp_path)
    started = cli("up", str(state))
    try:
        assert started.returncode == 0, started.stderr[-4000:]
        assert f"export KUBECONFIG={state}/plane/admin.kubeconfig" in started.stdout
        assert json.loads(MARKER.read_text())["state_dir"] == str(state)
        kubelet = json.loads((state / "node.json").read_text())["pids"]["kubelet"]
        assert Path(f"/proc/{kubelet}").exists()
        nodes = subprocess.run([sys.executable, "-c", (
            "import sys; from kubernetes import client, config; "
            "api = client.CoreV1Api(config.new_client_from_config(config_file=sys.argv[1])); "
            "print(' '.join(n.metadata.name for n in api.list_node().items))"),
            str(state / "plane/admin.kubeconfig")], capture_output=True, text=True)
        assert nodes.stdout.split() == [NODE_IP], nodes.stderr
        again = cli("up", str(tmp_path / "second"))
        assert again.returncode == 1 and "a node already runs on this machine" in again.stderr
    finally:
        stopped = cli("down", str(state))
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    assert not state.exists() and not MARKER.exists()
    assert not Path(f"/proc/{kubelet}").exists() or "Z" in Path(f"/proc/{kubelet}/stat").read_text().split()[2]
    assert host_state(tmp_path) == before
