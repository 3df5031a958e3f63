"""Benchmark (not a test): DeepSparse on pruned INT8 YOLOv5s vs onnxruntime on the dense fp32 one.

Every model comes from the real trainer (`kontinual train`, yolov5s.yaml, 640 px) on the synthetic
soccer dataset: a few steps are enough, since speed does not depend on accuracy. Sparse models: 90 %
on every conv (the recipe below) and the built-in `prune-quantize-aggressive` (3x3 convs 95 %, the
rest 90 %, first conv and head dense), both INT8. Prints items/s at batch 1 and 32 and the ratios.
Usage: `.venv/bin/python benchmarks/sparse_speedup.py [--seconds 20]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.speed import deepsparse_items_per_s, measure, with_batch  # noqa: E402
from tests.support.synthetic import make_dataset  # noqa: E402

SIZE = 640
KONTINUAL = Path(sys.executable).with_name("kontinual")

SPARSE_QUANT_RECIPE = """
version: 1.1.0
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.9
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
    leave_enabled: True
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 1.0
"""

DENSE_RECIPE = """
version: 1.1.0
num_epochs: 1
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
"""


def train(work: Path, dataset: Path, recipe_text: str, version: int, epochs: int) -> dict:
    recipe = work / f"recipe-{version}.yaml"
    recipe.write_text(recipe_text)
    result_file = work / f"result-{version}.json"
    command = [str(KONTINUAL), "train", "--dataset-dir", str(dataset), "--output-dir", str(work / "models"),
               "--version", str(version), "--base-weights", "yolov5s.yaml", "--recipe", str(recipe),
               "--epochs", str(epochs), "--image-size", str(SIZE), "--batch-size", "2", "--workers", "0",
               "--device", "cpu", "--result-file", str(result_file)]
    print(f"training v{version} ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    result = json.loads(result_file.read_text())
    if done.returncode != 0:
        sys.exit(f"kontinual train failed: {result}\n{done.stderr[-3000:]}")
    return result


def onnxruntime_items_per_s(onnx_path: Path, batch: int, seconds: float, work: Path) -> float:
    import onnxruntime

    path = with_batch(onnx_path, batch, work / f"dense-b{batch}.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: np.random.default_rng(0).random((batch, 3, SIZE, SIZE), dtype=np.float32)}
    return measure(lambda: session.run(None, feed), batch, seconds)


def trained_models(work: Path) -> list[dict]:
    """The results of the 90 % sparse INT8 (v1), dense fp32 (v2) and aggressive sparse INT8 (v3, the
    built-in recipe) runs in work, trained once and reused."""
    from kontinual.trainer.recipes import RECIPES_DIR

    aggressive = (RECIPES_DIR / "prune-quantize-aggressive.yaml").read_text()
    results = []
    for version, recipe, epochs in ((1, SPARSE_QUANT_RECIPE, 2), (2, DENSE_RECIPE, 1), (3, aggressive, 2)):
        saved = work / f"result-{version}.json"
        if (work / "models" / f"v{version}").is_dir() and saved.is_file():
            results.append(json.loads(saved.read_text()))
            continue
        dataset = work / "soccer"
        if not (dataset / "data.yaml").is_file():
            make_dataset(dataset, n_train=4, n_valid=2, n_test=2, size=SIZE)
        results.append(train(work, dataset, recipe, version, epochs))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate the two engines this many times; the best round counts")
    parser.add_argument("--work-dir", type=Path,
                        help="keep the trained models here and reuse them on the next run (default: temp)")
    args = parser.parse_args()
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kontinual-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sparse, dense, aggressive = trained_models(work)
        onnx_of = {name: work / "models" / r["onnx"] for name, r in
                   (("90 % sparse", sparse), ("dense", dense), ("aggressive", aggressive))}
        load_before = os.getloadavg()
        rows = []
        for batch in (1, 32):
            ds90 = ds_aggressive = ort = 0.0
            for _ in range(args.rounds):
                ds90 = max(ds90, deepsparse_items_per_s(onnx_of["90 % sparse"], batch, args.seconds))
                ds_aggressive = max(ds_aggressive, deepsparse_items_per_s(onnx_of["aggressive"], batch, args.seconds))
                ort = max(ort, onnxruntime_items_per_s(onnx_of["dense"], batch, args.seconds, work))
            rows.append((batch, ds90, ds_aggressive, ort))
        sizes = {name: path.stat().st_size / 1e6 for name, path in onnx_of.items()}
    import deepsparse
    import onnxruntime

    print()
    print(f"YOLOv5s {SIZE} px, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
          f"({platform.processor() or platform.machine()}), load average before {load_before[0]:.2f} "
          f"and after {os.getloadavg()[0]:.2f}; best of {args.rounds} rounds of {args.seconds:.0f} s")
    print(f"90 % sparse: {sparse['sparsity']:.3f} conv-weight sparsity + INT8 ({sizes['90 % sparse']:.1f} MB); "
          f"aggressive: {aggressive['sparsity']:.3f} + INT8 ({sizes['aggressive']:.1f} MB), both on DeepSparse "
          f"{deepsparse.__version__}; dense: fp32 ({sizes['dense']:.1f} MB) on onnxruntime {onnxruntime.__version__}")
    print()
    print("| batch | DeepSparse 90 % sparse INT8 | DeepSparse aggressive INT8 | onnxruntime dense fp32 "
          "| speedup 90 % | speedup aggressive |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for batch, ds90, ds_aggressive, ort in rows:
        print(f"| {batch} | {ds90:.1f} | {ds_aggressive:.1f} | {ort:.1f} | {ds90 / ort:.2f}x | {ds_aggressive / ort:.2f}x |")


if __name__ == "__main__":
    main()
