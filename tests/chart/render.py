"""Render, lint and validate the Helm chart with the pinned offline helm binary."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.support.tools import helm_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kontinual"
RELEASE = "kontinual"
RELEASE_NAMESPACE = "kontinual-system"
# The oldest and newest schema sets kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")


class HelmFailed(AssertionError):
    """helm exited non-zero; the message carries its stderr."""


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm; raise HelmFailed with helm's own message on failure."""
    proc = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HelmFailed(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def set_args(values: dict[str, str] | None) -> list[str]:
    """`--set k=v` pairs (helm's own syntax, e.g. {"watchNamespaces": "{a,b}"})."""
    args: list[str] = []
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render(values: dict[str, str] | None = None, *extra: str) -> list[dict[str, Any]]:
    """`helm template` of the chart (CRDs included), parsed into manifests."""
    out = helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--include-crds",
               *set_args(values), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def notes(values: dict[str, str] | None = None) -> str:
    """The rendered NOTES.txt (what `helm install` prints after installing).

    `helm template` never renders NOTES.txt and `helm install --dry-run` needs a cluster, so a
    copy of the chart renders the same NOTES.txt text through helm's `tpl` into a ConfigMap.
    """
    with tempfile.TemporaryDirectory(prefix="kontinual-chart-") as tmp:
        chart = Path(tmp) / CHART.name
        shutil.copytree(CHART, chart)
        (chart / "notes-under-test.txt").write_bytes((CHART / "templates" / "NOTES.txt").read_bytes())
        (chart / "templates" / "notes-under-test.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-under-test}\n"
            'data: {notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}}\n')
        out = helm("template", RELEASE, str(chart), "--namespace", RELEASE_NAMESPACE,
                   "--show-only", "templates/notes-under-test.yaml", *set_args(values)).stdout
    return str(yaml.safe_load(out)["data"]["notes"])


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind]


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def validation_errors(manifests: list[dict[str, Any]]) -> list[str]:
    """kubernetes-validate --strict on every built-in kind, for each Kubernetes version we check."""
    errors: list[str] = []
    for manifest in manifests:
        name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{name} against {version}: {exc.message} at {list(exc.absolute_path)}")
    return errors


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}
