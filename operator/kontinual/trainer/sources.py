"""Where --base-weights and --recipe come from: SparseZoo stubs, http(s) URLs and local files, fetched
before the dataset download so that a bad source fails the run first."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from kontinual.trainer.errors import BASE_WEIGHTS_INVALID, RECIPE_INVALID, TrainingError

_LOG = logging.getLogger(__name__)
ZOO_PREFIX = "zoo:"
ZOO_API_ENV = "SPARSEZOO_API_URL"  # read by sparsezoo itself, at import
ZOO_DEFAULT_API = "https://api.neuralmagic.com"
HTTP_TIMEOUT_S = 60
HTTP_ATTEMPTS = 3


def zoo_api() -> str:
    return os.environ.get(ZOO_API_ENV) or ZOO_DEFAULT_API


def split_stub(uri: str) -> tuple[str, dict[str, str]]:
    """`zoo:<stub>?k=v&...` -> (stub without the prefix, query parameters)."""
    stub, _, query = uri[len(ZOO_PREFIX):].partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    return stub, params


def _zoo_model(uri: str, reason: str, flag: str) -> object:
    """sparsezoo's Model for a stub (its GraphQL query); errors name the stub and the API."""
    stub, params = split_stub(uri)
    allowed = {"recipe_type", "recipe", "checkpoint", "deployment"}
    if not stub or set(params) - allowed:
        raise TrainingError(reason, f"{flag} {uri!r}: expected zoo:<stub> with an optional "
                            f"?recipe_type=<type> (e.g. transfer_learn), got parameters {sorted(params)}")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    try:
        from sparsezoo import Model

        return Model(uri)
    except Exception as exc:  # noqa: BLE001 - network errors, unknown stubs and bad answers alike
        raise TrainingError(reason, f"{flag} {uri}: SparseZoo at {zoo_api()} did not provide this model: "
                            f"{_short(exc)} (check the stub, and {ZOO_API_ENV} for a mirror)") from exc


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _download(url: str, dest: Path, reason: str, flag: str) -> Path:
    """GET `url` into `dest` with a few retries on connection errors and 5xx answers."""
    import requests

    last = ""
    for attempt in range(1, HTTP_ATTEMPTS + 1):
        try:
            with requests.get(url, stream=True, timeout=HTTP_TIMEOUT_S) as response:
                if response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                elif response.status_code != 200:
                    raise TrainingError(reason, f"{flag} {_safe_url(url)}: HTTP {response.status_code}")
                else:
                    with dest.open("wb") as handle:
                        for chunk in response.iter_content(1 << 20):
                            handle.write(chunk)
                    return dest
        except requests.RequestException as exc:
            last = type(exc).__name__
        if attempt < HTTP_ATTEMPTS:
            time.sleep(attempt)
    raise TrainingError(reason, f"{flag} {_safe_url(url)}: cannot be downloaded ({last} after "
                        f"{HTTP_ATTEMPTS} attempts)")


def _safe_url(url: str) -> str:
    """The URL without userinfo or query (either may carry a credential)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _local(value: str, reason: str, flag: str, expected: str) -> Path:
    path = Path(value[len("file://"):] if value.startswith("file://") else value)
    if not path.is_file():
        raise TrainingError(reason, f"{flag} {value}: no such file; expected {expected}")
    return path


BASE_WEIGHTS_FORMS = ("zoo:<stub>[?recipe_type=transfer_learn] (a SparseZoo model's training checkpoint), "
                      "a YOLOv5 checkpoint *.pt or a Kontinual model.pt (path, file:// or https:// URL), "
                      "or a yolov5 model config (yolov5n/s/m/l/x.yaml or a path: random init)")


def fetch_base_weights(value: str, work: Path) -> Path:
    """A local checkpoint file for --base-weights (not a config: the caller handles *.yaml)."""
    flag = "--base-weights"
    if value.startswith(ZOO_PREFIX):
        model = _zoo_model(value, BASE_WEIGHTS_INVALID, flag)
        try:
            from sparseml.pytorch.utils import download_framework_model_by_recipe_type

            # SparseML's own rule: model.ckpt.pt for transfer recipes, else model.pt, in the training folder.
            path = Path(download_framework_model_by_recipe_type(model, None, "pt"))
        except Exception as exc:  # noqa: BLE001
            raise TrainingError(BASE_WEIGHTS_INVALID, f"{flag} {value}: SparseZoo at {zoo_api()} has no PyTorch "
                                f"training checkpoint (training/model.pt) for it: {_short(exc)}") from exc
        _LOG.info("base weights: %s from SparseZoo (%s)", value, path)
        return path
    if value.startswith(("https://", "http://")):
        dest = work / ("base-weights" + (Path(urlsplit(value).path).suffix or ".pt"))
        _download(value, dest, BASE_WEIGHTS_INVALID, flag)
        _LOG.info("base weights: downloaded %s (%d bytes)", _safe_url(value), dest.stat().st_size)
        return dest
    return _local(value, BASE_WEIGHTS_INVALID, flag, BASE_WEIGHTS_FORMS)


def fetch_recipe(value: str, work: Path) -> Path:
    """A local recipe file (YAML, or Markdown with YAML front matter) for a zoo:, http(s) or file source."""
    flag = "--recipe"
    if value.startswith(ZOO_PREFIX):
        model = _zoo_model(value, RECIPE_INVALID, flag)
        recipes = model.recipes  # type: ignore[attr-defined]
        available = recipes.available or []
        wanted = split_stub(value)[1].get("recipe_type") or split_stub(value)[1].get("recipe")
        if wanted and not any(name.startswith(f"recipe_{wanted}") for name in available):
            # sparsezoo would fall back to the first recipe with a warning: a different recipe than asked for.
            raise TrainingError(RECIPE_INVALID, f"{flag} {value}: SparseZoo has no recipe_type={wanted} for it "
                                f"(its recipes: {', '.join(available) or 'none'})")
        try:
            path = Path(recipes.default.path)
        except Exception as exc:  # noqa: BLE001
            raise TrainingError(RECIPE_INVALID, f"{flag} {value}: its recipe cannot be downloaded from "
                                f"SparseZoo at {zoo_api()}: {_short(exc)}") from exc
        _LOG.info("recipe: %s from SparseZoo (%s)", value, path.name)
        return path
    if value.startswith(("https://", "http://")):
        suffix = Path(urlsplit(value).path).suffix
        dest = work / ("recipe" + (suffix if suffix in (".md", ".yaml", ".yml") else ".yaml"))
        return _download(value, dest, RECIPE_INVALID, flag)
    return _local(value, RECIPE_INVALID, flag, "a SparseML recipe file (YAML or Markdown front matter), "
                  "zoo:<stub>?recipe_type=<type>, an https:// URL, or a built-in recipe name")

