"""The study module: statistics over seeds against scipy and hand computations, teacher agreement, the choice under
requirements, and a smoke end-to-end run of the studies (the held-out split, `train.holdout_rows`: test_stage2)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as sst

from edgevl_lib import study
from edgevl_lib.curation import REQUIREMENTS


def test_t_interval_matches_scipy():
    x = [0.012, -0.004, 0.020]
    iv = study.t_interval(x)
    lo, hi = sst.t.interval(0.95, 2, loc=np.mean(x), scale=sst.sem(x))
    assert iv["mean"] == pytest.approx(np.mean(x)) and iv["sd"] == pytest.approx(np.std(x, ddof=1))
    assert (iv["lo"], iv["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert iv["p"] == pytest.approx(sst.ttest_1samp(x, 0).pvalue)
    one = study.t_interval([0.5])
    assert one["mean"] == 0.5 and np.isnan(one["lo"])


def test_claims_over_seeds_pools_seed_averaged_scores():
    rng = np.random.default_rng(0)
    n = 400
    seeds = []
    for s in range(3):
        b = (rng.random((n, 2)) < 0.6).astype(float)
        a = np.where(rng.random((n, 2)) < 0.3, 1.0, b)  # a >= b per sample: a clear gain
        seeds.append({"a": a, "b": b})
    spec = {"a_beats_b": ("a", "b", +1), "b_beats_a": ("b", "a", +1)}
    out = study.claims_over_seeds(seeds, spec)
    diffs = [float(s["a"].mean() - s["b"].mean()) for s in seeds]
    c = out["a_beats_b"]
    assert c["per_seed_diff"] == pytest.approx(diffs)
    assert c["diff"] == pytest.approx(np.mean(diffs))  # the pooled diff is the mean of the seed means
    assert c["verdict"] == "holds" and c["seeds_holding"] == 3
    assert out["b_beats_a"]["verdict"] == "contradicted" and out["b_beats_a"]["seeds_contradicted"] == 3
    assert c["over_seeds"]["mean"] == pytest.approx(np.mean(diffs))


def test_rows_over_seeds():
    tables = [{"r": {"paper_avg": v}} for v in (0.7, 0.8, 0.9)]
    out = study.rows_over_seeds(tables)
    assert out["r"]["mean"] == pytest.approx(0.8) and out["r"]["sd"] == pytest.approx(0.1)
    assert out["r"]["values"] == [0.7, 0.8, 0.9]


def test_teacher_agreement_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = {"rgb": torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.0, 0.2]]),
           "depth": torch.tensor([[0.1, 1.0], [0.2, 1.0], [1.0, 0.0]])}
    # pseudo 0, 1, 1: rgb predicts 0, 1, 0 -> hits 1, 1, 0; depth predicts 1, 1, 0 -> hits 0, 1, 0
    agree = study.teacher_agreement(emb, text, [0, 1, 1], ["rgb", "depth"])
    np.testing.assert_allclose(agree, [0.5, 1.0, 0.0])


def test_parse_configs():
    assert study._parse_configs(["a", "b=stage2.lr=1e-5,stage2.epochs=2"]) == {
        "a": (), "b": ("stage2.lr=1e-5", "stage2.epochs=2")}
    assert study._parse_configs(None) is None


def test_smoke_studies_write_their_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = study.seed_study(seeds=[0, 1], configs={"default": (), "headroom_w4": ("stage2.quant.weight_bits=4",)},
                         out_dir=tmp_path / "seeds", smoke=True)
    saved = json.loads((tmp_path / "seeds" / "metrics.json").read_text())
    assert saved["seeds"] == [0, 1] and set(saved["configs"]) == {"default", "headroom_w4"}
    res = saved["configs"]["default"]
    assert len(res["per_seed"]) == 2 and res["per_seed"][0]["recipe_hash"] != res["per_seed"][1]["recipe_hash"]
    assert {"stage1_fp32", "ptq_int8", "qat_int8", "stage2_int8", "fp32_ld", "fp32_ld_lc"} <= set(res["rows"])
    assert set(res["claims"]) >= {"stage2_int8_beats_fp32", "qat_beats_ptq"}
    assert "ptq_minus_fp32" in saved["headroom"] and m["headroom"]["config"] == "headroom_w4"
    assert (tmp_path / "seeds" / "table.md").read_text().count("| stage2_int8 |") == 2
    assert (tmp_path / "seeds" / "figures" / "rows_over_seeds.png").is_file()
    c = study.curation_study(settings=[("top_fraction", 0.5), ("class_top_fraction", 0.5)],
                             out_dir=tmp_path / "curation", smoke=True)
    assert c["chosen"] in c["settings"] and c["selection"].startswith("highest mean teacher agreement")
    row = c["settings"][c["chosen"]]
    assert row["uninformative"]["total"] > 0 and 0 <= row["holdout_agreement"] <= 1
    assert 0 <= row["holdout_agreement_confident_half"] <= 1 and "holdout_agreement_informative" in row
    n_unin, n_held = c["holdout"]["uninformative"], c["holdout"]["images"]
    if 0 < n_unin < n_held:  # the two parts average back to the whole
        whole = (row["holdout_agreement_informative"] * (n_held - n_unin)
                 + row["holdout_agreement_uninformative"] * n_unin) / n_held
        assert whole == pytest.approx(row["holdout_agreement"])
    assert list(c["vs_chosen_confident_half"]) == [f"{c['chosen']} - {n}" for n in c["settings"] if n != c["chosen"]]
    assert set(row["requirements"]) == set(c["requirements"]) == set(REQUIREMENTS)
    assert c["admitted"] == [n for n in c["settings"] if c["settings"][n]["admitted"]]
    if c["admitted"]:
        assert c["chosen"] in c["admitted"]
    assert (tmp_path / "curation" / "figures" / "curation_study.png").is_file()

    s2 = study.stage2_study(options={"default": (), "qat_only": ("stage2.contrastive_weight=0",)},
                            out_dir=tmp_path / "stage2", smoke=True)
    assert set(s2["options"]) == {"default", "qat_only"} and s2["chosen"] in s2["options"]
    assert s2["options"]["qat_only"]["grad_ratio"] == [None]  # one term only: no ratio
    assert list(s2["vs_chosen_holdout"]) == [f"{s2['chosen']} - {n}" for n in s2["options"] if n != s2["chosen"]]


def test_choose_keeps_the_incumbent_unless_the_best_is_significantly_better():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 400).astype(float)
    close = base.copy()
    close[np.flatnonzero(base == 0)[:8]] = 1.0  # 8 images gained, 6 lost: +0.5 points, the best row within noise
    close[np.flatnonzero(base == 1)[:6]] = 0.0
    far = np.where(rng.random(400) < 0.3, 1.0, base)  # about +15 points
    for best, expect in ((close, "incumbent"), (far, "better")):
        agree = {"incumbent": base, "better": best}
        rows = {n: {"holdout_agreement": float(a.mean())} for n, a in agree.items()}
        c = study._choose(rows, agree, agree, seed=0, incumbent="incumbent")
        assert c["chosen"] == "better" and c["incumbent"] == "incumbent"
        assert c["recommendation"]["setting"] == expect, c["recommendation"]
    same = study._choose({"a": {"holdout_agreement": 1.0}}, {"a": base}, {"a": base}, 0, incumbent="a")
    assert same["recommendation"]["setting"] == "a"


def test_choose_admits_by_requirements_and_leaves_a_failing_incumbent():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 400).astype(float)
    agree = {"lenient": np.where(rng.random(400) < 0.3, 1.0, base), "incumbent": base,
             "strict": np.where(rng.random(400) < 0.1, 1.0, base)}
    rows = {n: {"holdout_agreement": float(a.mean())} for n, a in agree.items()}
    assert rows["lenient"]["holdout_agreement"] > rows["strict"]["holdout_agreement"] > rows["incumbent"][
        "holdout_agreement"]
    c = study._choose(rows, agree, agree, seed=0, incumbent="incumbent", admitted=["strict"])
    assert (c["chosen"], c["best"], c["admitted"]) == ("strict", "lenient", ["strict"])
    assert c["recommendation"]["setting"] == "strict" and "fails the requirements" in c["recommendation"]["why"]
    assert c["vs_chosen_holdout"]["strict - lenient"]["diff"] < 0  # what the requirements cost, tested
    kept = study._choose(rows, agree, agree, seed=0, incumbent="incumbent", admitted=["strict", "incumbent"])
    assert kept["chosen"] == "strict"  # the admitted incumbent moves only if significantly worse
    test = kept["vs_chosen_holdout"]["strict - incumbent"]
    assert kept["recommendation"]["setting"] == ("strict" if test["p_holm"] < 0.05 else "incumbent")
    none = study._choose(rows, agree, agree, seed=0, incumbent="incumbent", admitted=[])
    assert none["chosen"] == "lenient" and none["recommendation"]["setting"] == "incumbent"
    assert "no setting meets" in none["recommendation"]["why"]
    every = study._choose(rows, agree, agree, seed=0, incumbent="incumbent")
    assert every["chosen"] == every["best"] == "lenient" and "admitted" not in every


def test_parse_requirements():
    assert study._parse_requirements(["kept_pseudo_acc>=0.9", "classes_missing<=1"]) == {
        "kept_pseudo_acc": (">=", 0.9), "classes_missing": ("<=", 1.0)}
    assert study._parse_requirements(None) is None
    for bad in ("kept_pseudo_acc=0.9", "kept>=3"):
        with pytest.raises(SystemExit):
            study._parse_requirements([bad])


def test_curation_study_figure_marks_the_settings_that_fail_the_requirements():
    from edgevl_lib import plots

    ci = {"lo": 0.5, "hi": 0.7}
    rows = {n: {"holdout_agreement": 0.6, "holdout_agreement_ci": ci, "eval_paper_avg": 0.6, "eval_paper_avg_ci": ci,
                "kept": 5, "total": 10, "admitted": ok} for n, ok in (("strict", True), ("lenient", False))}
    fig = plots.curation_study(rows, "strict")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["strict  (5/10)", "lenient  (5/10) fails requirements"]
    faces = [line.get_markerfacecolor() for line in fig.axes[0].get_lines() if line.get_marker() == "o"]
    assert faces[1] == "white" and faces[0] != "white"
