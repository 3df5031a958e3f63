"""`kontinual train`: parse flags (each also an env var), run the pipeline, write the result last."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from kontinual.common.names import DEEPSPARSE_RUNTIME, ROBOFLOW_API_KEY_ENV, RUNTIMES, TERMINATION_LOG
from kontinual.common.contract import MODEL_ONNX, MODEL_QDQ_ONNX, TrainingResult
from kontinual.trainer.errors import (INVALID_ARGUMENTS, REASONS, TRAINING_FAILED, TrainingError,
                                       scrub)

_LOG = logging.getLogger("kontinual.trainer")
ENV_PREFIX = "KONTINUAL_"

DESCRIPTION = f"""\
Train a YOLOv5 model with a SparseML recipe, export it to ONNX for DeepSparse, evaluate it, and
store it as version N on the model claim.

Pipeline: fetch --base-weights and --recipe -> (with --generate-version, have Roboflow generate a
new version) -> download the Roboflow dataset version (or read --dataset-dir) -> validate it ->
train with the recipe -> export ONNX (input [1,3,S,S]) -> check it in onnxruntime and DeepSparse ->
a quantized run also exports model.qdq.onnx (INT8 as QuantizeLinear/DequantizeLinear, for OpenVINO and
onnxruntime) and checks it in onnxruntime against model.onnx -> evaluate mAP50 / mAP50-95 of the file
--runtime serves on the test split (valid if there is none), and the --baseline-model on the same
split -> write
<output-dir>/v<N>/{{model.onnx, [model.qdq.onnx,] model.pt, metrics.json, recipe.yaml, manifest.json,
result.json}} (built in
<output-dir>/.v<N>.tmp-<random>, renamed when complete) -> write the result JSON to --result-file.

Every flag --foo-bar can also be set by the environment variable {ENV_PREFIX}FOO_BAR (a flag wins).
The Roboflow API key is read only from the environment variable {ROBOFLOW_API_KEY_ENV}; the Roboflow API
base URL from the roboflow SDK's own API_URL environment variable (default https://api.roboflow.com);
the SparseZoo API base URL for zoo: sources from sparsezoo's SPARSEZOO_API_URL (default
https://api.neuralmagic.com; point it at a mirror in air-gapped clusters). --base-weights and
--recipe are fetched and read before the dataset download: a bad source fails the run first.

Exit status 0 and {{"status": "Succeeded", ...}} on success; otherwise exit status 1 and
{{"status": "Failed", "reason": R, "message": ...}} with R one of: {", ".join(REASONS)}.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise TrainingError(INVALID_ARGUMENTS, f"{message} (see `kontinual train --help`)")


def _parser() -> _Parser:
    from kontinual.trainer.recipes import DEFAULT_RECIPE, builtin_recipes

    p = _Parser(prog="kontinual train", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("dataset (Roboflow, or a local folder)")
    data.add_argument("--roboflow-workspace", metavar="WS", help="Roboflow workspace (URL name)")
    data.add_argument("--roboflow-project", metavar="PROJECT", help="Roboflow project (URL name)")
    data.add_argument("--dataset-version", default="latest", metavar="latest|N",
                      help="Roboflow dataset version to train on (default: latest)")
    data.add_argument("--download-timeout", type=float, default=1800.0, metavar="SECONDS",
                      help="the whole Roboflow download (versions, export, zip) must finish within this "
                           "(default: 1800)")
    data.add_argument("--dataset-dir", type=Path, metavar="DIR",
                      help="a local YOLOv5-format dataset (data.yaml + train|valid|test/{images,labels}) "
                           "instead of Roboflow")
    data.add_argument("--generate-version", metavar="SETTINGS_JSON",
                      help="with --dataset-version latest: first ask Roboflow to generate a new version with "
                           "these settings ({\"preprocessing\": {...}, \"augmentation\": {...}}, Roboflow's keys) "
                           "and train on it")
    data.add_argument("--generate-timeout", type=float, default=900, metavar="SECONDS",
                      help="how long to wait for Roboflow to generate the version (default: 900)")
    data.add_argument("--labeled-at-last-run", type=int, metavar="N",
                      help="with --generate-version: generate only if the project has more than N annotated images")
    gate = p.add_argument_group("baseline (the serving model, evaluated on the same split)")
    gate.add_argument("--baseline-model", metavar="ONNX|zoo:STUB",
                      help="the serving model's model.onnx (or its zoo: stub), evaluated by the same code on the "
                           "candidate's evaluation split; the result's baseline reports it or why it could not be")
    gate.add_argument("--baseline-version", type=int, default=0, metavar="M",
                      help="the serving model's version (0: the seed model; default: 0)")
    gate.add_argument("--baseline-class-names", metavar="JSON|coco",
                      help="the serving model's class names as a JSON list, or coco; a model of other classes "
                           "than the dataset's is not evaluated (the result says so)")
    gate.add_argument("--runtime", default=DEEPSPARSE_RUNTIME, choices=RUNTIMES,
                      help="the spec.serving.runtime that will serve the version: the candidate is evaluated as "
                           f"the file it serves ({MODEL_ONNX} for deepsparse; for openvino and onnxruntime a "
                           f"quantized run's {MODEL_QDQ_ONNX}, written by every quantized run) "
                           f"(default: {DEEPSPARSE_RUNTIME})")
    model = p.add_argument_group("model")
    model.add_argument("--base-weights", metavar="SOURCE",
                       help="where training starts (required): zoo:<stub>[?recipe_type=transfer_learn] (a "
                            "SparseZoo model's PyTorch training checkpoint, its sparsity and QAT structure kept); "
                            "a YOLOv5 checkpoint *.pt as YOLOv5's train.py or SparseML's yolov5 integration save "
                            "it (pickled model or state dict, any class count: the detection head is rebuilt for "
                            "the dataset's classes, the rest transferred); a model.pt of an earlier "
                            "`kontinual train` run (same classes) - each a path, file:// or http(s):// URL; or a "
                            "yolov5 model config (yolov5n/s/m/l/x.yaml or a path) for random init")
    model.add_argument("--recipe", default=DEFAULT_RECIPE, metavar="SOURCE",
                       help=f"SparseML recipe: a built-in one ({', '.join(builtin_recipes())}), a YAML file or "
                            "Markdown recipe card, an http(s):// URL, or zoo:<stub>?recipe_type=<type> (e.g. "
                            f"transfer_learn: the stub's sparse transfer recipe) (default: {DEFAULT_RECIPE}); "
                            "--epochs sets its num_epochs")
    model.add_argument("--epochs", type=int, default=50, help="training epochs (default: 50)")
    model.add_argument("--image-size", type=int, default=640, metavar="PX",
                       help="square input size, a multiple of 32 (default: 640)")
    model.add_argument("--batch-size", type=int, default=16, help="training batch size (default: 16)")
    model.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="auto: cuda when torch sees a GPU, else cpu (default: auto)")
    model.add_argument("--workers", type=int, default=2, help="data loader worker processes (default: 2)")
    model.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    out = p.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, metavar="CLAIM_ROOT",
                     help="root of the model claim, e.g. /models: the run writes <output-dir>/v<N>/ and "
                          "the result's onnx is v<N>/model.onnx relative to it (required)")
    out.add_argument("--version", type=int, metavar="N", help="the model version this run creates (required)")
    out.add_argument("--result-file", type=Path, default=Path(TERMINATION_LOG),
                     help="where the result JSON goes, last (default: " + TERMINATION_LOG + ")")
    out.add_argument("--work-dir", type=Path, metavar="DIR",
                     help="scratch space for the download (default: a temp folder, removed at the end)")
    return p


def _env_defaults(parser: argparse.ArgumentParser) -> None:
    """KONTINUAL_FOO_BAR sets --foo-bar's default (a flag given on the command line wins)."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if not action.option_strings or action.dest == "help":
            continue
        value = os.environ.get(ENV_PREFIX + action.dest.upper())
        if value is not None and value != "":
            try:
                action.default = action.type(value) if callable(action.type) else value
            except (TypeError, ValueError) as exc:
                raise TrainingError(INVALID_ARGUMENTS, f"{ENV_PREFIX}{action.dest.upper()}={value!r}: {exc}") from exc


def _missing(args: argparse.Namespace) -> list[str]:
    """The required flags that are not there."""
    problems = []
    if args.output_dir is None:
        problems.append("--output-dir is required (the model claim root, e.g. /models)")
    if args.version is None or args.version < 1:
        problems.append("--version N (N >= 1) is required")
    if not args.base_weights:
        problems.append("--base-weights is required: zoo:<stub>, a YOLOv5 or Kontinual *.pt, or a yolov5 model "
                        "config such as yolov5s.yaml for random init")
    if args.dataset_dir is None and not (args.roboflow_workspace and args.roboflow_project):
        problems.append("give --dataset-dir, or --roboflow-workspace and --roboflow-project")
    return problems


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = _parser()
    _env_defaults(parser)
    args = parser.parse_args(argv)
    problems = _missing(args)
    if args.dataset_version != "latest" and not args.dataset_version.isdigit():
        problems.append(f"--dataset-version must be 'latest' or a number, got {args.dataset_version!r}")
    if args.device not in ("auto", "cpu", "cuda"):  # argparse does not check defaults from the environment
        problems.append(f"--device must be auto, cpu or cuda, got {args.device!r}")
    if args.runtime not in RUNTIMES:
        problems.append(f"--runtime must be one of {', '.join(RUNTIMES)}, got {args.runtime!r}")
    if args.generate_version is not None:
        try:
            settings = json.loads(args.generate_version)
        except json.JSONDecodeError as exc:
            settings = None
            problems.append(f"--generate-version must be a JSON object: {exc}")
        if settings is not None and not (isinstance(settings, dict) and
                                         {"preprocessing", "augmentation"} <= set(settings)):
            problems.append("--generate-version must be a JSON object with preprocessing and augmentation "
                            "(each may be {})")
        if args.dataset_dir is not None or args.dataset_version != "latest":
            problems.append("--generate-version needs Roboflow and --dataset-version latest")
    if args.generate_timeout <= 0 or args.baseline_version < 0:
        problems.append("--generate-timeout must be > 0 and --baseline-version >= 0")
    if args.download_timeout <= 0:
        problems.append("--download-timeout must be > 0 seconds")
    if args.epochs < 1:
        problems.append("--epochs must be >= 1")
    if args.image_size < 32 or args.image_size % 32:
        problems.append(f"--image-size must be a multiple of 32 (>= 32), got {args.image_size}")
    if args.batch_size < 1 or args.workers < 0:
        problems.append("--batch-size must be >= 1 and --workers >= 0")
    if problems:
        raise TrainingError(INVALID_ARGUMENTS, "; ".join(problems))
    return args


class _ScrubKey(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        key = os.environ.get(ROBOFLOW_API_KEY_ENV)
        if key:
            message = record.getMessage()
            if key in message:
                record.msg, record.args = scrub(message, key), None
        return True


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ScrubKey())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # Before torch/tqdm/yolov5 are imported: plain logs, no phoning home, writable config dirs.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if not os.environ.get("YOLOV5_CONFIG_DIR"):
        config = tempfile.mkdtemp(prefix="kontinual-yolo-")
        os.environ["YOLOV5_CONFIG_DIR"] = config
        os.environ.setdefault("YOLO_CONFIG_DIR", config)


def _where_to_report(argv: list[str]) -> tuple[Path, int | None]:
    """--result-file and --version read leniently first, so that bad flags are still reported there."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--result-file", default=os.environ.get(ENV_PREFIX + "RESULT_FILE") or TERMINATION_LOG)
    pre.add_argument("--version", default=os.environ.get(ENV_PREFIX + "VERSION"))
    try:
        known, _ = pre.parse_known_args(argv)
    except SystemExit:
        return Path(TERMINATION_LOG), None
    version = int(known.version) if str(known.version or "").isdigit() else None
    return Path(known.result_file), version


class Terminated(BaseException):
    """SIGTERM in the trainer's own process. A BaseException, as KeyboardInterrupt is, so that no library's
    `except Exception` (yolov5 has many) can swallow it and leave the pod running until SIGKILL."""


def install_sigterm_handler() -> None:
    """Kubernetes stops a pod with SIGTERM: the trainer still writes a Failed result. Processes forked from
    it (yolov5's label-cache Pool, DataLoader workers) inherit the handler, and there it must die as the
    default action would: raising in a pool worker can leave it looping, and the trainer then waits in
    `Pool.terminate()` forever (seen on the real node: a Job hung after 'step: evaluate')."""
    trainer = os.getpid()

    def on_sigterm(signum: int, _frame: object) -> None:
        if os.getpid() != trainer:
            os._exit(128 + signum)
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: list[str]) -> int:
    _setup_logging()
    result_file, version = _where_to_report(argv)
    install_sigterm_handler()
    try:
        args = _parse(argv)
        result_file, version = args.result_file, args.version
        from kontinual.trainer.pipeline import run

        result = run(args)
        code = 0
    except TrainingError as exc:
        result, code = TrainingResult.failed(exc.reason, scrub(exc.message), version=version), 1
    except Terminated:
        result = TrainingResult.failed(TRAINING_FAILED, "terminated (SIGTERM): the Job's activeDeadlineSeconds "
                                       "passed, or the Job or its pod was deleted", version=version)
        code = 128 + signal.SIGTERM
    except KeyboardInterrupt:
        result, code = TrainingResult.failed(TRAINING_FAILED, "interrupted", version=version), 130
    except Exception as exc:  # noqa: BLE001 - any surprise still ends with a Failed result
        _LOG.exception("unexpected error")
        result = TrainingResult.failed(TRAINING_FAILED, scrub(f"unexpected {type(exc).__name__}: {exc}"),
                                       version=version)
        code = 1
    if code:
        _LOG.error("training failed: %s: %s", result.reason, result.message)
    from kontinual.trainer.artifacts import write_result

    write_result(result_file, result)
    return code
