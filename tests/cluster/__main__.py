"""Command line for the test control plane: `python -m tests.cluster build | up DIR | down DIR`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.cluster.build import BuildFailed, ToolchainUnavailable, ensure_binaries, log
from tests.cluster.plane import ControlPlaneFailed, down, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/cluster/controlplane.sh", description=(
        "A real single-node Kubernetes control plane on 127.0.0.1 for Kontinual's tests."))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build (or find cached) kube-apiserver, "
                        "kube-controller-manager and etcd under ~/.cache/kontinual")
    start = commands.add_parser("up", help="build if needed, start everything, write DIR/admin.kubeconfig")
    start.add_argument("dir", type=Path)
    start.add_argument("--crd", type=Path, action="append", default=[], metavar="FILE",
                       help="install this CRD YAML before the controller manager starts (repeatable)")
    stop = commands.add_parser("down", help="stop what `up DIR` started and remove DIR")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        if args.command == "build":
            print(ensure_binaries())
        elif args.command == "up":
            plane = up(args.dir.resolve(), ensure_binaries(), [f.resolve() for f in args.crd])
            print(f"export KUBECONFIG={plane.kubeconfig}")
        else:
            down(args.dir.resolve())
            log(f"stopped and removed {args.dir}")
    except ToolchainUnavailable as error:
        log(f"cannot build the control plane on this machine: {error}")
        return 2
    except (BuildFailed, ControlPlaneFailed) as error:
        log(f"FAILED: {error}")
        return 1
    log(f"`{args.command}` took {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
