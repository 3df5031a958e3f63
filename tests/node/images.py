"""Builds the images of images/ with Docker on a locally made Debian 12 base, cached by content hash.

No registry can be pulled here, so the Dockerfiles' `PYTHON_IMAGE` build argument (default:
the public python:3.11-slim-bookworm) gets a Debian 12 image made with debootstrap from the
Debian mirror apt uses, with Debian's Python 3.11. Each image is tagged
`kontinual/<name>:node-<hash>` where the hash covers the Dockerfile, its build context (the
files its .dockerignore lets through), the build arguments and the base image's id: a warm
run finds the tag and builds nothing; a changed file rebuilds: the Dockerfiles install every
dependency before kontinual itself, so a code change rebuilds megabytes on top of Docker's cached
dependency layers. The superseded tag is removed first, and where the dependencies changed too,
its copy of the venv in the build cache. `images/` itself is never changed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from tests.cluster.build import BuildFailed, DEBIAN_MIRROR, cache_root, exclusive, log, run
from tests.node.host import docker_cli

ROOT = Path(__file__).resolve().parents[2]
BASE_RECIPE = "1"  # bump when the base's package list changes
BASE_PACKAGES = ("python3", "python3-venv", "python3-dev", "python-is-python3", "ca-certificates")
BASE_REPO = "kontinual/debian-python"
DEPS_LABEL = "io.kontinual.node.dependencies"  # dependencies_hash() of the build
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
# The PyTorch CPU index is not reachable here; PyPI's torch (the version the lock pins) is. Server
# and trainer take the same variant, so their builds share the torch layers.
BUILD_ARGS = {
    "operator": {},
    "server": {"TORCH_VARIANT": "cuda"},
    "trainer": {"TORCH_VARIANT": "cuda"},
    "server-openvino": {},
}


def docker(*args: str, env: dict[str, str] | None = None) -> str:
    return run([docker_cli(), *args], cwd=ROOT, env=env, quiet=True)


def image_id(ref: str) -> str | None:
    proc = subprocess.run([docker_cli(), "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_base() -> str:
    """The Debian 12 + Python 3.11 base, trusting the CAs this machine trusts (pip and apt inside
    the builds go through the same TLS path as the host's)."""
    rootfs = ensure_rootfs()
    cas = sorted(LOCAL_CAS.glob("*.crt"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in cas)).hexdigest()[:8]
    tag = f"{rootfs}-ca{digest}"
    if image_id(tag):
        return tag
    context = Path(tempfile.mkdtemp(prefix="base-ca-", dir=cache_root()))
    try:
        (context / "ca").mkdir()
        for path in cas:
            shutil.copy2(path, context / "ca" / path.name)
        (context / "Dockerfile").write_text(
            f"FROM {rootfs}\nCOPY ca/ /usr/local/share/ca-certificates/\n"
            "RUN update-ca-certificates >/dev/null\n")
        run([docker_cli(), "build", "--network", "none", "-q", "-t", tag, str(context)], quiet=True)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag


def ensure_rootfs() -> str:
    """The Debian 12 + Python 3.11 image from debootstrap (a minute or a few, once per machine)."""
    tag = f"{BASE_REPO}:bookworm-{BASE_RECIPE}"
    if image_id(tag):
        return tag
    with exclusive(cache_root() / "images.lock"):
        if image_id(tag):
            return tag
        started = time.monotonic()
        log(f"making the base image {tag} with debootstrap (once per machine)")
        rootfs = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_root()))
        try:
            mirror = os.environ.get("KONTINUAL_DEBIAN_MIRROR", DEBIAN_MIRROR)
            run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 "bookworm", str(rootfs), mirror], quiet=True)
            (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} bookworm main\n")
            shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run([docker_cli(), "import", "--change", 'CMD ["python3"]', "-", tag],
                                      stdin=tar.stdout, capture_output=True, text=True)
            tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise BuildFailed(f"docker import of the base failed: {imported.stderr[-2000:]}")
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
        log(f"base image {tag} made in {time.monotonic() - started:.0f} s")
        return tag


def context_files(name: str) -> list[Path]:
    """The files of the build context that images/<name>/Dockerfile.dockerignore lets through."""
    patterns = [line.strip() for line in (ROOT / f"images/{name}/Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    kept = []
    for path in sorted(p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
                       and ".venv" not in p.parts):
        rel = path.relative_to(ROOT).as_posix()
        included = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern[1:] if negate else pattern
            body = body.rstrip("/")
            hit = (fnmatch.fnmatch(rel, body) or rel.startswith(body + "/") or body == "*"
                   or (body.startswith("**/") and (fnmatch.fnmatch(rel, body[3:])
                                                   or any(fnmatch.fnmatch(part, body[3:]) for part in rel.split("/")))))
            if hit:
                included = negate
        if included:
            kept.append(path)
    return kept


def content_hash(name: str, base_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(base_id.encode())
    for key, value in sorted(BUILD_ARGS[name].items()):
        digest.update(f"{key}={value}\n".encode())
    for path in [ROOT / f"images/{name}/Dockerfile", *context_files(name)]:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def dependencies_hash(name: str, base_id: str) -> str:
    """What the image's dependency layers are built from: the base, the build arguments, the
    Dockerfile, requirements/ and pyproject.toml's dependency lists, not the code (an image whose
    build only changed kontinual itself reuses the gigabytes of the last one)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    digest = hashlib.sha256(base_id.encode())
    digest.update(json.dumps([BUILD_ARGS[name], project.get("dependencies"),
                              project.get("optional-dependencies")], sort_keys=True).encode())
    for path in [ROOT / f"images/{name}/Dockerfile", *context_files(name)]:
        if path.name == "Dockerfile" or path.parent.name == "requirements":
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def label(ref: str, key: str) -> str:
    return docker("image", "inspect", "--format", f'{{{{ index .Config.Labels "{key}" }}}}', ref).strip()


def ensure_image(name: str) -> str:
    """`kontinual/<name>:node-<hash>`, built now unless a run before built the same content."""
    base = ensure_base()
    tag = f"kontinual/{name}:node-{content_hash(name, image_id(base) or base)}"
    if image_id(tag):
        return tag
    with exclusive(cache_root() / f"image-{name}.lock"):
        if image_id(tag):
            return tag
        started = time.monotonic()
        log(f"building {tag} from images/{name}/Dockerfile (cold: minutes)")
        args = [arg for key, value in {"PYTHON_IMAGE": base, **BUILD_ARGS[name]}.items()
                for arg in ("--build-arg", f"{key}={value}")]
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        deps = dependencies_hash(name, image_id(base) or base)
        superseded = [ref for ref in docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                                            f"kontinual/{name}").split() if ref.split(":")[-1].startswith("node-")]
        if not any(label(ref, DEPS_LABEL) == deps for ref in superseded):
            # New dependencies: the superseded image goes first, and with it the build cache's copy
            # of its venv (~7 GB for server and trainer): two generations do not fit on a small disk.
            remove(superseded)
            superseded = []
            prune_stale_venv_copies(before=datetime.now(timezone.utc))
        # Otherwise only kontinual changed: the superseded image holds the venv layer this build
        # reuses (removed first, Docker would write those gigabytes again), so it goes after.
        docker("build", "--network", "host", "--progress", "plain", "-f", f"images/{name}/Dockerfile",
               *args, "--label", f"{DEPS_LABEL}={deps}", "-t", tag, str(ROOT), env=env)
        remove(superseded)
        log(f"built {tag} in {time.monotonic() - started:.0f} s")
        return tag


def remove(refs: list[str]) -> None:
    for ref in refs:
        subprocess.run([docker_cli(), "image", "rm", ref], capture_output=True)


def cache_records() -> list[dict[str, str]]:
    return json.loads(docker("system", "df", "-v", "--format", "{{json .BuildCache}}") or "[]") or []


def size_bytes(text: str) -> float:
    units = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "B": 1.0}
    for unit, factor in units.items():  # longest suffixes first
        if text.endswith(unit):
            return float(text[:-len(unit)]) * factor
    return 0.0


def prune_stale_venv_copies(before: datetime) -> None:
    """Drops the build cache's final-stage venv copies (COPY --from=builder: gigabytes) last used
    before `before`, children first; the layers the builds reuse (torch, pip installs) stay."""
    records = cache_records()
    used = {r["ID"]: datetime.fromisoformat(r["LastUsedAt"][:19]).replace(tzinfo=timezone.utc) for r in records}
    stale = {r["ID"] for r in records if r.get("Description") == "fileop target"
             and size_bytes(r.get("Size", "")) >= 1e9 and used[r["ID"]] < before}
    children: dict[str, list[str]] = {}
    for record in records:
        children.setdefault(record.get("Parent", ""), []).append(record["ID"])

    def leaf_first(ident: str) -> list[str]:
        return [d for child in children.get(ident, []) for d in leaf_first(child)] + [ident]

    for ident in [d for root in sorted(stale) for d in leaf_first(root)]:
        subprocess.run([docker_cli(), "builder", "prune", "-a", "-f", "--filter", f"id={ident}"],
                       capture_output=True)


def ensure_images(names: tuple[str, ...] = tuple(BUILD_ARGS)) -> dict[str, str]:
    return {name: ensure_image(name) for name in names}
