"""Benchmark (not a test): does the loop get better? Two real `kontinual train` runs judged by the operator's gate.

Run 1 from an 80-class YOLOv5 checkpoint on the Roboflow double's version 1, judged by the floor (the COCO
seed cannot be evaluated on 4 classes); run 2 on version 2, generated from new, harder labels, judged
against v1 on version 2's test split (tests/support/loop_runs.py). Prints each run's mAP50, its baseline,
the gate's verdict and the seconds it took. Usage: `.venv/bin/python benchmarks/two_runs.py [--epochs 70]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.loop_runs import two_runs  # noqa: E402


def tiny_config(folder: Path) -> Path:
    """yolov5n's architecture at 1/8 width (the training tier's model): trains in minutes on 2 cores."""
    import yolov5

    cfg = yaml.safe_load((Path(yolov5.__file__).parent / "models" / "yolov5n.yaml").read_text())
    cfg.update(depth_multiple=0.33, width_multiple=0.125)
    path = folder / "yolov5-tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=70)
    parser.add_argument("--images", type=int, default=48, help="training images of version 1")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kontinual-two-runs-") as tmp:
        started = time.monotonic()
        loop = two_runs(Path(tmp), tiny_config(Path(tmp)), epochs=args.epochs, image_size=args.image_size,
                        n_train=args.images)
        figures = loop.figures() | {"epochs": args.epochs, "totalSeconds": round(time.monotonic() - started, 1)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
