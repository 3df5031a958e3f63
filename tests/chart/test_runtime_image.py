"""images/server-openvino installs the runtime venv's pins, runs what the operator's builder runs, as the other images."""

from __future__ import annotations

import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kontinual.controller import builders
from kontinual.controller.settings import Settings
from kontinual.controller.spec import parse
from tests.chart.test_images import BUILD_TOOLS, PACKAGE_INSTALL, ROOT, STAGES, _instructions, _pip_installs, _stages

IMAGE = "server-openvino"


def _pins(path: str) -> dict[str, str]:
    """name -> the requirement line of a requirements file."""
    pins = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins[canonicalize_name(Requirement(line).name)] = line
    return pins


def test_it_installs_only_the_runtime_requirements_under_their_lock() -> None:
    installs = _pip_installs(IMAGE)
    assert ["-r", "requirements/runtime.txt", "-c", "requirements/runtime-lock.txt"] in installs
    assert PACKAGE_INSTALL in installs  # kontinual itself, without the DeepSparse extras
    assert all(i in (["pip<26"], ["-r", "requirements/runtime.txt", "-c", "requirements/runtime-lock.txt"],
                     PACKAGE_INSTALL) for i in installs), installs


def test_every_runtime_requirement_is_locked_to_a_version_it_allows() -> None:
    lock = {name: Requirement(line) for name, line in _pins("requirements/runtime-lock.txt").items()}
    for name, line in _pins("requirements/runtime.txt").items():
        wanted = Requirement(line)
        assert name in lock, f"{line} is not in requirements/runtime-lock.txt (make lock-runtime)"
        (locked,) = [s.version for s in lock[name].specifier]
        assert wanted.specifier.contains(locked), f"{line} but the lock has {locked}"
    for name in ("pyyaml", "requests"):  # kontinual's own dependencies, installed with --no-deps
        assert name in _pins("requirements/runtime.txt")


def test_no_deepsparse_or_torch_in_it() -> None:
    lock = _pins("requirements/runtime-lock.txt")
    assert not {"deepsparse", "sparsezoo", "sparseml", "torch", "yolov5", "ultralytics"} & set(lock)


def test_multistage_slim_python311_nonroot_without_build_tools() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in _instructions(IMAGE)
    stages = _stages(IMAGE)
    assert [stage[0] for stage in stages] == STAGES[1:]  # no requirements stage: runtime.txt is the list
    builder, package, final = stages
    # The code comes after every dependency: a change under operator/ rebuilds megabytes.
    assert not any(i.startswith("COPY ") and "requirements/" not in i for i in builder)
    assert "COPY operator/ operator/" in package
    venv = final.index("COPY --from=builder /opt/kontinual /opt/kontinual")
    assert final[venv + 1] == "COPY --from=package /pkg/opt/kontinual/ /opt/kontinual/"
    assert [i for i in final if i.startswith("USER ")] == [f"USER {builders.RUN_AS_USER}:{builders.RUN_AS_USER}"]
    assert not any("pip install" in i for i in final)
    apt = " ".join(i for i in final if "apt-get install" in i).split()
    assert not BUILD_TOOLS & set(apt)
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in " ".join(final)
    # The build fails if a package's licence does not pass hack/licenses.py, or an engine does not import.
    assert any("licenses.py" in i and i.startswith("RUN ") for i in final)
    assert any("import" in i and "openvino" in i and "kserve" in i for i in final)


def test_its_command_is_the_one_the_operator_renders() -> None:
    spec = parse({"metadata": {"name": "demo"}, "spec": {"model": {"uri": "https://m.example/x.onnx"},
                                                         "serving": {"runtime": "openvino"}}})
    command = builders.runtime(spec, Settings()).command
    cmd = _stages(IMAGE)[-1][-1]
    assert cmd == "CMD [" + ", ".join(f'"{word}"' for word in command) + "]"
    assert Settings().openvino_server_image.split(":")[0] == f"kontinual/{IMAGE}"


def test_build_context_sends_only_what_the_image_needs() -> None:
    text = (ROOT / "images" / IMAGE / "Dockerfile.dockerignore").read_text()
    assert re.search(r"^\*$", text, re.M), "without `*` docker would send .venv and .venv-runtime (GBs)"
    ignore = text.split()
    copies = [i.split()[1:-1] for i in _instructions(IMAGE) if i.startswith("COPY ") and "--from" not in i]
    for path in {p for sources in copies for p in sources}:
        assert f"!{path}" in ignore or f"!{path.rstrip('/')}/" in ignore, f"{path} is excluded from the context"
