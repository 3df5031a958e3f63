"""Starts and stops etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 in one state dir.

`up(state_dir, bin_dir)` creates a CA, serving and client certificates and a service-account
signing key with openssl, starts the three processes on free loopback ports (nothing listens
beyond 127.0.0.1), waits until each is ready and writes `admin.kubeconfig` (client certificate
in group system:masters). The API server authorizes with RBAC only, so a process that runs with
a ServiceAccount's token gets exactly what its Roles grant. `down(state_dir)` stops the
processes recorded in `state.json` (and only those) and removes the directory.
"""

from __future__ import annotations

import contextlib
import base64
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.cluster.build import BuildFailed, log, run

SERVICE_CIDR = "10.96.0.0/16"
CONTROLLERS = ("deployment", "replicaset", "job", "garbagecollector", "serviceaccount",
               "serviceaccount-token", "namespace", "pvc-protection", "horizontalpodautoscaling")
READY_TIMEOUT_S = 90.0


class ControlPlaneFailed(RuntimeError):
    """A control-plane process exited or never became ready; the message holds its log tail."""


@dataclass(frozen=True)
class ControlPlane:
    """What a running control plane is: where to reach it and which processes it owns."""

    state_dir: str
    server: str
    kubeconfig: str
    pids: dict[str, int]

    @staticmethod
    def load(state_dir: Path) -> ControlPlane:
        return ControlPlane(**json.loads((state_dir / "state.json").read_text()))


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open while choosing, so none is handed out twice)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def make_pki(pki: Path, extra_ips: Sequence[str] = ()) -> None:
    """CA, apiserver serving cert (127.0.0.1, localhost, kubernetes.default, `extra_ips`), admin
    client cert, SA key."""
    if not shutil.which("openssl"):
        raise ControlPlaneFailed("openssl is needed to create the control plane's certificates")
    pki.mkdir(parents=True, exist_ok=True)
    ssl_cmd = ["openssl"]

    def key(name: str) -> str:
        path = str(pki / f"{name}.key")
        run([*ssl_cmd, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", path], quiet=True)
        return path

    run([*ssl_cmd, "req", "-x509", "-new", "-key", key("ca"), "-sha256", "-days", "30",
         "-subj", "/CN=kontinual-test-ca", "-out", str(pki / "ca.crt")], quiet=True)
    for name, subject, extensions in (
        ("apiserver", "/CN=kube-apiserver",
         f"subjectAltName=IP:127.0.0.1,{''.join(f'IP:{ip},' for ip in extra_ips)}"
         "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
         "DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"),
        ("admin", "/O=system:masters/CN=kontinual-test-admin", "extendedKeyUsage=clientAuth\n"),
    ):
        csr = pki / f"{name}.csr"
        ext = pki / f"{name}.ext"
        ext.write_text(extensions)
        run([*ssl_cmd, "req", "-new", "-key", key(name), "-subj", subject, "-out", str(csr)], quiet=True)
        run([*ssl_cmd, "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
             "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "30", "-sha256",
             "-extfile", str(ext), "-out", str(pki / f"{name}.crt")], quiet=True)
    run([*ssl_cmd, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", str(pki / "sa.key")], quiet=True)
    run([*ssl_cmd, "pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")], quiet=True)


def kubeconfig_text(server: str, ca: Path, user: dict[str, str], user_name: str) -> str:
    """A kubeconfig with the CA embedded; `user` is {client-certificate-data, ...} or {token}."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kontinual-test",
        "clusters": [{"name": "kontinual-test", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": "kontinual-test",
                      "context": {"cluster": "kontinual-test", "user": user_name}}],
    }
    return json.dumps(config, indent=2)  # JSON is YAML: every kubeconfig reader accepts it


def admin_kubeconfig(server: str, pki: Path) -> str:
    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()
    return kubeconfig_text(server, pki / "ca.crt", {
        "client-certificate-data": data("admin.crt"), "client-key-data": data("admin.key")}, "admin")


def exit_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def start(name: str, argv: list[str], logs: Path, die_with_parent: bool) -> subprocess.Popen[bytes]:
    """Starts one process in its own session (a terminal's Ctrl-C goes to the parent, which then
    runs `down`); with `die_with_parent` it also stops if the parent is killed outright."""
    with open(logs / f"{name}.log", "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=exit_with_parent if die_with_parent else None)


def wait_until(name: str, proc: subprocess.Popen[bytes], logs: Path,
               probe: Callable[[], bool], timeout: float = READY_TIMEOUT_S) -> float:
    """Polls `probe` until it is true; fails fast with the log tail if the process exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise ControlPlaneFailed(f"{name} exited with {proc.returncode}:\n{log_tail(logs, name)}")
        try:
            if probe():
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise ControlPlaneFailed(f"{name} not ready after {timeout:.0f} s:\n{log_tail(logs, name)}")


def log_tail(logs: Path, name: str, lines: int = 30) -> str:
    path = logs / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def https_request(method: str, url: str, pki: Path, body: bytes | None = None) -> tuple[int, bytes]:
    """One admin request to the API server (stdlib only, so `up` needs no Kubernetes client)."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def https_get(url: str, pki: Path) -> tuple[int, bytes]:
    return https_request("GET", url, pki)


def up(state_dir: Path, bin_dir: Path, crds: Sequence[Path] = (), *,
       die_with_parent: bool = False, controllers: Sequence[str] = CONTROLLERS,
       extra_ips: Sequence[str] = (), apiserver_args: Sequence[str] = ()) -> ControlPlane:
    """Starts the control plane in `state_dir` (created; must not hold a running one).

    `crds` (YAML files) are installed before the controller manager starts, so its garbage
    collector knows their kinds from the start (it rediscovers new kinds only every 30 s).
    `die_with_parent` (for test fixtures) stops everything if the calling process is killed
    without running `down`; the CLI's `up` leaves it off, its processes outlive it by design.
    `controllers`, `extra_ips` (more serving-certificate SANs) and `apiserver_args` are for a
    node on top (tests/node): its Services, node lifecycle and in-cluster clients need them.
    """
    if (state_dir / "state.json").exists():
        raise ControlPlaneFailed(f"{state_dir} already holds a control plane; run `down` first")
    began = time.monotonic()
    pki, logs = state_dir / "pki", state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    make_pki(pki, extra_ips)
    log(f"certificates and service-account key created in {time.monotonic() - began:.1f} s")
    etcd_port, etcd_peer, api_port = free_ports(3)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    server = f"https://127.0.0.1:{api_port}"
    plane = ControlPlane(str(state_dir), server, str(state_dir / "admin.kubeconfig"), {})
    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        procs["etcd"] = start("etcd", [
            str(bin_dir / "etcd"), "--name", "kontinual-test", "--data-dir", str(state_dir / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"kontinual-test=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level", "warn"], logs, die_with_parent)
        record(plane, procs)

        def etcd_ready() -> bool:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as response:
                return json.loads(response.read()).get("health") == "true"
        log(f"etcd ready on {etcd_url} in {wait_until('etcd', procs['etcd'], logs, etcd_ready):.1f} s")

        procs["kube-apiserver"] = start("kube-apiserver", [
            str(bin_dir / "kube-apiserver"), "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(api_port), "--insecure-port", "0",
            "--endpoint-reconciler-type", "none", "--cert-dir", str(state_dir / "apiserver-certs"),
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"), "--authorization-mode", "RBAC",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--api-audiences", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", SERVICE_CIDR, "--allow-privileged",
            "--profiling=false", "--v", "1", *apiserver_args], logs, die_with_parent)
        record(plane, procs)
        api_ready = wait_until("kube-apiserver", procs["kube-apiserver"], logs,
                               lambda: https_get(f"{server}/readyz", pki) == (200, b"ok"))
        log(f"kube-apiserver ready on {server} in {api_ready:.1f} s")
        Path(plane.kubeconfig).write_text(admin_kubeconfig(server, pki))
        os.chmod(plane.kubeconfig, 0o600)
        if crds:
            step = time.monotonic()
            install_crds(server, pki, crds)
            log(f"installed {len(crds)} CRD file(s), established in {time.monotonic() - step:.1f} s")

        procs["kube-controller-manager"] = start("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"), "--kubeconfig", plane.kubeconfig,
            "--controllers", ",".join(controllers), "--leader-elect=false",
            # The HPA controller's pass every 5 s (default 15 s) keeps autoscaling tests short.
            "--horizontal-pod-autoscaler-sync-period", "5s",
            "--port", "0", "--secure-port", "0",
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--root-ca-file", str(pki / "ca.crt"), "--profiling=false", "--v", "1"], logs, die_with_parent)
        record(plane, procs)
        # Ready = the serviceaccount and token controllers made `default`'s token Secret.
        cm_ready = wait_until("kube-controller-manager", procs["kube-controller-manager"], logs,
                              lambda: default_token_exists(server, pki))
        log(f"kube-controller-manager ready in {cm_ready:.1f} s "
            f"(controllers: {', '.join(controllers)})")
    except BaseException:
        down(state_dir)
        raise
    log(f"control plane up in {time.monotonic() - began:.1f} s; KUBECONFIG={plane.kubeconfig}")
    return ControlPlane.load(state_dir)


def install_crds(server: str, pki: Path, files: Sequence[Path]) -> None:
    import yaml  # only needed with CRDs; the rest of this module is stdlib

    collection = f"{server}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = []
    for path in files:
        for crd in (doc for doc in yaml.safe_load_all(path.read_text()) if doc):
            status, body = https_request("POST", collection, pki, json.dumps(crd).encode())
            if status not in (201, 409):
                raise ControlPlaneFailed(f"installing {path} failed ({status}): {body.decode(errors='replace')}")
            names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + 30
    for name in names:
        while not established(https_request("GET", f"{collection}/{name}", pki)[1]):
            if time.monotonic() > deadline:
                raise ControlPlaneFailed(f"CRD {name} not Established after 30 s")
            time.sleep(0.1)


def established(body: bytes) -> bool:
    conditions = json.loads(body).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def default_token_exists(server: str, pki: Path) -> bool:
    status, body = https_get(f"{server}/api/v1/namespaces/default/serviceaccounts/default", pki)
    return status == 200 and bool(json.loads(body).get("secrets"))


def record(plane: ControlPlane, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    state = asdict(plane) | {"pids": {name: proc.pid for name, proc in procs.items()}}
    (Path(plane.state_dir) / "state.json").write_text(json.dumps(state, indent=2))


def owns(pid: int, name: str) -> bool:
    """True if `pid` still runs the binary we started (guards against a recycled pid)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(argv0).name == name


def down(state_dir: Path) -> None:
    """Stops this state dir's processes (controller-manager, apiserver, etcd) and removes it."""
    state_file = state_dir / "state.json"
    if state_file.exists():
        pids = json.loads(state_file.read_text())["pids"]
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            pid = pids.get(name)
            if pid and owns(pid, name):
                stop(pid, name)
    shutil.rmtree(state_dir, ignore_errors=True)


def stop(pid: int, name: str, grace_s: float = 10.0) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished == pid:
                return
        except ChildProcessError:  # not our child (started by an earlier `up` CLI call)
            if not owns(pid, name):
                return
        time.sleep(0.1)
    log(f"{name} (pid {pid}) ignored SIGTERM for {grace_s:.0f} s; killing it")
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


__all__ = ["BuildFailed", "ControlPlane", "ControlPlaneFailed", "down", "up"]
