"""`kontinual render -f`: the real command prints valid Kubernetes objects, or a clear error naming the field."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kontinual.controller import builders, jobs
from kontinual.controller.settings import Settings
from kontinual.controller.spec import parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
KUBERNETES_VERSION = "1.30"  # validated offline against this release's schemas (strict: no unknown fields)
FAKE_KEY = "rf-FAKE-key-3f9a1c77d2e04b51"


def kontinual_bin() -> str:
    local = Path(sys.executable).parent / "kontinual"
    found = str(local) if local.exists() else shutil.which("kontinual")
    assert found, "the kontinual console script is not installed (pip install -e .)"
    return found


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTINUAL_")}
    return subprocess.run([kontinual_bin(), "render", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def example_files() -> list[Path]:
    return [p for p in sorted(EXAMPLES.glob("*.yaml"))
            if any(d and d.get("kind") == "ContinualModel" for d in yaml.safe_load_all(p.read_text()))]


def write(tmp_path: Path, docs: list[dict[str, Any]]) -> Path:
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def cr(spec: dict[str, Any], name: str = "demo") -> dict[str, Any]:
    return {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel", "metadata": {"name": name},
            "spec": spec}


ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"


def test_both_examples_exist() -> None:
    assert {p.name for p in example_files()} >= {"minimal.yaml", "soccer.yaml"}


@pytest.mark.parametrize("example", [p.name for p in example_files()])
def test_render_prints_objects_that_validate_strictly(example: str) -> None:
    result = run("-f", str(EXAMPLES / example))
    assert result.returncode == 0, result.stderr
    objs = documents(result.stdout)
    assert {o["kind"] for o in objs} >= {"ConfigMap", "Deployment", "Service"}
    for obj in objs:
        assert kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize("example", [p.name for p in example_files()])
def test_render_prints_what_the_operator_builds(example: str) -> None:
    result = run("-f", str(EXAMPLES / example))
    assert result.returncode == 0, result.stderr
    expected = []
    for doc in documents((EXAMPLES / example).read_text()):
        if doc.get("kind") == "ContinualModel":
            expected += builders.serving_children(parse(doc, Settings()), Settings())
    assert documents(result.stdout) == expected


def test_render_training_job_validates() -> None:
    result = run("-f", str(EXAMPLES / "soccer.yaml"), "--training-job")
    assert result.returncode == 0, result.stderr
    objs = documents(result.stdout)
    (job,) = [o for o in objs if o["kind"] == "Job"]
    assert job["metadata"]["name"] == "soccer-train-1"
    for obj in objs:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    spec = parse(documents((EXAMPLES / "soccer.yaml").read_text())[0], Settings())
    assert job == jobs.training_job(spec, Settings(), version=1, base_weights=None)
    # The first run starts where the seed starts: the served stub's checkpoint and transfer recipe.
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    stub = f"{spec.model.uri}?recipe_type=transfer_learn"
    assert args[args.index("--base-weights") + 1] == stub and args[args.index("--recipe") + 1] == stub


@pytest.mark.parametrize("example", [p.name for p in example_files()])
def test_no_example_trains_from_random_weights(example: str) -> None:
    """A yolov5 *.yaml config as --base-weights is random init: only an example that says so may do it."""
    text = (EXAMPLES / example).read_text()
    result = run("-f", str(EXAMPLES / example), "--training-job")
    for job in (o for o in documents(result.stdout) if o.get("kind") == "Job"):
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        weights = args[args.index("--base-weights") + 1]
        assert not weights.endswith((".yaml", ".yml")) or "random init" in text, (example, weights)


def test_rendered_owner_references_are_acceptable_to_an_api_server() -> None:
    """The API server rejects an ownerReference whose uid is empty ("uid must not be empty")."""
    result = run("-f", str(EXAMPLES / "minimal.yaml"))
    assert result.returncode == 0, result.stderr
    for obj in documents(result.stdout):
        for ref in obj["metadata"].get("ownerReferences", []):
            assert ref.get("uid"), f"{obj['kind']} {obj['metadata']['name']}: ownerReference without uid"


def test_stdin_dash_renders_the_same() -> None:
    text = (EXAMPLES / "soccer.yaml").read_text()
    from_stdin = run("-f", "-", stdin=text)
    from_file = run("-f", str(EXAMPLES / "soccer.yaml"))
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == from_file.stdout and from_stdin.stdout


def test_other_objects_in_the_stream_are_skipped_and_their_secrets_not_printed() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "roboflow"},
              "stringData": {"apiKey": FAKE_KEY}}
    logging = {"roboflow": {"workspace": "acme", "project": "p", "apiKeySecretRef": {"name": "roboflow"}}}
    text = yaml.safe_dump_all([secret, cr({"model": {"uri": ZOO}, "dataLogging": logging})])
    result = run("-f", "-", stdin=text)
    assert result.returncode == 0, result.stderr
    assert FAKE_KEY not in result.stdout + result.stderr
    assert "Secret" not in {o["kind"] for o in documents(result.stdout)}


def test_several_continual_models_render_together(tmp_path: Path) -> None:
    path = write(tmp_path, [cr({"model": {"uri": ZOO}}, "one"), cr({"model": {"uri": ZOO}}, "two")])
    result = run("-f", str(path))
    assert result.returncode == 0, result.stderr
    names = [(o["kind"], o["metadata"]["name"]) for o in documents(result.stdout)]
    assert ("Deployment", "one-server") in names and ("Deployment", "two-server") in names


@pytest.mark.parametrize("spec, field", [
    ({"model": {"uri": "s3://bucket/model.onnx"}}, "spec.model.uri"),
    ({"model": {"uri": ZOO}, "training": {"imageSize": 100, "dataset": {
        "workspace": "a", "project": "b", "apiKeySecretRef": {"name": "rf"}}}}, "spec.training.imageSize"),
    ({"model": {"uri": ZOO}, "serving": {"replicas": -1}}, "spec.serving.replicas"),
    ({"model": {"uri": ZOO}, "training": {"epochs": 3}}, "spec.training.dataset.apiKeySecretRef"),
    ({"model": {"uri": "https://models.example.com/m.onnx"}, "training": {"dataset": {
        "workspace": "a", "project": "b", "apiKeySecretRef": {"name": "rf"}}}}, "spec.training.baseWeights"),
])
def test_invalid_cr_exits_non_zero_naming_the_field(tmp_path: Path, spec: dict[str, Any], field: str) -> None:
    result = run("-f", str(write(tmp_path, [cr(spec)])))
    assert result.returncode != 0
    assert field in result.stderr and "demo" in result.stderr  # which object, which field
    assert result.stdout == ""  # nothing half-rendered
    assert "Traceback" not in result.stderr


def test_file_without_a_continual_model_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}])
    result = run("-f", str(path))
    assert result.returncode != 0
    assert "ContinualModel" in result.stderr and "kontinual.io/v1alpha1" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_file_and_bad_yaml_are_clear_errors(tmp_path: Path) -> None:
    missing = run("-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode != 0 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ContinualModel\nspec: [unclosed\n")
    result = run("-f", str(bad))
    assert result.returncode != 0 and "YAML" in result.stderr and "Traceback" not in result.stderr


def test_training_job_without_training_is_a_clear_error(tmp_path: Path) -> None:
    result = run("-f", str(EXAMPLES / "minimal.yaml"), "--training-job")
    assert result.returncode != 0 and "spec.training" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("metadata", ["{name: 123}", "demo"])
def test_bad_metadata_is_a_clear_error_not_a_traceback(metadata: str) -> None:
    text = f"apiVersion: kontinual.io/v1alpha1\nkind: ContinualModel\nmetadata: {metadata}\nspec: {{model: {{uri: {ZOO}}}}}\n"
    result = run("-f", "-", stdin=text)
    assert result.returncode != 0 and result.stdout == ""
    assert "metadata" in result.stderr and "Traceback" not in result.stderr, result.stderr
