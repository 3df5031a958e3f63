"""Benchmark (not a test): how fast DeepSparse runs YOLOv5s at each sparsity of the aggressive recipe.

Speed depends on where the zeros are, not on what the weights learned, so no training: a random
yolov5s.yaml model (640 px) gets the built-in `prune-quantize-aggressive` recipe applied at its end
state (SparseML's magnitude pruning to each target, INT8 QAT structure, observers fed three random
batches) and is exported as the trainer exports model.onnx. Each target pair (3x3 convs / other
convs) runs on DeepSparse at batch 1 and 32, with and without NM_FAST_VNNI_EMULATION=1 (DeepSparse's
faster, less exact INT8 emulation on CPUs without VNNI; Kontinual does not set it), beside the
Apache-licensed engines Kontinual ships (.venv-runtime: onnxruntime and OpenVINO, as runtimes.py runs
them) on the same model exported dense fp32, measured before and after the sparse ones (the faster
of the two counts: the ratios err against DeepSparse on a machine whose speed drifts). Prints
items/s and the ratios against onnxruntime's and the best Apache engine's dense figure.
Where the time goes, layer by layer: `deepsparse.debug_analysis WORK/sparse-0.95-0.9.onnx -b 1 -n 20`.
Usage: `.venv/bin/python benchmarks/sparsity_ceiling.py [--targets 0.95/0.9,0.97/0.95] [--seconds 20]
[--work-dir DIR]`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.runtimes import items_per_s  # noqa: E402
from benchmarks.sparse_speedup import SIZE  # noqa: E402

RECIPE = "prune-quantize-aggressive"
FAST_VNNI = "NM_FAST_VNNI_EMULATION"
APACHE = ("onnxruntime", "OpenVINO")


def export(path: Path, targets: tuple[float, float] | None) -> float:
    """Write the model with the recipe applied at `targets` (None: dense fp32); its conv sparsity."""
    import torch
    import yaml
    from sparseml.pytorch.optim import ScheduledModifierManager
    from sparseml.pytorch.sparsification.quantization import QuantizationModifier

    from kontinual.trainer import compat
    from kontinual.trainer.export import export_onnx, onnx_conv_sparsity
    from kontinual.trainer.model import _build, _config_path
    from kontinual.trainer.recipes import RECIPES_DIR, _ignore_lists, sparseml_loggers

    compat.apply_global_fixes()
    torch.manual_seed(0)
    model = _build(yaml.safe_load(_config_path("yolov5s.yaml").read_text()), 4, ["a", "b", "c", "d"])
    if targets is not None:
        routing = compat.record_routing(model)
        manager = ScheduledModifierManager.from_yaml(
            (RECIPES_DIR / f"{RECIPE}.yaml").read_text(),
            recipe_variables={"heavy_sparsity": targets[0], "light_sparsity": targets[1]})
        _ignore_lists([m for m in manager.iter_modifiers() if isinstance(m, QuantizationModifier)])
        manager.apply(model, epoch=math.inf, loggers=sparseml_loggers(), finalize=False)
        compat.restore_routing(model, routing)
        model.train()
        with torch.no_grad():
            for _ in range(3):  # the QAT observers' ranges
                model(torch.rand(2, 3, SIZE, SIZE))
        manager.finalize(model)
    export_onnx(model.eval(), path, SIZE)
    return onnx_conv_sparsity(path)[0]


def deepsparse_apart(model: Path, batch: int, seconds: float, fast_vnni: bool) -> float:
    """items/s in a fresh process: DeepSparse reads NM_FAST_VNNI_EMULATION when it loads."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "operator"), NM_DISABLE_ANALYTICS="1")
    env.pop(FAST_VNNI, None)
    if fast_vnni:
        env[FAST_VNNI] = "1"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.speed import "
            "deepsparse_items_per_s as f; from pathlib import Path; "
            "print(f(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), str(model), str(batch), str(seconds)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"DeepSparse failed on {model.name} at batch {batch}:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.95/0.9,0.97/0.95",
                        help="comma-separated 3x3/other conv sparsity pairs (the recipe's own: 0.95/0.9)")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    parser.add_argument("--work-dir", type=Path, help="keep the exported models here (default: temp)")
    args = parser.parse_args()
    pairs = [tuple(float(x) for x in pair.split("/")) for pair in args.targets.split(",")]
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    with tempfile.TemporaryDirectory(prefix="kontinual-ceiling-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dense = work / "dense.onnx"
        export(dense, None)
        sparsity = {pair: export(work / f"sparse-{pair[0]}-{pair[1]}.onnx", pair) for pair in pairs}
        load_before = os.getloadavg()
        dense_speed = {(engine, b): items_per_s(engine, dense, b, args.seconds, work) for engine in APACHE for b in (1, 32)}
        rows = []
        for pair in pairs:
            for fast in (False, True):
                model = work / f"sparse-{pair[0]}-{pair[1]}.onnx"
                rows.append((pair, fast, {b: deepsparse_apart(model, b, args.seconds, fast) for b in (1, 32)}))
        for key in dense_speed:
            dense_speed[key] = max(dense_speed[key], items_per_s(key[0], dense, key[1], args.seconds, work))
    import deepsparse

    print()
    print(f"YOLOv5s {SIZE} px, random weights, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} "
          f"cores ({platform.processor() or platform.machine()}), load average before {load_before[0]:.2f} and "
          f"after {os.getloadavg()[0]:.2f}; DeepSparse {deepsparse.__version__}")
    for engine in APACHE:
        print(f"{engine} dense fp32 (.venv-runtime): {dense_speed[engine, 1]:.1f} items/s at batch 1, "
              f"{dense_speed[engine, 32]:.1f} at batch 32")
    ort = {b: dense_speed["onnxruntime", b] for b in (1, 32)}
    best = max(dense_speed[engine, 1] for engine in APACHE)
    print()
    print(f"| 3x3 / other convs | conv sparsity | {FAST_VNNI} | batch 1 | batch 32 | vs onnxruntime dense b1 / b32 "
          "| vs best Apache dense b1 |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for pair, fast, speed in rows:
        print(f"| {pair[0]} / {pair[1]} | {sparsity[pair]:.3f} | {'1' if fast else 'unset'} | {speed[1]:.1f} "
              f"| {speed[32]:.1f} | {speed[1] / ort[1]:.2f}x / {speed[32] / ort[32]:.2f}x | {speed[1] / best:.2f}x |")


if __name__ == "__main__":
    main()
