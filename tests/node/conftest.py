"""The real-node tier: a real kubelet, kube-proxy and kube-scheduler on Docker, on the tests/cluster plane.

The session fixture `node` builds (first run on a machine only) and starts the node of
tests/node/node.py and tears it down by pid at the end, restoring the host. `images` builds the
images of images/ on a locally made Debian base (cached by content hash). The tier runs in
`make test`; it needs root (Docker and the other Debian packages it installs itself): where
the machine cannot run it, it is skipped with a banner, and KONTINUAL_E2E_REQUIRED=1 (set by
.ci/run) turns that skip into a failure.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from kubernetes import config

from tests.cluster import plane as cp
from tests.cluster.build import BuildFailed, ToolchainUnavailable, ensure_binaries
from tests.node import host
from tests.node.build import ensure_node_binaries
from tests.node.node import NODE_IP, POD_CIDR, down, up
from tests.node.workload import RealNode
from tests.support.netguard import ENV_ALLOW

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "continualmodels.kontinual.io.yaml"
TIMINGS: dict[str, float] = {}


def node_ranges() -> list[str]:
    """The node's private, on-machine ranges the test process talks to: Services, pods, the node IP."""
    ranges = [cp.SERVICE_CIDR, POD_CIDR, f"{NODE_IP}/32"]
    for text in ranges:  # never widen the egress guard beyond this machine's private ranges
        assert ipaddress.ip_network(text).is_private, f"{text} is not a private range"
    return ranges


@pytest.fixture(scope="session", autouse=True)
def node_traffic_allowed() -> Iterator[None]:
    """The egress guard lets the tier reach its ClusterIPs and pods (routed into the node's bridges,
    so not among this machine's own addresses); children started later inherit the variable."""
    previous = os.environ.get(ENV_ALLOW)
    os.environ[ENV_ALLOW] = ",".join(filter(None, [previous, *node_ranges()]))
    yield
    if previous is None:
        os.environ.pop(ENV_ALLOW, None)
    else:
        os.environ[ENV_ALLOW] = previous


def unavailable(reason: str) -> NoReturn:
    message = ("\n" + "!" * 78 + "\nREAL NODE UNAVAILABLE: the real-node tier (tests/node) is SKIPPED.\n"
               f"{reason}\n" + "!" * 78)
    if os.environ.get("KONTINUAL_E2E_REQUIRED") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def binaries(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    try:
        host.require_root()
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():  # cold builds take minutes: show progress live
            started = time.monotonic()
            host.ensure_packages()
            plane_bins = ensure_binaries()
            node_bins = ensure_node_binaries()
            TIMINGS["binaries (build or cache)"] = time.monotonic() - started
            return plane_bins, node_bins
    except (ToolchainUnavailable, host.NodeUnavailable) as error:
        unavailable(str(error))


@pytest.fixture(scope="session")
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    plane_bins, node_bins = binaries(request)
    state = tmp_path_factory.mktemp("node") / "state"
    started = time.monotonic()
    running = up(state, plane_bins, node_bins, [CRD_FILE], die_with_parent=True)
    TIMINGS["node up"] = time.monotonic() - started
    try:
        admin = config.new_client_from_config(config_file=running.kubeconfig)
        yield RealNode(running, admin, state)
    finally:
        kept = tmp_path_factory.getbasetemp() / "node-logs"
        try:
            shutil.copytree(state / "logs", kept, dirs_exist_ok=True)
            shutil.copytree(state / "plane" / "logs", kept / "plane", dirs_exist_ok=True)
        except OSError as error:  # e.g. a full disk: the host must still be given back below
            print(f"[node] could not keep the node's logs in {kept}: {error}", file=sys.stderr)
        packets = guard_packets()
        started = time.monotonic()
        down(state)
        TIMINGS["node down"] = time.monotonic() - started
        if packets:
            pytest.fail(f"the metadata guard refused {packets} packet(s): something on the node "
                        "tried to reach 169.254.0.0/16", pytrace=False)


def guard_packets() -> int:
    try:
        return host.guard_packets("OUTPUT", host.METADATA_CIDR)
    except BuildFailed:
        return 0


@pytest.fixture(scope="session")
def images(node: RealNode, request: pytest.FixtureRequest) -> dict[str, str]:
    """name -> tag of the three images (built from images/ unless cached); pods use them as is."""
    from tests.node.images import ensure_images

    capture = request.config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()
    with capture.global_and_fixture_disabled():
        tags = ensure_images()
    TIMINGS["images (build or cache)"] = time.monotonic() - started
    return tags


@pytest.fixture(scope="session")
def base_image(node: RealNode) -> str:
    from tests.node.images import ensure_base

    return ensure_base()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "real-node tier timings")
        for step, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {step}")

