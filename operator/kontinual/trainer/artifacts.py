"""The version folder on the model claim (written under a temp name, renamed when complete), its
manifest, and the result JSON written last."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from kontinual.common.contract import MODEL_CHECKPOINT, MODEL_ONNX, RESULT_FILE, TrainingResult
from kontinual.trainer.errors import ARTIFACTS_FAILED, TrainingError

_LOG = logging.getLogger(__name__)
COMPLETE_FILES = (MODEL_ONNX, MODEL_CHECKPOINT, "metrics.json", "recipe.yaml", "manifest.json", RESULT_FILE)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class VersionFolder:
    """`<root>/v<N>/`, built in `<root>/.v<N>.tmp-<random>` so a half-written version never looks complete."""

    def __init__(self, root: Path, version: int) -> None:
        self.root = root
        self.version = version
        self.final = root / f"v{version}"
        self.tmp = root / f".v{version}.tmp-{secrets.token_hex(4)}"

    def create(self) -> Path:
        if self.final.exists():
            raise TrainingError(ARTIFACTS_FAILED, f"{self.final} exists already: every run needs a new "
                                "--version (versions are never overwritten)")
        try:
            self.tmp.mkdir(parents=True)
        except OSError as exc:
            raise TrainingError(ARTIFACTS_FAILED, f"cannot create {self.tmp}: {exc}") from exc
        return self.tmp

    def file(self, name: str) -> Path:
        return self.tmp / name

    def commit(self) -> Path:
        """Rename the complete temp folder to v<N> (atomic on one file system)."""
        missing = [n for n in COMPLETE_FILES if not (self.tmp / n).is_file()]
        if missing:
            raise TrainingError(ARTIFACTS_FAILED, f"version folder incomplete, missing {missing}")
        try:
            for path in [*self.tmp.iterdir(), self.tmp]:
                _fsync(path)
            os.rename(self.tmp, self.final)
            _fsync(self.root)
        except OSError as exc:
            raise TrainingError(ARTIFACTS_FAILED, f"cannot rename {self.tmp} to {self.final}: {exc}") from exc
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def manifest(folder: VersionFolder, *, dataset: dict[str, Any], sparsity: dict[str, Any],
             timings: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
    """manifest.json content: sha256 of every other file, dataset, sparsity per layer and overall, timings."""
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.tmp.iterdir()) if p.is_file() and p.name != "manifest.json"}
    return {"version": folder.version, "files": files, "dataset": dataset, "sparsity": sparsity,
            "timings": timings, **extra}


def write_result(path: Path, result: TrainingResult) -> None:
    """The result JSON (under 4 KiB), the run's last act; a console copy goes to stdout."""
    text = result.to_json()
    print(text, flush=True)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        _LOG.error("cannot write the result to %s: %s", path, exc)
