"""SparseML recipes: built-in ones, loading and checking a recipe, and building its manager."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontinual.common.contract import BUILTIN_RECIPES, builtin_recipe
from kontinual.trainer.errors import RECIPE_INVALID, TrainingError

_LOG = logging.getLogger(__name__)
RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = BUILTIN_RECIPES[0]
# yolov5's Concat and Detect take lists; wrapping them for QAT breaks (torch >= 2.9, fix 4).
QAT_IGNORE = ("Concat", "Detect")


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


@dataclass
class Recipe:
    """A recipe's text, where it came from, and its manager for this run."""

    text: str
    source: str
    manager: Any  # sparseml ScheduledModifierManager
    quantizes: bool  # the manager (still) holds a QuantizationModifier


def read_recipe(spec: str | None, work: Path) -> tuple[str, str]:
    """(text, source) of `--recipe`: a built-in recipe name, a file (YAML, or Markdown with YAML front
    matter as SparseZoo ships recipes), an http(s) URL, or zoo:<stub>?recipe_type=<type>."""
    from kontinual.trainer.sources import fetch_recipe

    spec = spec or DEFAULT_RECIPE
    spec = builtin_recipe(spec) or spec
    if (RECIPES_DIR / f"{spec}.yaml").is_file() and not Path(spec).is_file():
        path = RECIPES_DIR / f"{spec}.yaml"
    elif spec.startswith(("zoo:", "http://", "https://", "file://")) or Path(spec).is_file():
        path = fetch_recipe(spec, work)
    else:
        raise TrainingError(RECIPE_INVALID, f"--recipe {spec!r}: no such file, and not a built-in recipe "
                            f"({', '.join(builtin_recipes())}), zoo:<stub>?recipe_type=<type> or an https:// URL")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(RECIPE_INVALID, f"--recipe {spec}: cannot be read: {exc}") from exc
    text = _front_matter(text) if path.suffix == ".md" or text.lstrip().startswith("---") else text
    if not text.strip():
        raise TrainingError(RECIPE_INVALID, f"--recipe {spec}: empty (expected SparseML recipe YAML, or a "
                            "Markdown recipe card with YAML front matter)")
    return text, spec if not Path(spec).is_file() else str(path)


def _front_matter(text: str) -> str:
    """The YAML between the leading `---` lines of a Markdown recipe card (SparseML's own rule)."""
    match = re.search(r"^\s*(?:---|\+\+\+)(.*?)(?:---|\+\+\+)", text, re.S | re.M)
    return match.group(1) if match else ""


def build_recipe(text: str, source: str, *, epochs: int, base_quantized: bool) -> Recipe:
    """The SparseML manager of a recipe with num_epochs = epochs; errors name the recipe."""
    from sparseml.pytorch.optim import ScheduledModifierManager
    from sparseml.pytorch.sparsification.quantization import QuantizationModifier

    variables = {"num_epochs": epochs} if "num_epochs" in text else None
    try:
        manager = ScheduledModifierManager.from_yaml(text, recipe_variables=variables)
    except Exception as exc:  # noqa: BLE001 - any parse error is the recipe's
        raise TrainingError(RECIPE_INVALID, f"recipe {source} is not a valid SparseML recipe: "
                            f"{type(exc).__name__}: {exc}") from exc
    modifiers = list(manager.iter_modifiers())
    if not modifiers:
        raise TrainingError(RECIPE_INVALID, f"recipe {source} has no modifiers; expected e.g. a "
                            "GMPruningModifier and a QuantizationModifier")
    quantizers = [m for m in modifiers if isinstance(m, QuantizationModifier)]
    _ignore_lists(quantizers)
    if quantizers and base_quantized:
        # The base is quantized already: its QAT structure continues from the first step.
        _LOG.info("base model is quantized already: QAT continues from the base's quantization, "
                  "the recipe's QuantizationModifier is not applied a second time")
        manager = ScheduledModifierManager([m for m in modifiers if m not in quantizers])
        quantizers = []
    if manager.max_epochs and int(round(manager.max_epochs)) != epochs:
        _LOG.warning("recipe %s schedules %s epochs but --epochs is %d: training runs %d epochs; "
                     "define num_epochs in the recipe so --epochs can set it",
                     source, manager.max_epochs, epochs, epochs)
    return Recipe(text, source, manager, bool(quantizers))


def _ignore_lists(quantizers: list[Any]) -> None:
    for modifier in quantizers:
        modifier.ignore = sorted(set(modifier.ignore or []) | set(QAT_IGNORE))


def structure_manager(text: str) -> Any:
    """The manager that recreates a checkpoint's QAT structure (the recipe it was quantized with)."""
    from sparseml.pytorch.optim import ScheduledModifierManager
    from sparseml.pytorch.sparsification.quantization import QuantizationModifier

    manager = ScheduledModifierManager.from_yaml(text)
    _ignore_lists([m for m in manager.iter_modifiers() if isinstance(m, QuantizationModifier)])
    return manager


def sparseml_loggers() -> Any:
    """SparseML's modifier logs through our logger (its default writes files under ./sparse_logs)."""
    from sparseml.pytorch.utils import LoggerManager, PythonLogger

    quiet = logging.getLogger("kontinual.sparseml")
    quiet.setLevel(logging.WARNING)
    return LoggerManager([PythonLogger(logger=quiet)], log_python=False)
