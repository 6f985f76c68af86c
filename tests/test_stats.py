"""Tests for edgevl_lib.stats against hand computations and scipy.stats."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from edgevl_lib import stats


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    a = np.array([1, 1, 1, 0, 1, 0, 1, 1])
    b = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    got = stats.mcnemar(a, b)
    assert (got["n10"], got["n01"]) == (3, 1)
    # hand: two-sided exact binomial, P(X <= 1) + P(X >= 3) for X ~ Bin(4, 1/2) = (1 + 4 + 4 + 1) / 16
    assert got["p"] == pytest.approx(10 / 16)
    assert got["p"] == pytest.approx(sps.binomtest(3, 4, 0.5).pvalue)
    assert stats.mcnemar(a, a)["p"] == 1.0
    # N x M outcomes count every (sample, modality) pair
    assert stats.mcnemar(np.ones((5, 2)), np.zeros((5, 2)))["n10"] == 10


def test_holm_matches_a_hand_computation():
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}
    # sorted: a .01*4 = .04; c .03*3 = .09; b .04*2 = .08 -> max(.09, .08) = .09; d .5*1 = .5
    assert stats.holm(p) == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.5})
    assert stats.holm({"x": 0.7, "y": 0.6}) == {"x": 1.0, "y": 1.0}


def test_bootstrap_ci_of_a_proportion_is_close_to_the_normal_interval():
    rng = np.random.default_rng(1)
    x = rng.random(2000) < 0.7
    ci = stats.bootstrap_ci(x, n_boot=4000, seed=0)
    half = 1.96 * math.sqrt(x.mean() * (1 - x.mean()) / len(x))
    assert ci["mean"] == pytest.approx(x.mean())
    assert ci["lo"] == pytest.approx(x.mean() - half, abs=0.004) and ci["hi"] == pytest.approx(x.mean() + half, abs=0.004)
    assert stats.bootstrap_ci(np.ones(10)) == {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": 10}


def test_bootstrap_keeps_a_samples_modalities_together():
    # per-sample mean over two perfectly anti-correlated modalities is constant: no sampling spread at all
    s = np.stack([np.r_[np.ones(50), np.zeros(50)], np.r_[np.zeros(50), np.ones(50)]], axis=1)
    ci = stats.bootstrap_ci(s)
    assert ci["lo"] == ci["hi"] == ci["mean"] == 0.5


def test_paired_bootstrap_difference_ci_and_p():
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.6
    better = base | (rng.random(1000) < 0.2)
    got = stats.paired_bootstrap(better, base, seed=0)
    assert got["diff"] == pytest.approx(better.mean() - base.mean())
    assert got["lo"] > 0 and got["p"] == pytest.approx(2 / (stats.N_BOOT + 1))  # no resample crosses 0
    same = stats.paired_bootstrap(base, base)
    assert same["diff"] == 0 and same["p"] == 1.0
    with pytest.raises(ValueError, match="same samples"):
        stats.paired_bootstrap(base, base[:10])


def test_verdicts_and_claims():
    assert stats.verdict(0.02, 0.01, +1) == "holds"
    assert stats.verdict(-0.02, 0.01, +1) == "contradicted"
    assert stats.verdict(0.02, 0.2, +1) == "not significant"
    rng = np.random.default_rng(0)
    fp32 = rng.random((500, 2)) < 0.6
    scores = {"fp32": fp32, "good": fp32 | (rng.random((500, 2)) < 0.3), "same": fp32.copy(),
              "bad": fp32 & (rng.random((500, 2)) < 0.5)}
    block = stats.claims({"good_beats": ("good", "fp32", 1), "same_beats": ("same", "fp32", 1),
                          "bad_beats": ("bad", "fp32", 1)}, scores)
    assert [block[k]["verdict"] for k in ("good_beats", "same_beats", "bad_beats")] == \
        ["holds", "not significant", "contradicted"]
    assert all(b["p_holm"] >= b["p"] for b in block.values())
    assert stats.claim_lines(block)[0].startswith("good_beats: good - fp32 = +")


def test_above_chance_is_the_one_sided_exact_binomial_test():
    from scipy.stats import binomtest

    r = stats.above_chance(0.12, 100, 10)
    assert r["p"] == pytest.approx(binomtest(12, 100, 0.1, alternative="greater").pvalue)
    assert r["verdict"] == "at chance" and r["chance"] == 0.1
    # 10 / 10 hits against 1/2: p = 0.5 ** 10 by hand
    assert stats.above_chance(1.0, 10, 2)["p"] == pytest.approx(0.5 ** 10)
    assert stats.above_chance(0.195, 750, 15)["verdict"] == "above chance"


def test_warn_at_chance_logs_only_the_modalities_at_chance(caplog):
    results = {"rgb": stats.above_chance(0.82, 750, 15), "depth": stats.above_chance(0.07, 750, 15)}
    assert results["rgb"]["verdict"] == "above chance" and results["depth"]["verdict"] == "at chance"
    with caplog.at_level("WARNING", logger="edgevl_lib.stats"):
        messages = stats.warn_at_chance(results)
    assert len(messages) == 1 and "depth is at chance" in messages[0] and "1/15" in messages[0]
    assert [r.getMessage() for r in caplog.records] == messages
    assert stats.warn_at_chance({"rgb": results["rgb"]}) == []
