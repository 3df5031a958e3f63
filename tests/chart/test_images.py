"""The three Dockerfiles install `kontinual` with the right extra and the versions the tests use.

This reads the Dockerfiles (tests/node builds them): every pin they install comes from
requirements/test.txt (as pip constraints), every explicit version they name equals that file's,
every third-party package is installed before the code is copied (a code change rebuilds
megabytes, not the gigabytes of torch and DeepSparse), and the final stages run as uid 10001
without build tools.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"operator": "operator", "server": "server", "trainer": "trainer"}  # image -> pyproject extra
STAGES = ["FROM ${PYTHON_IMAGE} AS requirements", "FROM ${PYTHON_IMAGE} AS builder", "FROM builder AS package",
          "FROM ${PYTHON_IMAGE}"]
PACKAGE_INSTALL = ["--no-deps", "--no-warn-script-location", "--root", "/pkg", "."]
CONSTRAINTS_LINE = "RUN sed -E 's/\\[[^]]*\\]//' requirements/test.txt requirements/lock.txt > /tmp/constraints.txt"
BUILD_TOOLS = {"build-essential", "gcc", "g++", "make", "git", "curl", "wget"}


def _test_pins() -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for line in (ROOT / "requirements" / "test.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req
    return pins


def _instructions(image: str) -> list[str]:
    """Dockerfile instructions with line continuations joined and comments dropped."""
    text = (ROOT / "images" / image / "Dockerfile").read_text()
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.M)
    text = text.replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _stages(image: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for instruction in _instructions(image):
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _pip_installs(image: str) -> list[list[str]]:
    """The argument lists of every `pip install` in the Dockerfile."""
    installs = []
    for instruction in _instructions(image):
        for command in re.split(r"&&|;", instruction):
            words = shlex.split(command.replace("RUN ", "", 1)) if "pip install" in command else []
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                installs.append(words[2:])
    return installs


def constraints_from(test_txt: str) -> str:
    """What the Dockerfiles' sed line makes of requirements/test.txt."""
    return re.sub(r"\[[^]]*\]", "", test_txt)


def test_constraints_file_keeps_every_pin_and_is_valid_for_pip() -> None:
    constraints = constraints_from((ROOT / "requirements" / "test.txt").read_text())
    parsed = {}
    for line in constraints.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert not req.extras, f"pip rejects extras in constraints: {line}"
            parsed[canonicalize_name(req.name)] = str(req.specifier)
    assert parsed == {name: str(req.specifier) for name, req in _test_pins().items()}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_installs_only_test_pins(image: str) -> None:
    instructions = _instructions(image)
    assert "COPY requirements/test.txt requirements/lock.txt requirements/" in instructions
    assert CONSTRAINTS_LINE in instructions
    installs = _pip_installs(image)
    assert installs, f"images/{image}/Dockerfile installs nothing with pip"
    pins = _test_pins()
    for args in installs:
        if args in (["pip<26"], PACKAGE_INSTALL):
            continue  # the installer itself, as in the Makefile's venv target; kontinual alone
        assert args[:2] == ["-c", "/tmp/constraints.txt"], f"pip install without the test pins: {args}"
        for arg in args[2:]:
            if arg.startswith("-") or arg.startswith("${") or arg.startswith('"${'):
                continue
            if arg.startswith("requirements/"):
                continue  # the file of kontinual's requirements (below)
            try:
                req = Requirement(arg)
            except InvalidRequirement:
                continue  # an option's value (an index URL)
            name = canonicalize_name(req.name)
            assert name in pins, f"images/{image} installs {arg}, which requirements/test.txt does not pin"
            if req.specifier:
                assert str(req.specifier) == str(pins[name].specifier), f"{arg} differs from {pins[name]}"


def _requirements_of(image: str, pyproject: Path) -> list[str]:
    """What the requirements stage's one RUN writes to /requirements.txt, run on `pyproject`."""
    (run,) = [i for i in _stages(image)[0] if i.startswith("RUN ")]
    code = shlex.split(run.removeprefix("RUN "))
    assert code[:2] == ["python", "-c"] and code[3:] == [">", "/requirements.txt"], run
    out = subprocess.run([sys.executable, "-c", code[2].replace("/src/pyproject.toml", str(pyproject))],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.parametrize(("image", "extra"), sorted(IMAGES.items()))
def test_dockerfile_installs_kontinual_with_its_extra(image: str, extra: str, tmp_path: Path) -> None:
    """The builder installs what pyproject.toml lists for kontinual[extra]; kontinual itself then comes alone."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _requirements_of(image, ROOT / "pyproject.toml") == [*project["dependencies"],
                                                                *project["optional-dependencies"][extra]]
    changed = tmp_path / "pyproject.toml"  # the list follows pyproject.toml: it is read, not copied out
    changed.write_text((ROOT / "pyproject.toml").read_text().replace('dependencies = ["pyyaml", "requests"]',
                                                                    'dependencies = ["pyyaml", "requests", "idna"]'))
    assert "idna" in _requirements_of(image, changed)
    builder = _stages(image)[1]
    listed = f"requirements/kontinual-{extra}.txt"
    assert f"COPY --from=requirements /requirements.txt {listed}" in builder
    assert ["-c", "/tmp/constraints.txt", "-r", listed] in _pip_installs(image)
    assert [i for i in _stages(image)[2] if "pip install" in i] == [
        "RUN /opt/kontinual/bin/pip install " + " ".join(PACKAGE_INSTALL)]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_code_is_copied_after_every_dependency(image: str) -> None:
    """A change under operator/ rebuilds only the package stage and the final stage's last layers:
    the requirements stage copies pyproject.toml alone, the builder stage (every third-party
    install) copies requirements only, and the final stage copies the builder's venv before the
    package's few files."""
    requirements, builder, package, final = _stages(image)
    assert [i for i in requirements if i.startswith("COPY ")] == ["COPY pyproject.toml /src/pyproject.toml"]
    for instruction in builder:
        if instruction.startswith("COPY "):
            sources = instruction.split()[1:-1]
            assert all(s.startswith("requirements/") or s.startswith("--from=requirements") or s == "/requirements.txt"
                       for s in sources), f"the dependency layers depend on {sources}"
    assert "COPY operator/ operator/" in package and not any("operator/" in i for i in builder)
    venv = final.index("COPY --from=builder /opt/kontinual /opt/kontinual")
    code = final.index("COPY --from=package /pkg/opt/kontinual/ /opt/kontinual/")
    assert venv + 1 == code, "the package's files go on top of the dependencies' venv, in the next layer"


def test_server_and_trainer_share_their_torch_layers() -> None:
    """Built with the same TORCH_VARIANT, the two builder stages are the same instructions up to and including
    torch's install, so Docker builds those layers once (one CUDA torch download, ~5 GB, not two)."""
    server, trainer = _stages("server")[1], _stages("trainer")[1]
    shared = next(n for n, i in enumerate(trainer) if "torch torchvision" in i) + 1
    assert server[:shared] == trainer[:shared] and "pip install" in trainer[shared - 1]


@pytest.mark.parametrize("extra", sorted(set(IMAGES.values())))
def test_pyproject_extras_agree_with_test_pins(extra: str) -> None:
    """A version pinned in an extra is the version the tests run (the constraints would clash otherwise)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _test_pins()
    for entry in project["optional-dependencies"][extra] + project["dependencies"]:
        req = Requirement(entry)
        name = canonicalize_name(req.name)
        if "==" in str(req.specifier):
            assert name in pins and str(req.specifier) == str(pins[name].specifier), (
                f"pyproject extra {extra!r} pins {entry}, requirements/test.txt has {pins.get(name)}")
        if name in pins and req.extras:
            assert req.extras <= pins[name].extras, f"tests do not install {entry}'s extras"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_are_multistage_slim_python311_nonroot_without_build_tools(image: str) -> None:
    instructions = _instructions(image)
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in instructions
    stages = _stages(image)
    assert [stage[0] for stage in stages] == STAGES
    final = stages[-1]
    assert "COPY --from=builder /opt/kontinual /opt/kontinual" in final
    users = [i for i in final if i.startswith("USER ")]
    assert users == ["USER 10001:10001"], "the final stage must run as the numeric non-root uid 10001"
    assert "NM_DISABLE_ANALYTICS=1" in " ".join(final)
    apt = " ".join(i for i in final if "apt-get install" in i).split()
    assert not BUILD_TOOLS & set(apt), f"build tools in the final image: {BUILD_TOOLS & set(apt)}"
    assert not any("pip install" in i for i in final), "the final stage must copy the venv, not install"


@pytest.mark.parametrize("image", ["server", "trainer"])
def test_opencv_system_libraries_in_final_stage(image: str) -> None:
    apt = " ".join(i for i in _stages(image)[-1] if "apt-get install" in i).split()
    assert {"libgl1", "libglib2.0-0"} <= set(apt)


def test_server_runs_deepsparse_server_with_the_logger_importable() -> None:
    final = _stages("server")[-1]
    assert final[-1].startswith('CMD ["deepsparse.server", "--config-file", "/etc/kontinual/server.yaml"')
    assert any("import" in i and "kontinual.serving" in i and "deepsparse.server" in i for i in final)


def test_server_config_path_matches_what_the_operator_mounts() -> None:
    from kontinual.controller import builders

    cmd = _stages("server")[-1][-1]
    assert f"{builders.CONFIG_DIR}/{builders.CONFIG_FILE}" in cmd
    assert f"USER {builders.RUN_AS_USER}:{builders.RUN_AS_USER}" in _stages("server")[-1]


def test_trainer_entrypoint() -> None:
    assert 'ENTRYPOINT ["kontinual", "train"]' in _instructions("trainer")


@pytest.mark.parametrize("image", ["server", "trainer"])
def test_torch_variant_cpu_by_default_or_cuda(image: str) -> None:
    instructions = _instructions(image)
    assert "ARG TORCH_VARIANT=cpu" in instructions
    variant = next(i for i in instructions if "TORCH_VARIANT}\" in" in i)
    assert "cpu)" in variant and "cuda)" in variant and "exit 1" in variant


def test_operator_entrypoint_runs_the_operator() -> None:
    instructions = _instructions("operator")
    assert 'ENTRYPOINT ["kontinual"]' in instructions and 'CMD ["operator"]' in instructions


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_context_sends_only_what_the_image_needs(image: str) -> None:
    """The context is the repo root: without this ignore file docker would send .venv (GBs)."""
    ignore = (ROOT / "images" / image / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
    copies = [i.split()[1:-1] for i in _instructions(image) if i.startswith("COPY ") and "--from" not in i]
    copied = {path for sources in copies for path in sources}
    for path in copied:
        assert f"!{path}" in ignore or f"!{path.rstrip('/')}/" in ignore, f"{path} is excluded from the context"


def test_lock_is_the_test_environment() -> None:
    """requirements/lock.txt (the images' constraints) is exactly what the tests run with here."""
    import importlib.metadata as md

    from packaging.requirements import Requirement as Req
    from packaging.utils import canonicalize_name

    lock = {}
    for line in (ROOT / "requirements/lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Req(line)
            lock[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    import sysconfig

    # Only what pip installed into this environment: other sys.path entries (setuptools puts its
    # vendored packages there once pkg_resources is imported) are not part of it.
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions(path=site)}
    assert lock, "requirements/lock.txt is empty"
    from packaging.version import Version

    wrong = {name: (version, installed.get(name)) for name, version in lock.items()
             if name != "kontinual" and (installed.get(name) is None or Version(installed[name]) != Version(version))}
    assert not wrong, f"lock.txt differs from the test environment (lock, installed): {wrong}; run `make lock`"
    for name, pin in _test_pins().items():
        if pin.specifier and str(pin.specifier).startswith("=="):
            assert lock[canonicalize_name(name)] == str(pin.specifier)[2:], f"{name}: test.txt and lock.txt disagree"
