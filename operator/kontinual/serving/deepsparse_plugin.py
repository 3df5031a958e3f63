"""The file DeepSparse's `loggers: {roboflow: {path: <this file>:RoboflowLogger}}` entry loads.

DeepSparse 1.8.0 resolves a custom logger's `path` with `importlib.util.spec_from_file_location`:
it accepts a *file* path, not a module path, and executes that file as a fresh module named
`user_defined_custom_logger`. Pointing it at the logger module itself would create a second copy
of it (two sets of counters, two metrics servers). This one-line entry file instead imports the
logger by its module path from the installed `kontinual` package, so the class DeepSparse builds
is the one and only `kontinual.serving.roboflow_logger.RoboflowLogger`.
"""

from kontinual.serving.roboflow_logger import RoboflowLogger

__all__ = ["RoboflowLogger"]
