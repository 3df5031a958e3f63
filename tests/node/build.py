"""Builds (once per machine) kubelet, kube-scheduler, kube-proxy and the pause binary for the test node.

Same Debian `kubernetes` source package, Go toolchain and GOPATH-mode build as the control
plane (tests/cluster/build.py), plus the two-line kubelet patch this sandbox needs: its
capability bounding set lacks CAP_SYS_RESOURCE, so no process may lower `oom_score_adj`, and
runc fails every pod sandbox the kubelet asks for at -998. The cache key is the
source version and RECIPE, a hash of the patch and build flags, so changing either rebuilds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from tests.cluster.build import (REFLECT2_PACKAGE, BuildFailed, PrivateApt, ToolchainUnavailable,
                                 cache_root, exclusive, find_go, kube_dir, kube_version, log, run)

COMMANDS = ("kubelet", "kube-scheduler", "kube-proxy")
BINARIES = (*COMMANDS, "pause")
# (file, exact old text, new text): OOM score adjustments this sandbox cannot apply.
PATCHES = (
    ("pkg/kubelet/dockershim/docker_sandbox.go", "defaultSandboxOOMAdj int = -998", "defaultSandboxOOMAdj int = 0"),
    ("pkg/kubelet/qos/policy.go", "guaranteedOOMScoreAdj int = -997", "guaranteedOOMScoreAdj int = 0"),
)
BUILD_FLAGS = "CGO_ENABLED=0 -trimpath -s -w; pause: gcc -static -O2"
RECIPE = hashlib.sha256(repr((PATCHES, BUILD_FLAGS)).encode()).hexdigest()[:10]


def node_bin_dir(version: str) -> Path:
    return kube_dir(version) / f"node-{RECIPE}"


def cached_node_bin_dir() -> Path | None:
    builds = [d for d in cache_root().glob(f"kube-*/node-{RECIPE}") if all((d / b).exists() for b in BINARIES)]
    return max(builds, key=lambda p: p.stat().st_mtime) if builds else None


def ensure_node_binaries() -> Path:
    """The directory holding kubelet, kube-scheduler, kube-proxy and pause (building if needed).

    KONTINUAL_NODE_BIN_DIR names a directory of binaries built elsewhere and skips all of this.
    """
    override = os.environ.get("KONTINUAL_NODE_BIN_DIR")
    if override:
        missing = [b for b in BINARIES if not (Path(override) / b).exists()]
        if missing:
            raise BuildFailed(f"KONTINUAL_NODE_BIN_DIR={override} lacks {', '.join(missing)}")
        return Path(override)
    apt = PrivateApt(cache_root() / "apt")
    with exclusive(cache_root() / "build.lock"):
        try:
            apt.update()
            version = apt.source_version("kubernetes")
        except ToolchainUnavailable as error:
            fallback = cached_node_bin_dir()
            if fallback is None:
                raise
            log(f"cannot ask the mirror for the kubernetes version ({str(error).splitlines()[0]}); "
                f"using the cached node build {fallback}")
            return fallback
        bin_dir = node_bin_dir(version)
        if all((bin_dir / b).exists() for b in BINARIES):
            log(f"using cached node binaries in {bin_dir}")
            return bin_dir
        started = time.monotonic()
        log(f"building kubelet, kube-scheduler, kube-proxy (recipe {RECIPE}) from Debian kubernetes "
            f"{version} (cold build, minutes)")
        build(apt, version, bin_dir)
        log(f"cold node build done in {time.monotonic() - started:.0f} s: {bin_dir}")
        return bin_dir


def build(apt: PrivateApt, version: str, bin_dir: Path) -> None:
    go = find_go()
    if not shutil.which("gcc"):
        raise ToolchainUnavailable("gcc is needed to build the pause binary")
    work = Path(tempfile.mkdtemp(prefix="node-build-", dir=cache_root()))
    staging = bin_dir.parent / f"{bin_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        step = time.monotonic()
        reflect2_deb = apt.download(REFLECT2_PACKAGE, work)
        run(["dpkg-deb", "-x", str(reflect2_deb), str(work / "reflect2")], quiet=True)
        source = apt.source("kubernetes", version, work)
        log(f"fetched the kubernetes source in {time.monotonic() - step:.0f} s")
        release = kube_version(source)
        root = prepare_source(source, work)
        compile_node(go, root, release, staging)
        run(["gcc", "-static", "-O2", f"-DVERSION=kontinual-{RECIPE}", "-o", str(staging / "pause"),
             str(root / "build/pause/linux/pause.c")], quiet=True)
        (staging / "SOURCE").write_text(f"debian kubernetes {version}, recipe {RECIPE}\n"
                                        f"{PATCHES}\n{run([str(go), 'version'], quiet=True)}")
        shutil.rmtree(bin_dir, ignore_errors=True)
        staging.rename(bin_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def prepare_source(source: Path, work: Path) -> Path:
    """The control plane's reflect2 fix, the OOM patch, and the tree moved into a GOPATH."""
    vendored = source / "vendor/github.com/modern-go/reflect2"
    shutil.rmtree(vendored)
    shutil.copytree(work / "reflect2/usr/share/gocode/src/github.com/modern-go/reflect2", vendored)
    (vendored / "go.mod").unlink(missing_ok=True)
    for relative, old, new in PATCHES:
        path = source / relative
        text = path.read_text()
        if text.count(old) != 1:
            raise BuildFailed(f"patch does not apply: {relative} should contain {old!r} exactly once")
        path.write_text(text.replace(old, new))
    (work / "gopath/src/k8s.io").mkdir(parents=True)
    root = work / "gopath/src/k8s.io/kubernetes"
    source.rename(root)
    return root


def compile_node(go: Path, root: Path, release: tuple[str, str, str], out: Path) -> None:
    major, minor, git_version = release
    jobs = os.environ.get("KONTINUAL_GO_BUILD_JOBS", "2")
    gopath = root.parents[2]
    env = {**os.environ, "GOPATH": str(gopath), "GO111MODULE": "off", "CGO_ENABLED": "0",
           "GOCACHE": str(cache_root() / "gocache"), "GOFLAGS": "", "GOTOOLCHAIN": "local",
           "PATH": f"{go.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    stamps = []
    for prefix in ("k8s.io/kubernetes/vendor/k8s.io/component-base/version",
                   "k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version"):
        stamps += [f"-X {prefix}.gitVersion={git_version}", f"-X {prefix}.gitMajor={major}",
                   f"-X {prefix}.gitMinor={minor}", f"-X {prefix}.gitTreeState=clean"]
    step = time.monotonic()
    log(f"compiling {', '.join(COMMANDS)} {git_version} (go build -p {jobs})")
    run([str(go), "build", "-p", jobs, "-trimpath", "-ldflags", " ".join(["-s", "-w", *stamps]),
         "-o", str(out) + "/", *(f"./cmd/{c}" for c in COMMANDS)], cwd=root, env=env)
    log(f"compiled in {time.monotonic() - step:.0f} s")
