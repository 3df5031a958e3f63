"""The end-to-end tier: a real control plane (tests/cluster) and `kontinual operator` with the chart's RBAC.

The session fixture `cluster` builds (first run on a machine only) and starts etcd,
kube-apiserver and kube-controller-manager on 127.0.0.1, installing crds/ before the controller
manager starts (its garbage collector learns about a CRD installed later only at its next 30 s
discovery pass, which would delay garbage collection of our children). The module fixture
`operator` renders the Helm chart's ServiceAccount and RBAC and runs `kontinual operator` as a
separate process authenticated with that ServiceAccount's token, so a rule missing from the
chart fails the test (`kontinual` fixture). A test module that sets `WATCH_NAMESPACES = [...]`
gets the chart's namespaced mode (`watchNamespaces`, a Role per namespace) and
`kontinual operator --namespace ...`; others get the cluster-wide default. `OPERATOR_ENV = {...}`
adds environment variables to the operator process (e.g. a short Roboflow poll interval).
The tier is skipped, loudly, only when the control plane cannot be built on this machine;
KONTINUAL_E2E_REQUIRED=1 turns that skip into a failure.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from kubernetes import config
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.build import ToolchainUnavailable, ensure_binaries
from tests.cluster.plane import (ControlPlane, ControlPlaneFailed, down, exit_with_parent, free_port,
                                 kubeconfig_text, up)
from tests.e2e.kube import Cluster, apply_manifests, ensure_namespace, wait_for
from tests.support.tools import helm_binary

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "continualmodels.kontinual.io.yaml"
CHART = ROOT / "helm" / "kontinual"
OPERATOR_NAMESPACE = "kontinual-system"
RELEASE = "kontinual"
PERMISSION_ERRORS = ("Forbidden", "forbidden", " 403 ")
TIMINGS: dict[str, float] = {}


def unavailable(reason: str) -> NoReturn:
    message = ("\n" + "!" * 78 + "\nREAL CONTROL PLANE UNAVAILABLE: the end-to-end tier is SKIPPED.\n"
               f"{reason}\n" + "!" * 78)
    if os.environ.get("KONTINUAL_E2E_REQUIRED") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = time.monotonic()
    capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled():  # a cold build takes minutes: show its progress live
            bin_dir = ensure_binaries()
    except ToolchainUnavailable as error:
        unavailable(str(error))
    TIMINGS["binaries (build or cache)"] = time.monotonic() - started
    started = time.monotonic()
    state, plane = start_control_plane(tmp_path_factory, bin_dir)
    TIMINGS["control plane up"] = time.monotonic() - started
    try:
        admin = config.new_client_from_config(config_file=plane.kubeconfig)
        handle = Cluster(Path(plane.kubeconfig), plane.server, state / "pki" / "ca.crt", admin, state / "logs")
        yield handle
    finally:
        kept = tmp_path_factory.getbasetemp() / "control-plane-logs"
        try:
            shutil.copytree(state / "logs", kept, dirs_exist_ok=True)
        except OSError as error:  # e.g. a full disk: the control plane must still be stopped below
            print(f"[controlplane] could not keep its logs in {kept}: {error}", file=sys.stderr)
        down(state)


def start_control_plane(tmp_path_factory: pytest.TempPathFactory, bin_dir: Path) -> tuple[Path, ControlPlane]:
    """`up`, once more if a port it picked was taken by someone else in the meantime."""
    for attempt in (1, 2):
        state = tmp_path_factory.mktemp("control-plane")
        try:
            return state, up(state, bin_dir, crds=[CRD_FILE], die_with_parent=True)
        except ControlPlaneFailed as error:
            if attempt == 2 or "address already in use" not in str(error):
                raise
    raise AssertionError("unreachable")


def render_chart_access(release: str, watch_namespaces: list[str]) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC, exactly as `helm install` would create them."""
    scope = ["--set", f"watchNamespaces={{{','.join(watch_namespaces)}}}"] if watch_namespaces else []
    out = subprocess.run(
        [str(helm_binary()), "template", release, str(CHART), "--namespace", OPERATOR_NAMESPACE, *scope,
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass
class Operator:
    """The `kontinual operator` process and its log."""

    process: subprocess.Popen[bytes]
    log: Path
    service_account: str
    health_port: int = 0
    metrics_port: int = 0

    def log_text(self, offset: int = 0) -> str:
        return self.log.read_text(errors="replace")[offset:]

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """One scrape of `GET /metrics`: (sample name, its labels) -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def chart_access(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, watched: list[str]) -> tuple[Path, str]:
    """Apply the chart's ServiceAccount and RBAC; a kubeconfig with that account's token, and its name."""
    release = f"{RELEASE}-scoped" if watched else RELEASE
    for namespace in [OPERATOR_NAMESPACE, *watched]:
        ensure_namespace(cluster, namespace)
    manifests = render_chart_access(release, watched)
    apply_manifests(cluster.admin, manifests)
    account = next(m for m in manifests if m["kind"] == "ServiceAccount")["metadata"]["name"]
    token = service_account_token(cluster, account)
    workdir = tmp_path_factory.mktemp(f"operator-{release}")
    kubeconfig = workdir / "operator.kubeconfig"
    kubeconfig.write_text(kubeconfig_text(cluster.server, cluster.ca_file, {"token": token},
                                          f"system:serviceaccount:{OPERATOR_NAMESPACE}:{account}"))
    return kubeconfig, account


def launch_operator(kubeconfig: Path, account: str, workdir: Path, watched: list[str],
                    extra_env: dict[str, str]) -> Operator:
    """Start `kontinual operator` (not waiting for it) with the e2e defaults plus `extra_env`; its log in workdir."""
    health, metrics = free_port(), free_port()  # never fixed ports: several operators may run on this machine
    log_path = workdir / "operator.log"
    console = Path(sys.executable).parent / "kontinual"
    command = [str(console)] if console.exists() else [sys.executable, "-m", "kontinual"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KONTINUAL_LOG_LEVEL": "INFO",
           "KONTINUAL_SERVER_IMAGE": "kontinual/server:e2e", "KONTINUAL_TRAINER_IMAGE": "kontinual/trainer:e2e",
           # Every reaction these tests wait for must come from a watch event, not the periodic repair.
           "KONTINUAL_RESYNC_SECONDS": "3600", "KONTINUAL_HEALTH_HOST": "127.0.0.1",
           "KONTINUAL_METRICS_PORT": str(metrics), **extra_env}
    with open(log_path, "wb") as log_file:
        scope = [arg for namespace in watched for arg in ("--namespace", namespace)] or ["--all-namespaces"]
        process = subprocess.Popen([*command, "operator", *scope, "--health-port", str(health)],
                                   env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir,
                                   preexec_fn=exit_with_parent)
    return Operator(process, log_path, account, health, metrics)


@pytest.fixture(scope="module")
def operator(request: pytest.FixtureRequest, cluster: Cluster,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    watched: list[str] = list(getattr(request.module, "WATCH_NAMESPACES", []))
    kubeconfig, account = chart_access(cluster, tmp_path_factory, watched)
    started = time.monotonic()
    # OPERATOR_ENV: a module's own knobs, e.g. poll intervals.
    handle = launch_operator(kubeconfig, account, kubeconfig.parent, watched, getattr(request.module, "OPERATOR_ENV", {}))
    try:
        wait_for("the operator's liveness endpoint", lambda: operator_alive(handle, handle.health_port), timeout=60,
                 diagnose=lambda: handle.log_text()[-3000:])
        scope = " ".join(f"--namespace {n}" for n in watched) or "--all-namespaces"
        TIMINGS[f"operator ({scope}) started"] = time.monotonic() - started
        yield handle
    finally:
        stop_process(handle.process)
        shutil.copy(handle.log, tmp_path_factory.getbasetemp() / f"operator-{request.module.__name__}.log")


def operator_alive(handle: Operator, port: int) -> bool:
    if handle.process.poll() is not None:
        raise AssertionError(f"`kontinual operator` exited with {handle.process.returncode}:\n"
                             f"{handle.log_text()[-3000:]}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def service_account_token(cluster: Cluster, account: str, namespace: str = OPERATOR_NAMESPACE) -> str:
    """The token Secret the real token controller creates for the ServiceAccount (Kubernetes 1.20)."""
    secret_name = wait_for(f"a token Secret for ServiceAccount {account}", lambda: next(
        (ref.name for ref in cluster.core.read_namespaced_service_account(account, namespace).secrets or []
         if ref.name.startswith(f"{account}-token-")), None))
    secret = cluster.core.read_namespaced_secret(secret_name, namespace)
    return base64.b64decode(secret.data["token"]).decode()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def kontinual(operator: Operator) -> Iterator[Operator]:
    """The running operator; fails the test if it hit a permission error (an RBAC rule the chart lacks)
    or a handler raised an unexpected exception (kopf would log it and retry, hiding the bug)."""
    offset = len(operator.log_text())
    yield operator
    denied = [line for line in operator.log_text(offset).splitlines()
              if any(marker in line for marker in PERMISSION_ERRORS)]
    if denied:
        pytest.fail("the operator, running with the chart's ServiceAccount, was denied access:\n"
                    + "\n".join(denied[:20]), pytrace=False)
    crashed = operator.log_text(offset)
    if "Traceback (most recent call last)" in crashed:
        start = crashed.index("Traceback (most recent call last)")
        excerpt = crashed[max(0, start - 300):start + 3000]
        pytest.fail(f"a handler of the operator raised an unexpected exception:\n{excerpt}", pytrace=False)
    if operator.process.poll() is not None:
        pytest.fail(f"the operator exited with {operator.process.returncode}:\n{operator.log_text()[-3000:]}",
                    pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "real control plane (tests/e2e)")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")
