"""Tests for edgevl_lib.recipe: shipped recipes, YAML round trip, dotted overrides, seed / smoke, and the up-front
refusal of unknown keys, wrong types and impossible values (the message names the key and the file)."""
from __future__ import annotations

import pytest
import yaml

from edgevl_lib.config import BenchmarkConfig
from edgevl_lib.recipe import Recipe, RecipeError, load_recipe, recipe_path, shipped_recipes


def test_shipped_recipes_load_and_carry_their_command_and_expected_result():
    names = shipped_recipes()
    assert {"embedded_cpu", "scannet_vits", "scannet_swint", "eurosat_vits", "sunrgbd_vits",
            "scannet_to_nyuv2"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name
        header = recipe_path(name).read_text(encoding="utf-8").split("\nseed:")[0]
        assert "# Run:" in header and "# Expected:" in header, name
        if name != "embedded_cpu":  # the paper's settings
            assert recipe.teacher.model == "ViT-g-14" and recipe.teacher.pretrained == "laion2b_s34b_b88k"
            assert recipe.stage1.image_size == 224 and recipe.stage1.epochs == 120
            assert (recipe.stage1.lr, recipe.stage1.min_lr, recipe.stage2.lr) == (1e-4, 5e-6, 1e-6)
            assert "PAPER" in header or "not measured" in header


def test_default_recipe_is_the_embedded_cpu_run():
    r = load_recipe()
    assert r.name == "embedded_cpu" and r.data.dataset == "embedded"
    assert (r.stage1.arch, r.stage1.pretrained, r.stage1.epochs, r.stage1.lr, r.stage1.warmup_epochs) == \
        ("tf_efficientnet_lite0", True, 6, 3e-3, 0.3)
    assert (r.stage2.epochs, r.stage2.lr, r.stage2.quant.calibration_batches) == (1, 1e-4, 8)
    assert (r.curation.mode, r.curation.top_fraction, r.curation.views) == ("top_fraction", 0.5, 4)
    assert r.data.benchmark.uninformative == 0.2


def test_yaml_round_trip_keeps_the_hash(tmp_path):
    for recipe in (load_recipe("scannet_vits"), load_recipe(smoke=True),
                   load_recipe(overrides=["stage1.encodings={depth: {kind: colormap, range: [0.5, 4.0]}}"])):
        path = tmp_path / "r.yaml"
        recipe.to_yaml(path)
        again = load_recipe(path, smoke=recipe.smoke)
        assert again.hash == recipe.hash and again.to_dict() == recipe.to_dict()


def test_overrides_seed_and_smoke():
    r = load_recipe(overrides="stage1.epochs=5; curation.tau=0.5", seed=3)
    assert r.stage1.epochs == 5 and r.curation.tau == 0.5
    # the top-level seed seeds every section, and the teacher pretrains on the recipe's benchmark
    assert {r.data.benchmark.seed, r.teacher.seed, r.curation.seed, r.stage1.seed, r.stage2.seed} == {3}
    assert r.teacher.benchmark == r.data.benchmark
    assert load_recipe(seed=3).hash != load_recipe(seed=4).hash
    s = load_recipe(smoke=True)
    assert s.smoke and s.stage1.arch == "vit_tiny_test" and s.data.benchmark == BenchmarkConfig(seed=0).smoke()
    chosen = load_recipe(overrides=["data.classes=[chair, stool, table]"])
    assert chosen.data.benchmark.classes == ("chair", "stool", "table") == chosen.teacher.benchmark.classes


@pytest.mark.parametrize("override, needle", [
    ("stage1.epoch=3", "unknown key 'stage1.epoch'"),
    ("stage9.epochs=3", "unknown key 'stage9'"),
    ("stage1.epochs=abc", "stage1.epochs must be an integer"),
    ("stage1.epochs=2.5", "stage1.epochs must be an integer"),
    ("stage1.pretrained=yes please", "stage1.pretrained must be true or false"),
    ("stage1.modalities=rgb", "stage1.modalities must be a list"),
    ("stage1.epochs=0", "stage1.epochs must be >= 1 (got 0)"),
    ("stage1.batch_size=0", "stage1.batch_size must be >= 1"),
    ("stage1.lr=-1", "stage1.lr must be > 0"),
    ("curation.tau=1.5", "curation.tau must be in [0, 1]"),
    ("curation.mode=median", "curation.mode must be 'threshold', 'top_fraction' or 'class_top_fraction'"),
    ("stage2.batch_size=1", "stage2.batch_size must be >= 2"),
    ("stage1.seed=3", "stage1.seed is set by the recipe itself"),
    ("teacher.benchmark={image_size: 32}", "teacher.benchmark is set by the recipe itself"),
    ("stage2.modalities=[rgb, thermal]", "stage 1 never trained on"),
    ("data.dataset=scannet", "data.root is needed for dataset 'scannet'"),
    ("stage1.epochs", "write key=value"),
])
def test_bad_values_are_refused_naming_key_and_file(override, needle):
    with pytest.raises(RecipeError) as err:
        load_recipe("embedded_cpu", overrides=[override])
    assert needle in str(err.value)
    assert str(recipe_path("embedded_cpu")) in str(err.value) or "on " in str(err.value)


def test_a_broken_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1:\n  epochs: [1, 2\n")
    with pytest.raises(RecipeError, match="bad.yaml: not a valid YAML recipe"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"stage1": {"lr": "fast"}}))
    with pytest.raises(RecipeError, match=r"bad.yaml: stage1.lr must be a number, got 'fast'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_recipe_file_holds_only_what_differs(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("stage1:\n  epochs: 7\n")
    r = load_recipe(path)
    assert r.name == "mine" and r.stage1.epochs == 7 and r.stage1.arch == Recipe().stage1.arch


def test_overrides_win_over_the_smoke_settings():
    r = load_recipe(overrides=["curation.top_fraction=0.8", "stage1.epochs=3"], smoke=True)
    assert r.smoke and r.curation.mode == "top_fraction" and r.curation.top_fraction == 0.8 and r.stage1.epochs == 3
    assert r.stage1.arch == "vit_tiny_test"


def test_train_seed_reseeds_only_the_training_stages():
    base = load_recipe("embedded_cpu")
    r = load_recipe("embedded_cpu", ["train_seed=3"])
    assert r.train_seed == 3 and r.stage1.seed == r.stage2.seed == 3
    assert r.curation.seed == r.teacher.seed == r.data.benchmark.seed == base.seed
    assert r.key("curation") == base.key("curation") and r.key("stage1") != base.key("stage1")
    same = load_recipe("embedded_cpu", [f"train_seed={base.seed}"])
    assert same.train_seed is None and same.hash == base.hash
