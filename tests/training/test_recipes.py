"""The built-in recipes: each builds a SparseML manager whose schedule follows --epochs, and the aggressive
one prunes YOLOv5s layer by layer as its comments say (the speed benchmark's model: benchmarks/runtimes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontinual.trainer import recipes


@pytest.mark.parametrize("name", recipes.builtin_recipes())
def test_every_builtin_recipe_builds_and_follows_the_epochs(name: str, tmp_path: Path) -> None:
    text, source = recipes.read_recipe(name, tmp_path)
    recipe = recipes.build_recipe(text, source, epochs=4, base_quantized=False)
    assert source == name
    assert round(recipe.manager.max_epochs) == 4
    assert recipe.quantizes  # every built-in ends with INT8 QAT (DeepSparse's fast format)


def test_the_aggressive_recipe_keeps_the_first_conv_and_the_head_dense(tmp_path: Path) -> None:
    import yolov5
    from sparseml.pytorch.optim import ScheduledModifierManager
    from sparseml.pytorch.sparsification.pruning import GMPruningModifier
    from yolov5.models.yolo import Model

    from kontinual.trainer.model import conv_sparsity

    text, source = recipes.read_recipe("prune-quantize-aggressive", tmp_path)
    recipe = recipes.build_recipe(text, source, epochs=4, base_quantized=False)
    model = Model(str(Path(yolov5.__file__).parent / "models" / "yolov5s.yaml"), nc=4)
    pruning = [m for m in recipe.manager.iter_modifiers() if isinstance(m, GMPruningModifier)]
    ScheduledModifierManager(pruning).apply(model, loggers=recipes.sparseml_loggers())  # the schedule's end
    overall, per_layer = conv_sparsity(model)

    dense = {name for name in per_layer if name == "model.0.conv" or name.startswith("model.24.")}
    assert dense == {"model.0.conv", "model.24.m.0", "model.24.m.1", "model.24.m.2"}
    assert all(per_layer[name] == 0 for name in dense)
    three_by_three = {name for name, module in model.named_modules()
                      if name in per_layer and module.kernel_size == (3, 3)}
    assert len(three_by_three) == 17  # 6 downsampling convs + 11 bottleneck convs
    for name, sparsity in per_layer.items():
        if name in dense:
            continue
        expected = 0.95 if name in three_by_three else 0.9
        assert sparsity == pytest.approx(expected, abs=0.002), name  # no conv is left out by the patterns
    assert 0.92 < overall < 0.95
