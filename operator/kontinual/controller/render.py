"""`kontinual render -f CR.yaml`: print the children the operator would create, touching no cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from kontinual.common.names import GROUP, KIND
from kontinual.controller import builders
from kontinual.common import yamlio
from kontinual.controller.settings import Settings
from kontinual.controller.spec import parse
from kontinual.controller.specfields import SpecError


class RenderError(ValueError):
    """The input is not something we can render; the message says what is expected."""


def _load(filename: str, stdin: TextIO) -> list[dict[str, Any]]:
    try:
        text = stdin.read() if filename == "-" else Path(filename).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except OSError as exc:
        raise RenderError(f"cannot read {filename}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RenderError(f"{filename} is not valid YAML: {exc}") from None
    models = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND
              and str(d.get("apiVersion", "")).startswith(f"{GROUP}/")]
    if not models:
        raise RenderError(f"{filename} holds no {KIND} (apiVersion {GROUP}/v1alpha1)")
    return models


def render(docs: list[dict[str, Any]], settings: Settings, *, training_job: bool = False) -> list[dict[str, Any]]:
    """Every child of every ContinualModel in `docs`; SpecError names the object and field."""
    out: list[dict[str, Any]] = []
    for doc in docs:
        meta = doc.get("metadata")
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        try:
            spec = parse(doc, settings)
        except SpecError as exc:
            raise SpecError(f"{KIND} {name}: {exc}") from None
        out += builders.serving_children(spec, settings)
        if training_job:
            if spec.training is None:
                raise SpecError(f"{KIND} {name}: --training-job needs spec.training")
            from kontinual.controller import jobs

            out.append(jobs.training_job(spec, settings, version=1, base_weights=None))
    return out


def main(filename: str, *, training_job: bool = False, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    try:
        objs = render(_load(filename, stdin), Settings.from_env(), training_job=training_job)
    except (RenderError, SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stdout.write(yamlio.dump_all(objs))
    return 0
