"""Benchmark (not a test): what each built-in recipe costs in accuracy, on the synthetic soccer set.

Three real `kontinual train` runs from the same random initialisation, the same data and seed: dense
(no pruning, no quantization), the default `prune-quantize` (every conv 80 %, INT8) and
`prune-quantize-aggressive` (3x3 convs 95 %, the rest 90 %, first conv and head dense, INT8). Each
recipe gets the learning-rate schedule random weights need (tests/support/loop_runs.py). Prints
each run's mAP50 / mAP50-95 on the test split (evaluated on the exported model.onnx in DeepSparse, as
the gate sees it), its conv sparsity and seconds. The model is the training tier's tiny YOLOv5 (1/8
of yolov5n's width) unless --model names yolov5n/s: a small model has fewer spare weights, so its
cost is an upper bound for the same recipe on a larger one.
Usage: `.venv/bin/python benchmarks/recipe_cost.py [--epochs 70] [--model tiny]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.two_runs import tiny_config  # noqa: E402
from tests.support.loop_runs import RECIPE as DENSE_RECIPE  # noqa: E402
from tests.support.synthetic import make_dataset  # noqa: E402

KONTINUAL = Path(sys.executable).with_name("kontinual")
# The dense recipe's learning-rate modifier, added to each built-in recipe's training modifiers.
LR_MODIFIER = DENSE_RECIPE[DENSE_RECIPE.index("  - !LearningRateFunctionModifier"):]


def model_config(folder: Path, model: str) -> Path:
    """The tiny model's config (two_runs.py's), or yolov5n/s's own from the yolov5 package."""
    if model == "tiny":
        return tiny_config(folder)
    import yolov5

    return Path(yolov5.__file__).parent / "models" / f"{model}.yaml"


def with_learning_rate(recipe: str) -> str:
    marker = "training_modifiers:\n"
    assert marker in recipe, "a built-in recipe without training_modifiers"
    head, tail = recipe.split(marker, 1)
    return head + marker + LR_MODIFIER + tail


def train(work: Path, name: str, recipe: str, config: Path, dataset: Path, args: argparse.Namespace) -> dict:
    (work / f"{name}.yaml").write_text(recipe)
    result_file = work / f"{name}.json"
    command = [str(KONTINUAL), "train", "--dataset-dir", str(dataset), "--output-dir", str(work / name),
               "--version", "1", "--base-weights", str(config), "--recipe", str(work / f"{name}.yaml"),
               "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--batch-size", "8",
               "--workers", "0", "--device", "cpu", "--seed", "0", "--result-file", str(result_file)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True,
                          env=dict(os.environ, NM_DISABLE_ANALYTICS="1", TQDM_DISABLE="1"))
    if done.returncode != 0 or not result_file.is_file():
        sys.exit(f"kontinual train ({name}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(result_file.read_text())
    return {"recipe": name, "mAP50": result["metrics"]["mAP50"], "mAP50_95": result["metrics"]["mAP50_95"],
            "sparsity": result.get("sparsity"), "quantized": result.get("qdqOnnx") is not None,
            "seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=70)
    parser.add_argument("--images", type=int, default=48, help="training images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--model", default="tiny", choices=("tiny", "yolov5n", "yolov5s"))
    args = parser.parse_args()
    from kontinual.trainer.recipes import RECIPES_DIR

    with tempfile.TemporaryDirectory(prefix="kontinual-recipe-cost-") as tmp:
        work = Path(tmp)
        dataset = make_dataset(work / "data", n_train=args.images, n_valid=24, n_test=24, size=args.image_size,
                               seed=11)
        config = model_config(work, args.model)
        rows = [train(work, "dense", DENSE_RECIPE, config, dataset, args)]
        for name in ("prune-quantize", "prune-quantize-aggressive"):
            recipe = with_learning_rate((RECIPES_DIR / f"{name}.yaml").read_text())
            rows.append(train(work, name, recipe, config, dataset, args))
    print(json.dumps({"model": args.model, "epochs": args.epochs, "imageSize": args.image_size,
                      "trainImages": args.images, "runs": rows}, indent=2))
    print()
    print("| recipe | conv sparsity | INT8 | mAP50 | mAP50-95 | seconds |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        sparsity = f"{row['sparsity']:.3f}" if row["sparsity"] is not None else "-"
        print(f"| {row['recipe']} | {sparsity} | {'yes' if row['quantized'] else 'no'} | {row['mAP50']:.4f} "
              f"| {row['mAP50_95']:.4f} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
