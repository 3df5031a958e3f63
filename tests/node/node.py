"""Starts and stops a real single-node Kubernetes: the control plane of tests/cluster plus a node.

`up(state_dir)` starts dockerd (unless one runs), the control plane (with the controllers,
certificate SANs and kubelet access a node needs), a private bridge holding the node IP, a
forwarder from the node IP to the API server (so pods reach it at https://10.96.0.1), then
kube-scheduler, kubelet (dockershim, CNI bridge) and kube-proxy (iptables), and waits until the
node is Ready and untainted. Before the kubelet starts, two guards keep every packet on this
machine: OUTPUT rejects the cloud metadata range (the kubelet's in-tree AWS credential provider
would probe it; `AWS_EC2_METADATA_DISABLED=true` also stops it) and FORWARD drops anything from
the pod bridge that is not for the pod bridge (pods reach only each other, the node IP and the
Services; no masquerading). `down(state_dir)` stops what `up` started, by pid, and restores the
host: iptables (saved before `up`), sysctls, bridges, mounts, kubepods cgroups, dockerd.
Only one node runs per machine (fixed bridge names and addresses): MARKER names its state dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import plane as cp
from tests.cluster.build import BuildFailed, log, run
from tests.node import host

NODE_IP = "10.250.0.1"
NODE_BRIDGE = "kontinual0"  # holds the node IP: this kernel has no dummy driver
POD_BRIDGE = "kontinual-cni0"
POD_CIDR = "10.244.0.0/24"
API_SERVICE_IP = "10.96.0.1"
NODE_API_PORT = 6443
NODE_CONTROLLERS = ("nodelifecycle", "endpoint", "endpointslice", "endpointslicemirroring",
                    "persistentvolume-binder")
MARKER = Path("/run/kontinual-node.json")
IPTABLES_SAVE = ("iptables", "ip6tables")
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Node:
    """A running node as callers see it: where the API is and what `down` must undo."""

    state_dir: str
    kubeconfig: str
    server: str
    node_name: str
    node_ip: str
    pids: dict[str, int]
    dockerd_pid: int | None
    pause_image: str
    guards: list[list[str]] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    created_paths: list[str] = field(default_factory=list)

    @staticmethod
    def load(state_dir: Path) -> Node:
        return Node(**json.loads((state_dir / "node.json").read_text()))


def save(directory: Path, **fields: object) -> None:
    path = directory / "node.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    state.update(fields)
    path.write_text(json.dumps(state, indent=2))


def ensure_pause_image(bin_dir: Path) -> str:
    """The pause container, imported from the statically built pause binary (no registry here)."""
    digest = run(["sha256sum", str(bin_dir / "pause")], quiet=True).split()[0][:12]
    tag = f"kontinual/pause:{digest}"
    if subprocess.run([host.docker_cli(), "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    staging = bin_dir.parent / f"pause-rootfs-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy2(bin_dir / "pause", staging / "pause")
        tar = subprocess.Popen(["tar", "-C", str(staging), "-c", "pause"], stdout=subprocess.PIPE)
        proc = subprocess.run([host.docker_cli(), "import", "--change", 'ENTRYPOINT ["/pause"]', "-", tag],
                              stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if proc.returncode != 0:
            raise BuildFailed(f"docker import of the pause image failed: {proc.stderr}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tag


def other_node_running() -> str | None:
    if not MARKER.exists():
        return None
    state_dir = Path(json.loads(MARKER.read_text())["state_dir"])
    try:
        pids = Node.load(state_dir).pids
    except (OSError, ValueError, TypeError):
        return None
    return str(state_dir) if any(cp.owns(pid, name) for name, pid in pids.items()) else None


def up(state_dir: Path, plane_bins: Path, node_bins: Path, crds: Sequence[Path] = (), *,
       die_with_parent: bool = False) -> Node:
    """Starts everything in `state_dir` (created); on any failure undoes what it did and raises."""
    host.require_root()
    host.ensure_packages()
    running = other_node_running()
    if running:
        raise cp.ControlPlaneFailed(f"a node already runs on this machine (state dir {running}): "
                                    f"`python -m tests.node down {running}` first")
    began = time.monotonic()
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    MARKER.write_text(json.dumps({"state_dir": str(state_dir)}))
    created = [p for p in ("/var/log/pods", "/var/log/containers", "/var/lib/kubelet") if not Path(p).exists()]
    save(state_dir, state_dir=str(state_dir), kubeconfig="", server="", node_name=NODE_IP, node_ip=NODE_IP,
         pids={}, dockerd_pid=None, pause_image="", guards=[], sysctls=host.read_sysctls(),
         created_paths=created)
    for tool in IPTABLES_SAVE:
        (state_dir / f"{tool}.save").write_text(run([f"{tool}-save"], quiet=True))
    try:
        step = time.monotonic()
        dockerd = host.start_dockerd(logs)
        save(state_dir, dockerd_pid=dockerd)
        pause = ensure_pause_image(node_bins)
        save(state_dir, pause_image=pause)
        log(f"dockerd {'started' if dockerd else 'already running'}, pause image {pause} "
            f"in {time.monotonic() - step:.1f} s")
        plane = cp.up(state_dir / "plane", plane_bins, crds, die_with_parent=die_with_parent,
                      controllers=(*cp.CONTROLLERS, *NODE_CONTROLLERS), extra_ips=(API_SERVICE_IP, NODE_IP),
                      apiserver_args=("--kubelet-preferred-address-types=InternalIP",
                                      "--kubelet-client-certificate", str(state_dir / "plane/pki/admin.crt"),
                                      "--kubelet-client-key", str(state_dir / "plane/pki/admin.key")))
        save(state_dir, kubeconfig=plane.kubeconfig, server=plane.server)
        pki = state_dir / "plane" / "pki"
        guards = install_network(state_dir)
        save(state_dir, guards=guards)
        pids: dict[str, int] = {}
        forwarder = cp.start("socat", [
            "socat", f"TCP-LISTEN:{NODE_API_PORT},bind={NODE_IP},fork,reuseaddr",
            f"TCP:127.0.0.1:{plane.server.rsplit(':', 1)[1]}"], logs, die_with_parent)
        pids["socat"] = forwarder.pid
        save(state_dir, pids=pids)
        publish_api_endpoints(plane.server, pki)
        write_node_config(state_dir, pki, pause)
        procs = {"socat": forwarder}
        procs["kube-scheduler"] = cp.start("kube-scheduler", [
            str(node_bins / "kube-scheduler"), "--kubeconfig", plane.kubeconfig, "--leader-elect=false",
            "--port", "0", "--secure-port", "0", "--v", "1"], logs, die_with_parent)
        pids["kube-scheduler"] = procs["kube-scheduler"].pid
        save(state_dir, pids=pids)
        step = time.monotonic()
        procs["kubelet"] = start_kubelet(state_dir, node_bins, plane.kubeconfig, pause, logs, die_with_parent)
        pids["kubelet"] = procs["kubelet"].pid
        save(state_dir, pids=pids)
        procs["kube-proxy"] = cp.start("kube-proxy", [
            str(node_bins / "kube-proxy"), "--kubeconfig", plane.kubeconfig, "--proxy-mode", "iptables",
            "--hostname-override", NODE_IP, "--bind-address", NODE_IP, "--cluster-cidr", POD_CIDR,
            "--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0",
            "--conntrack-tcp-timeout-close-wait", "0", "--oom-score-adj", "0",
            "--healthz-bind-address", f"127.0.0.1:{cp.free_port()}",
            "--metrics-bind-address", f"127.0.0.1:{cp.free_port()}", "--v", "1"], logs, die_with_parent)
        pids["kube-proxy"] = procs["kube-proxy"].pid
        save(state_dir, pids=pids)
        ready = cp.wait_until("kubelet", procs["kubelet"], logs, lambda: node_ready(plane.server, pki),
                              timeout=READY_TIMEOUT_S)
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise cp.ControlPlaneFailed(f"{name} exited {proc.returncode}:\n{cp.log_tail(logs, name)}")
        log(f"node {NODE_IP} Ready and untainted {ready:.1f} s after the kubelet started")
    except BaseException:
        down(state_dir)
        raise
    log(f"node up in {time.monotonic() - began:.1f} s; KUBECONFIG={plane.kubeconfig}")
    return Node.load(state_dir)


def install_network(state_dir: Path) -> list[list[str]]:
    """The node IP's bridge, the service CIDR routed into it, and the two guards; returns the guards."""
    host.ip("link", "add", NODE_BRIDGE, "type", "bridge")
    host.ip("addr", "add", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
    host.ip("link", "set", NODE_BRIDGE, "up")
    # A ClusterIP without endpoints must never follow the default route off the machine.
    host.ip("route", "add", cp.SERVICE_CIDR, "dev", NODE_BRIDGE, "src", NODE_IP)
    # mangle FORWARD runs before filter FORWARD, where the CNI firewall plugin and the kubelet
    # insert ACCEPT rules above anything of ours.
    guards = [host.insert_guard("filter", "OUTPUT", "-d", host.METADATA_CIDR, "-j", "REJECT"),
              host.insert_guard("mangle", "FORWARD", "-i", POD_BRIDGE, "!", "-o", POD_BRIDGE, "-j", "DROP")]
    save(state_dir, guards=guards)
    return guards


def publish_api_endpoints(server: str, pki: Path) -> None:
    """Endpoints default/kubernetes -> the forwarder (the API server runs with no reconciler)."""
    body = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": NODE_IP}],
                         "ports": [{"name": "https", "port": NODE_API_PORT, "protocol": "TCP"}]}]}
    url = f"{server}/api/v1/namespaces/default/endpoints"
    status, text = cp.https_request("POST", url, pki, json.dumps(body).encode())
    if status == 409:
        status, text = cp.https_request("PUT", f"{url}/kubernetes", pki, json.dumps(body).encode())
    if status not in (200, 201):
        raise cp.ControlPlaneFailed(f"publishing the kubernetes Endpoints failed ({status}): {text[:500]!r}")


def write_node_config(state_dir: Path, pki: Path, pause: str) -> None:
    cni = state_dir / "cni"
    cni.mkdir(exist_ok=True)
    (cni / "10-kontinual.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "kontinual", "plugins": [
            {"type": "bridge", "bridge": POD_BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(state_dir / "cni-ipam")}},
            {"type": "firewall"}]}, indent=2))
    # No cluster DNS: a lookup inside a pod fails at once on its own loopback, never leaves.
    (state_dir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (state_dir / "kubelet.yaml").write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "failSwapOn": False, "address": NODE_IP, "port": 10250,
        "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": cp.free_port(),
        "resolvConf": str(state_dir / "resolv.conf"),
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "1s", "serializeImagePulls": False, "maxPods": 30,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"}}, indent=2))


def start_kubelet(state_dir: Path, bins: Path, kubeconfig: str, pause: str, logs: Path,
                  die_with_parent: bool) -> subprocess.Popen[bytes]:
    argv = [str(bins / "kubelet"), "--config", str(state_dir / "kubelet.yaml"), "--kubeconfig", kubeconfig,
            "--container-runtime", "docker", "--network-plugin", "cni", "--cni-bin-dir", "/usr/lib/cni",
            "--cni-conf-dir", str(state_dir / "cni"), "--pod-infra-container-image", pause,
            "--root-dir", str(state_dir / "kubelet"), "--cert-dir", str(state_dir / "kubelet-pki"),
            "--hostname-override", NODE_IP, "--node-ip", NODE_IP, "--oom-score-adj", "0", "--v", "1"]
    # The in-tree AWS credential provider probes 169.254.169.254 unless told not to.
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    with open(logs / "kubelet.log", "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True,
                                preexec_fn=cp.exit_with_parent if die_with_parent else None)


def node_ready(server: str, pki: Path) -> bool:
    status, body = cp.https_get(f"{server}/api/v1/nodes/{NODE_IP}", pki)
    if status != 200:
        return False
    node = json.loads(body)
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
    return ready and not node["spec"].get("taints")


def kubernetes_containers() -> list[str]:
    out = run([host.docker_cli(), "ps", "-aq", "--filter", "label=io.kubernetes.pod.uid"], quiet=True)
    return out.split()


def down(state_dir: Path) -> None:
    """Stops this state dir's node and control plane, restores the host, removes the directory."""
    state_file = state_dir / "node.json"
    if not state_file.exists():
        cp.down(state_dir / "plane")
        shutil.rmtree(state_dir, ignore_errors=True)
        return
    state = json.loads(state_file.read_text())
    pids = state.get("pids", {})
    for name in ("kube-proxy", "kubelet", "kube-scheduler", "socat"):
        pid = pids.get(name)
        if pid and cp.owns(pid, name):
            cp.stop(pid, name)
    if shutil.which("docker") or host.DEBIAN_DOCKER.exists():
        try:
            containers = kubernetes_containers()
            if containers:
                subprocess.run([host.docker_cli(), "rm", "-f", "-v", *containers], capture_output=True, timeout=120)
        except (BuildFailed, host.NodeUnavailable, subprocess.TimeoutExpired) as error:
            log(f"could not remove the pods' containers: {error}")
    cp.down(state_dir / "plane")
    for tool in IPTABLES_SAVE:
        restore_rules(tool, state_dir / f"{tool}.save")
    host.remove_guards(state.get("guards", []))
    for link in (POD_BRIDGE, NODE_BRIDGE):
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    host.restore_sysctls(state.get("sysctls", {}))
    unmount_under(state_dir)
    remove_kubepods_cgroups()
    for path in state.get("created_paths", []):
        shutil.rmtree(path, ignore_errors=True)
    dockerd = state.get("dockerd_pid")
    if dockerd and cp.owns(dockerd, "dockerd"):
        cp.stop(dockerd, "dockerd", grace_s=20)
    if MARKER.exists() and json.loads(MARKER.read_text()).get("state_dir") == str(state_dir):
        MARKER.unlink()
    shutil.rmtree(state_dir, ignore_errors=True)


def restore_rules(tool: str, saved: Path) -> None:
    """Puts back the rules saved before `up`; a table that did not exist then is emptied."""
    if not saved.exists():
        return
    text = saved.read_text()
    empty = "".join(f"*{table}\nCOMMIT\n" for table in ("filter", "nat", "mangle")
                    if f"*{table}\n" not in text)
    proc = subprocess.run([f"{tool}-restore"], input=text + empty, text=True, capture_output=True)
    if proc.returncode != 0:
        log(f"{tool}-restore failed: {proc.stderr.strip()}")


def unmount_under(directory: Path) -> None:
    """The kubelet's bind mount of its root dir and the tmpfs of every Secret volume."""
    prefix = str(directory.resolve())
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m == prefix or m.startswith(prefix + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def remove_kubepods_cgroups() -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / "kubepods"
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                reverse=True) + [top]:
            with contextlib.suppress(OSError):  # still in use: the kernel keeps it
                directory.rmdir()


