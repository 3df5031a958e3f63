"""Run an ONNX file in the kserve runtime's engines (OpenVINO, onnxruntime) as its server does; print the outputs.

A script for the runtime venv (`.venv-runtime/bin/python tests/support/engine_outputs.py MODEL IMAGE...`,
with operator/ on PYTHONPATH): each image goes through `kontinual.serving.yolo.preprocess` and
`kontinual.serving.engines.load(engine, MODEL)`, exactly what a server pod of spec.serving.runtime
does; stdout is {engine: {"uint8_input": bool, "outputs": [[N, 5+nc] per image]}} as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kontinual.serving import engines, yolo


def main(model: str, images: list[str]) -> None:
    answer = {}
    for name in engines.ENGINES:
        engine = engines.load(name, model)
        size = engine.input_shape[2:]
        outputs = []
        for image in images:
            batch = yolo.preprocess(yolo.decode(Path(image).read_bytes()), size, engine.uint8_input)[None]
            outputs.append(engine.run(batch)[0].tolist())
        answer[name] = {"uint8_input": engine.uint8_input, "outputs": outputs}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
