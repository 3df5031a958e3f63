"""`make up` / `make down` (hack/up.sh, hack/install.sh, hack/uninstall.sh, hack/down.sh) run the steps the README
promises, in order. hack/install.sh (everything after kind) also runs for real on the real node (tests/node).

Docker and kind cannot run a cluster here, so docker, kind, kubectl and helm are replaced by
recording shims on PATH; the script itself is the real one. The helm command it would run is
then rendered with the real helm and validated, so what `make up` installs is what the chart
tests check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import CHART, ROOT, container_env, helm, one, validation_errors

SHIM = f"""#!{sys.executable}
import hashlib, json, os, sys
from pathlib import Path
name, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write(json.dumps([name, *args]) + "\\n")
if name == "docker" and args[:1] == ["build"] and os.environ.get("SHIM_FAIL_BUILD"):
    sys.exit(3)
elif name == "docker" and args[:2] == ["image", "inspect"]:
    print("sha256:" + hashlib.sha256(args[-1].encode()).hexdigest())
elif name == "kind" and args[:2] == ["get", "clusters"]:
    print(os.environ.get("SHIM_CLUSTERS", ""))
elif name == "kubectl" and "wait" in args and "--for=condition=Ready" in args:
    sys.exit(1 if os.environ.get("SHIM_NOT_READY") else 0)
elif name == "kubectl" and "--all-namespaces" in args:
    print(os.environ.get("SHIM_MODELS_LEFT", ""))
elif name == "kubectl" and "apply" in args and "-o" in args:
    doc = __import__("yaml").safe_load(open(args[args.index("-f") + 1]))
    print(doc["kind"].lower() + ".kontinual.io/" + doc["metadata"]["name"])
"""


STUBBED = {"docker", "kind", "kubectl", "helm"}
IMAGES = ("operator", "server", "trainer", "server-openvino")  # built and loaded by make up, in order


def _system_bin(tmp_path: Path) -> Path:
    """The system's /usr/bin and /bin minus the stubbed tools (a machine may have a real docker)."""
    sysbin = tmp_path / "sysbin"
    if not sysbin.exists():
        sysbin.mkdir()
        for directory in (Path("/usr/bin"), Path("/bin")):
            for entry in directory.iterdir():
                target = sysbin / entry.name
                if entry.name not in STUBBED and not target.exists():
                    target.symlink_to(entry)
    return sysbin


def _run(script: str, tmp_path: Path, *, tools: tuple[str, ...] = ("docker", "kind", "kubectl", "helm"),
         args: tuple[str, ...] = (), **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    for tool in tools:
        (shims / tool).write_text(SHIM)
        (shims / tool).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.write_text("")
    environment = {
        "PATH": f"{shims}:{_system_bin(tmp_path)}", "HOME": str(tmp_path), "SHIM_LOG": str(log),
        "PYTHONPATH": os.pathsep.join(sys.path),
        "HELM": str(shims / "helm"), "KUBECTL": str(shims / "kubectl"),
        "KTEST_NET_GUARD": os.environ.get("KTEST_NET_GUARD", ""), **env,
    }
    proc = subprocess.run(["bash", str(ROOT / "hack" / script), *args], capture_output=True, text=True,
                          env=environment, timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc, calls


def _helm_install(calls: list[list[str]]) -> list[str]:
    (install,) = [c for c in calls if c[:3] == ["helm", "upgrade", "--install"]]
    return install


def test_up_creates_cluster_builds_loads_installs_and_waits(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path)
    assert proc.returncode == 0, proc.stderr
    steps = [c[:3] for c in calls]
    assert ["kind", "create", "cluster"] in steps
    create = next(c for c in calls if c[:3] == ["kind", "create", "cluster"])
    assert create[create.index("--config") + 1] == "kind-config.yaml"
    builds = [c for c in calls if c[:2] == ["docker", "build"]]
    assert [b[b.index("-f") + 1] for b in builds] == [f"images/{i}/Dockerfile" for i in IMAGES]
    assert all(b[-1] == "." for b in builds), "the build context is the repository root"
    loads = [c[-3] for c in calls if c[:3] == ["kind", "load", "docker-image"]]
    assert [image.split(":")[0] for image in loads] == [f"kontinual/{i}" for i in IMAGES]
    install = _helm_install(calls)
    tags = {arg.split("=")[0]: arg.split("=")[1] for arg in install if "=" in arg and ".tag=" in arg}
    assert {f"kontinual/{n}:{tags[k]}" for n, k in (("operator", "image.tag"), ("server", "serverImage.tag"),
                                                      ("trainer", "trainerImage.tag"),
                                                      ("server-openvino", "serverOpenvinoImage.tag"))} == set(loads)
    order = [tuple(c[:3]) for c in calls]
    crd_apply = next(i for i, c in enumerate(calls) if c[-1] == "crds/" and "apply" in c)
    helm_at = order.index(("helm", "upgrade", "--install"))
    example_at = next(i for i, c in enumerate(calls) if "examples/minimal.yaml" in c)
    wait_at = next(i for i, c in enumerate(calls) if "--for=condition=Ready" in c)
    assert crd_apply < helm_at < example_at < wait_at
    assert calls[wait_at][calls[wait_at].index("--for=condition=Ready") + 1] == "cmodel/demo"
    assert all("--context" in c and "kind-kontinual" in c for c in calls if c[0] == "kubectl")
    assert "--kube-context" in install and "kind-kontinual" in install
    out = proc.stdout
    assert "curl -F request=@img.jpg http://127.0.0.1:5543/v2/models/demo/infer/from_files" in out
    assert "port-forward service/demo-server 5543:5543" in out
    assert "get cmodel -w" in out and "describe cmodel demo" in out


def test_what_up_installs_renders_valid_and_uses_the_built_images(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path)
    assert proc.returncode == 0, proc.stderr
    install = _helm_install(calls)
    release, chart = install[3], install[4]
    assert (ROOT / chart).resolve() == CHART
    sets = [install[i + 1] for i, arg in enumerate(install) if arg == "--set"]
    namespace = install[install.index("--namespace") + 1]
    rendered = helm("template", release, str(CHART), "--namespace", namespace,
                    *[a for s in sets for a in ("--set", s)]).stdout
    manifests = [d for d in yaml.safe_load_all(rendered) if d]
    assert validation_errors(manifests) == []
    deployment = one(manifests, "Deployment")
    loads = {c[-3].split(":")[0]: c[-3] for c in calls if c[:3] == ["kind", "load", "docker-image"]}
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == loads["kontinual/operator"]
    env = container_env(deployment)
    assert env["KONTINUAL_SERVER_IMAGE"] == loads["kontinual/server"]
    assert env["KONTINUAL_TRAINER_IMAGE"] == loads["kontinual/trainer"]


def test_up_reuses_an_existing_cluster(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path, SHIM_CLUSTERS="other\nkontinual")
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c[:3] == ["kind", "create", "cluster"]]
    assert "Reusing kind cluster 'kontinual'" in proc.stdout


def test_up_reports_a_model_that_never_gets_ready(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path, SHIM_NOT_READY="1", KONTINUAL_WAIT="1s")
    assert proc.returncode != 0
    assert "ContinualModel 'demo' did not become Ready within 1s" in proc.stderr
    assert any("describe" in c for c in calls if c[0] == "kubectl")


def test_up_stops_at_a_failed_image_build(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path, SHIM_FAIL_BUILD="1")
    assert proc.returncode != 0
    assert [c[:2] for c in calls][-1] == ["docker", "build"], "nothing may run after a failed build"


def test_up_without_docker_says_what_to_install(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path, tools=("kind", "kubectl", "helm"))
    assert proc.returncode != 0
    assert "docker not found" in proc.stderr
    assert calls == []


def test_up_without_kind_says_what_to_install(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path, tools=("docker", "kubectl", "helm"))
    assert proc.returncode != 0 and "kind not found" in proc.stderr


def test_down_deletes_the_cluster_only_if_it_exists(tmp_path: Path) -> None:
    proc, calls = _run("down.sh", tmp_path, SHIM_CLUSTERS="kontinual")
    assert proc.returncode == 0, proc.stderr
    assert ["kind", "delete", "cluster", "--name", "kontinual"] in calls
    proc, calls = _run("down.sh", tmp_path)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    assert not [c for c in calls if c[:2] == ["kind", "delete"]]


def test_kind_config_is_a_kind_cluster_named_like_up_expects() -> None:
    config: dict[str, Any] = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == "kontinual"
    assert [n["role"] for n in config["nodes"]] == ["control-plane"]


def test_up_runs_install_sh_with_the_built_tags_and_the_kind_context(tmp_path: Path) -> None:
    proc, calls = _run("up.sh", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Remove Kontinual and the example from kind-kontinual: KONTINUAL_CONTEXT=kind-kontinual " \
        "hack/uninstall.sh" in proc.stdout
    assert proc.stdout.rstrip().endswith("make down")


def test_install_without_image_tags_names_the_missing_one(tmp_path: Path) -> None:
    proc, calls = _run("install.sh", tmp_path, KONTINUAL_OPERATOR_TAG="a", KONTINUAL_SERVER_TAG="b")
    assert proc.returncode != 0
    assert "KONTINUAL_TRAINER_TAG is not set" in proc.stderr
    assert calls == []


def test_install_on_the_current_context_passes_extra_helm_flags(tmp_path: Path) -> None:
    proc, calls = _run("install.sh", tmp_path, KONTINUAL_OPERATOR_TAG="op1", KONTINUAL_SERVER_TAG="sv1",
                       KONTINUAL_TRAINER_TAG="tr1")
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if "--context" in c or "--kube-context" in c]
    install = _helm_install(calls)
    assert {"image.tag=op1", "serverImage.tag=sv1", "trainerImage.tag=tr1", "image.pullPolicy=Never"} <= set(install)
    assert "  kubectl port-forward service/demo-server 5543:5543 &" in proc.stdout
    proc, calls = _run("install.sh", tmp_path, args=("--set", "sparsezoo.apiUrl=http://mirror:8080"),
                       KONTINUAL_OPERATOR_TAG="op1", KONTINUAL_SERVER_TAG="sv1", KONTINUAL_TRAINER_TAG="tr1")
    assert proc.returncode == 0, proc.stderr
    assert _helm_install(calls)[-2:] == ["--set", "sparsezoo.apiUrl=http://mirror:8080"]


def test_uninstall_deletes_the_example_while_the_operator_runs_then_release_namespace_and_crd(tmp_path: Path) -> None:
    proc, calls = _run("uninstall.sh", tmp_path, KONTINUAL_CONTEXT="kind-kontinual")
    assert proc.returncode == 0, proc.stderr
    example = next(i for i, c in enumerate(calls) if c[0] == "kubectl" and "delete" in c and "-f" in c)
    assert calls[example][calls[example].index("-f") + 1] == "examples/minimal.yaml"
    helm_at = next(i for i, c in enumerate(calls) if c[:2] == ["helm", "uninstall"])
    namespace = next(i for i, c in enumerate(calls) if c[0] == "kubectl" and "namespace" in c and "delete" in c)
    crd = next(i for i, c in enumerate(calls) if c[0] == "kubectl" and "delete" in c
               and "crd/continualmodels.kontinual.io" in c)
    assert example < helm_at < namespace < crd
    assert all("--context" in c and "kind-kontinual" in c for c in calls if c[0] == "kubectl")
    assert "--kube-context" in calls[helm_at]


def test_uninstall_keeps_the_crd_while_other_models_remain(tmp_path: Path) -> None:
    proc, calls = _run("uninstall.sh", tmp_path, SHIM_MODELS_LEFT="continualmodel.kontinual.io/other")
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if "delete" in c and "crd/continualmodels.kontinual.io" in c]
    assert "Keeping CRD continualmodels.kontinual.io: ContinualModels remain (1)" in proc.stdout


@pytest.mark.parametrize("script", ["up.sh", "install.sh", "uninstall.sh", "common.sh", "down.sh", "smoke-images.sh"])
def test_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / "hack" / script)], check=True)
