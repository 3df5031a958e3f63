"""Command line for the test node: `python -m tests.node build | images | up DIR | down DIR`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.cluster.build import BuildFailed, ToolchainUnavailable, ensure_binaries, log
from tests.cluster.plane import ControlPlaneFailed
from tests.node.build import ensure_node_binaries
from tests.node.host import NodeUnavailable, require_root
from tests.node.node import down, up

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.node", description=(
        "A real single-node Kubernetes 1.20 (control plane, kubelet with Docker, kube-proxy, "
        "kube-scheduler) on this machine, for Kontinual's tests. Needs root."))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build (or find cached) all binaries under ~/.cache/kontinual")
    commands.add_parser("images", help="build (or find cached) the images of images/ on a local Debian base")
    start = commands.add_parser("up", help="start everything, write DIR/plane/admin.kubeconfig")
    start.add_argument("dir", type=Path)
    start.add_argument("--no-crd", action="store_true", help="do not install crds/ first")
    stop = commands.add_parser("down", help="stop what `up DIR` started, restore the host, remove DIR")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        if args.command == "build":
            print(ensure_binaries())
            print(ensure_node_binaries())
        elif args.command == "images":
            require_root()
            from tests.node.images import ensure_images  # noqa: PLC0415 (needs Docker only here)
            from tests.node.host import start_dockerd
            start_dockerd(Path("/tmp"))
            for name, tag in ensure_images().items():
                print(f"{name}\t{tag}")
        elif args.command == "up":
            crds = [] if args.no_crd else sorted((ROOT / "crds").glob("*.yaml"))
            node = up(args.dir.resolve(), ensure_binaries(), ensure_node_binaries(), crds)
            print(f"export KUBECONFIG={node.kubeconfig}")
        else:
            down(args.dir.resolve())
            log(f"stopped, restored the host and removed {args.dir}")
    except (ToolchainUnavailable, NodeUnavailable) as error:
        log(f"cannot run a node on this machine: {error}")
        return 2
    except (BuildFailed, ControlPlaneFailed) as error:
        log(f"FAILED: {error}")
        return 1
    log(f"`{args.command}` took {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
