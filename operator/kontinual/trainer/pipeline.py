"""The training run, step by step: sources -> dataset -> model and recipe -> train -> export and check (and
a quantized model's QDQ export) -> evaluate the file the runtime serves -> artifacts -> result."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from kontinual.common.contract import (MODEL_CHECKPOINT, MODEL_ONNX, MODEL_QDQ_ONNX, RESULT_FILE, SUCCEEDED,
                                      TrainingResult, served_file, version_file)
from kontinual.common.names import RUNTIMES
from kontinual.trainer.errors import INVALID_ARGUMENTS, TrainingError

if TYPE_CHECKING:
    import torch

_LOG = logging.getLogger("kontinual.trainer")


@contextmanager
def _step(name: str, timings: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    _LOG.info("step: %s", name)
    yield
    timings[name] = round(time.monotonic() - started, 2)


def _device(choice: str) -> torch.device:
    import torch

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError(INVALID_ARGUMENTS, "--device cuda, but torch sees no CUDA device (is the GPU "
                            "requested in the Job's resources, e.g. nvidia.com/gpu: 1?)")
    return torch.device(choice)


def run(args: argparse.Namespace) -> TrainingResult:
    """Run every step; raises TrainingError with a reason on failure, never leaves a complete-looking folder."""
    from kontinual.trainer import compat

    compat.apply_global_fixes()
    from kontinual.trainer import dataset as datasets
    from kontinual.trainer.artifacts import VersionFolder, manifest, write_json
    from kontinual.trainer.baseline import BaselineModel, evaluate_baseline, parse_class_names
    from kontinual.trainer.evaluate import evaluate_onnx
    from kontinual.trainer.export import check_onnx, check_qdq_onnx, export_onnx, export_qdq_onnx, onnx_conv_sparsity
    from kontinual.trainer.fit import TrainSettings, train
    from kontinual.trainer.model import build_model, conv_sparsity, is_quantized, read_base, save_checkpoint
    from kontinual.trainer.pictures import Evidence, write_pictures
    from kontinual.trainer.recipes import build_recipe, read_recipe

    timings: dict[str, float] = {}
    device = _device(args.device)
    work = Path(tempfile.mkdtemp(prefix="kontinual-train-", dir=args.work_dir))
    os.environ.setdefault("MPLCONFIGDIR", str(work / "matplotlib"))  # the container's HOME may be read-only
    folder = VersionFolder(args.output_dir, args.version)
    try:
        folder.create()  # first: a taken version fails before any download
        with _step("sources", timings):
            # Base weights and recipe before the dataset: a bad source fails in seconds, not after a download.
            recipe_text, recipe_source = read_recipe(args.recipe, work)
            base = read_base(args.base_weights, work)
        with _step("dataset", timings):
            version, generated = None, None
            if args.dataset_dir is not None:
                root = args.dataset_dir
            else:
                wanted = args.dataset_version
                if args.generate_version is not None:
                    number = datasets.generate(args.roboflow_workspace, args.roboflow_project,
                                               json.loads(args.generate_version), timeout=args.generate_timeout,
                                               labeled_at_last_run=args.labeled_at_last_run)
                    generated = number is not None
                    wanted = number or wanted
                root, version = datasets.download(args.roboflow_workspace, args.roboflow_project, wanted, work,
                                                  deadline=args.download_timeout)
            data = datasets.validate(root)
            data.version = version
        with _step("model", timings):
            from yolov5.utils.general import init_seeds

            init_seeds(args.seed)  # --seed covers the new detection head's random init too, not only training
            loaded = build_model(base, data.names)
            recipe = build_recipe(recipe_text, recipe_source, epochs=args.epochs,
                                  base_quantized=bool(loaded.quantization_recipe))
        settings = TrainSettings(image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs,
                                 workers=args.workers, device=device, seed=args.seed)
        with _step("train", timings):
            trained = train(loaded, recipe, data.split_images("train"), settings)
        model = loaded.model
        quantization_recipe = loaded.quantization_recipe or (recipe_text if is_quantized(model) else None)
        history = loaded.history + [{
            "version": args.version, "datasetVersion": data.version, "recipe": recipe_source,
            "epochs": args.epochs, "imageSize": args.image_size,
            "finishedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }]
        save_checkpoint(folder.file(MODEL_CHECKPOINT), model, quantization_recipe=quantization_recipe, history=history)
        folder.file("recipe.yaml").write_text(recipe_text)
        onnx_path = folder.file(MODEL_ONNX)
        with _step("export", timings):
            export_onnx(model, onnx_path, args.image_size)
            checks = check_onnx(onnx_path, args.image_size)
        qdq_checks: dict | None = None
        if checks["quantized_ops"]:  # OpenVINO and onnxruntime run INT8 fast only from QDQ
            with _step("export_qdq", timings):
                export_qdq_onnx(model, folder.file(MODEL_QDQ_ONNX), args.image_size)
                qdq_checks = check_qdq_onnx(folder.file(MODEL_QDQ_ONNX), args.image_size, onnx_path)
        # The gate's numbers are the served file's: the one spec.serving.runtime will run.
        served = served_file(args.runtime, qdq_checks is not None)
        served_path = folder.file(served)
        overall, per_layer = onnx_conv_sparsity(onnx_path)
        torch_overall, _ = conv_sparsity(model)
        _LOG.info("sparsity of conv weights: %.4f in the ONNX (%.4f in PyTorch)", overall, torch_overall)
        with _step("evaluate", timings):
            split = data.eval_split
            seen, seen_by_baseline = Evidence(), Evidence()
            metrics = evaluate_onnx(served_path, data.split_images(split), args.image_size, args.workers,
                                    len(data.names), seen)
            baseline: dict = {}
            if args.baseline_model:
                baseline = evaluate_baseline(
                    BaselineModel(args.baseline_model, args.baseline_version,
                                  parse_class_names(args.baseline_class_names)),
                    data.names, data.split_images(split), image_size=args.image_size,
                    evaluate=lambda path, size, nc: evaluate_onnx(path, data.split_images(split), size,
                                                                  args.workers, nc, seen_by_baseline))
        evaluated_on = {"split": split, "images": data.images[split], "datasetVersion": data.version,
                        "file": version_file(args.version, served), "runtime": args.runtime}
        write_json(folder.file("metrics.json"), {**metrics, "split": split, "images": data.images[split],
                                                 "imageSize": args.image_size, "baseline": baseline,
                                                 "evaluatedOn": evaluated_on})
        with _step("pictures", timings):
            pictures = write_pictures(folder.tmp, names=data.names, version=args.version, candidate=seen,
                                      baseline=seen_by_baseline if args.baseline_model else None,
                                      baseline_result=baseline, losses=trained["epoch_losses"], split=split)
        source = str(args.dataset_dir) if args.dataset_dir is not None else \
            f"roboflow:{args.roboflow_workspace}/{args.roboflow_project}"
        dataset_info = {"version": data.version, "source": source, "generated": generated,
                        "names": data.names, "images": data.images, "labeled": data.labeled}
        write_json(folder.file("manifest.json"), manifest(
            folder, dataset=dataset_info,
            sparsity={"overall": round(overall, 4), "layers": per_layer},
            timings=timings,
            extra={"recipe": recipe_source, "baseWeights": args.base_weights, "epochs": args.epochs,
                   "imageSize": args.image_size, "batchSize": args.batch_size, "device": str(device),
                   "quantized": bool(checks["quantized_ops"]), "onnx": checks, "qdqOnnx": qdq_checks,
                   # which file each spec.serving.runtime serves (and verifies by its sha256 in files)
                   "servedFiles": {runtime: served_file(runtime, qdq_checks is not None) for runtime in RUNTIMES},
                   "training": trained,
                   "pictures": pictures,
                   "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        from kontinual.trainer.artifacts import sha256

        digest = sha256(onnx_path)
        qdq = {"qdqOnnx": version_file(args.version, MODEL_QDQ_ONNX),
               "qdqSha256": sha256(folder.file(MODEL_QDQ_ONNX))} if qdq_checks is not None else {}
        result = TrainingResult(
            status=SUCCEEDED, version=args.version, onnx=version_file(args.version, MODEL_ONNX), sha256=digest, **qdq,
            metrics={"mAP50": metrics["mAP50"], "mAP50_95": metrics["mAP50_95"]}, sparsity=round(overall, 4),
            datasetVersion=data.version, images={k: v for k, v in data.images.items()},
            classNames=list(data.names), baseline=baseline, evaluatedOn=evaluated_on, datasetGenerated=generated,
        )
        # The same JSON as the termination message, inside the folder before the rename: a result that
        # survives its pod (the operator reads it from the claim when the pod or the Job is gone).
        folder.file(RESULT_FILE).write_text(result.to_json())
        final = folder.commit()
        _LOG.info("version %d complete in %s: mAP50 %.4f mAP50-95 %.4f sparsity %.3f%s", args.version, final,
                  metrics["mAP50"], metrics["mAP50_95"], overall, " INT8" if checks["quantized_ops"] else "")
        return result
    finally:
        folder.discard()
        shutil.rmtree(work, ignore_errors=True)
