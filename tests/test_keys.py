"""Tests for edgevl_lib.keys: one key rule for every stage, volatile settings declared where they are defined."""
from __future__ import annotations

import hashlib
import json

from edgevl_lib import keys
from edgevl_lib.config import Stage1Config, Stage2Config
from edgevl_lib.recipe import load_recipe

STAGES = ("curation", "stage1", "stage2", "analysis", "benchmark")


def _keys(*overrides: str) -> dict[str, str]:
    recipe = load_recipe("embedded_cpu", overrides=list(overrides))
    return {s: recipe.key(s) for s in STAGES}


def test_digest_is_sha256_of_canonical_json():
    obj = {"b": 1, "a": [2, 3]}
    expect = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert keys.digest(obj) == expect == keys.digest({"a": (2, 3), "b": 1})


def test_stable_fields_drop_what_cannot_change_a_result():
    s1 = keys.stable_fields(Stage1Config())
    assert not {"num_workers", "device", "checkpoint_dir"} & set(s1) and {"epochs", "lr", "seed"} <= set(s1)
    assert not {"num_workers", "device", "checkpoint_dir"} & set(keys.stable_fields(Stage2Config()))


def test_curation_tau_changes_curation_and_everything_downstream():
    base, changed = _keys(), _keys("curation.tau=0.5")
    assert all(base[s] != changed[s] for s in STAGES)


def test_workers_device_and_folders_change_no_key():
    base = _keys()
    for override in ("stage1.num_workers=7", "stage1.device=cpu", "stage2.device=cuda:1", "stage2.num_workers=3",
                     "data.benchmark.workers=1", "teacher.device=cpu", "teacher.allow_download=true",
                     "stage1.checkpoint_dir=/tmp/x"):
        assert _keys(override) == base, override
    assert load_recipe(overrides=["stage1.num_workers=7"]).hash == load_recipe().hash


def test_stage2_lr_changes_stage2_and_downstream_only():
    base, changed = _keys(), _keys("stage2.lr=1e-6")
    assert base["curation"] == changed["curation"] and base["stage1"] == changed["stage1"]
    assert all(base[s] != changed[s] for s in ("stage2", "analysis", "benchmark"))


def test_analysis_and_benchmark_settings_touch_only_their_stage():
    base = _keys()
    k = _keys("analysis.k=5")
    assert k["analysis"] != base["analysis"] and all(k[s] == base[s] for s in STAGES if s != "analysis")
    t = _keys("benchmark.runs=50")
    assert t["benchmark"] != base["benchmark"] and all(t[s] == base[s] for s in STAGES if s != "benchmark")


def test_inputs_the_recipe_cannot_know_enter_the_key():
    recipe = load_recipe()
    assert recipe.key("stage1", embeddings="a") != recipe.key("stage1", embeddings="b")
