"""The `kontinual` command line: `operator`, `render` and `train`, each importing only its own wing."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kontinual", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{operator,render,train}")

    op = sub.add_parser("operator", help="run the operator against the current kubeconfig (in-cluster config in a pod)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable); default: KONTINUAL_WATCH_NAMESPACES, else all")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    op.add_argument("--health-port", type=int, default=None,
                    help="liveness endpoint port (GET /healthz); default: KONTINUAL_HEALTH_PORT or 8080")
    op.add_argument("--metrics-port", type=int, default=None,
                    help="Prometheus metrics port (GET /metrics), 0 for none; default: KONTINUAL_METRICS_PORT or 9102")

    render = sub.add_parser("render", help="print the children the operator would create for a ContinualModel")
    render.add_argument("-f", "--filename", required=True, help="the ContinualModel YAML ('-' for stdin)")
    render.add_argument("--training-job", action="store_true", help="also print the Job the next training run would create")

    sub.add_parser("train", help="the trainer (entrypoint of the trainer image); see `kontinual train --help`",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from kontinual.trainer.cli import main as train_main  # torch is imported only here

        return train_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "render":
        from kontinual.controller.render import main as render_main

        return render_main(args.filename, training_job=args.training_job)
    from kontinual.controller.handlers import run_operator

    return run_operator(namespaces=args.namespace, all_namespaces=args.all_namespaces, health_port=args.health_port,
                        metrics_port=args.metrics_port)


if __name__ == "__main__":
    sys.exit(main())
