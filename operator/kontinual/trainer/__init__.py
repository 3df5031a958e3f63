"""The training wing: `kontinual train` (download, validate, SparseML training, ONNX export, evaluation, report).

Imports without kopf; torch, sparseml and yolov5 are imported only by the modules that need them.
Importing the package installs `offline` first (a finder, nothing else), so yolov5/ultralytics,
imported later by any module of it, never probe the internet.
"""

from kontinual.trainer import offline as _offline

_offline.install()
