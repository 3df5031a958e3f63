"""Keeps yolov5 and ultralytics from probing the internet: no connection attempt at import or later.

`import yolov5` imports ultralytics 8.0.124, whose `ultralytics/yolo/utils/__init__.py` runs
`ONLINE = is_online()` while it is being imported: a TCP connect to 1.1.1.1:53, 8.8.8.8:53 and
223.5.5.5:53 (2 s timeout each), with no setting to turn it off (`YOLO_OFFLINE` does nothing).
A training pod would "phone home" at start, and wait up to 6 s in an air-gapped namespace.

The mechanism: `install()` puts a finder first on `sys.meta_path` that wraps the loading of
exactly two modules.
- `ultralytics.yolo.utils`: while its body runs, `socket.create_connection` refuses those three
  probe addresses at once (no socket is opened, so nothing is sent), so `ONLINE` is False; right
  after, `is_online` is replaced by a function returning False, in utils and in `checks` and
  `downloads`, which hold it by name. ultralytics then believes it is offline: no auto-downloads, AutoUpdate,
  hub events or Sentry (all of them require ONLINE).
- `yolov5.utils.general`: its `check_online()` (a connect to 1.1.1.1:443, used by the git and
  requirements checks and the font download) returns False.
`kontinual.trainer` calls `install()` when the package is imported, before any of its modules
can import yolov5, so this is the one place; it only costs a finder until yolov5 is imported.
The trainer's only outbound connections are then the Roboflow API (and SparseZoo for `zoo:`
sources), both configurable.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import socket
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

PROBE_HOSTS = frozenset({"1.1.1.1", "8.8.8.8", "223.5.5.5"})  # ultralytics' is_online targets


def _offline() -> bool:
    return False


def _refuse_probes(original: Callable[..., socket.socket]) -> Callable[..., socket.socket]:
    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        if isinstance(address, tuple) and address and address[0] in PROBE_HOSTS:
            raise OSError(f"kontinual: {address[0]} is ultralytics' online probe; this process stays offline")
        return original(address, *args, **kwargs)
    return create_connection


def _ultralytics_utils(run: Callable[[], None], module: ModuleType) -> None:
    original = socket.create_connection
    socket.create_connection = _refuse_probes(original)
    try:
        run()
    finally:
        socket.create_connection = original
    module.ONLINE = False  # type: ignore[attr-defined]
    _patch_loaded()


def _yolov5_general(run: Callable[[], None], module: ModuleType) -> None:
    run()
    _patch_loaded()


# Every module that holds a probe function by name (some import it while utils is still loading).
PROBES = {"ultralytics.yolo.utils": "is_online", "ultralytics.yolo.utils.checks": "is_online",
          "ultralytics.yolo.utils.downloads": "is_online", "yolov5.utils.general": "check_online"}


def _patch_loaded() -> None:
    for name, attr in PROBES.items():
        module = sys.modules.get(name)
        if module is not None and hasattr(module, attr):
            setattr(module, attr, _offline)


PATCHES: dict[str, Callable[[Callable[[], None], ModuleType], None]] = {
    "ultralytics.yolo.utils": _ultralytics_utils,
    "yolov5.utils.general": _yolov5_general,
}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, patch: Callable[[Callable[[], None], ModuleType], None]) -> None:
        self.inner, self.patch = inner, patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.patch(lambda: self.inner.exec_module(module), module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, patch)
                return spec
        return None


def install() -> None:
    """Idempotent; also patches the modules if they were imported before (by someone else)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    _patch_loaded()
