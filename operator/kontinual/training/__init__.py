"""The training wing: `kontinual train` (download, validate, SparseML training, ONNX export, evaluation, report).

Imports without kopf; torch, sparseml and yolov5 are imported only by the modules that need them.
"""
