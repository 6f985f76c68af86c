"""Studies: what one run cannot answer (training seeds, curation settings), as commands that write reports/study/.

    python -m edgevl_lib.study seeds     [--recipe R] [--seeds 0 1 2] [--config NAME=k=v,k=v ...]
    python -m edgevl_lib.study curation  [--recipe R] [--holdout 0.2] [--equal-steps] [--settings MODE:VALUE ...]
                                         [--require NAME>=X ... | --no-requirements] [--budget-epochs 3]
    python -m edgevl_lib.study stage2    [--recipe R] [--config NAME=k=v,k=v ...]

**Seeds** (`seed_study`, reports/study/metrics.json). For each configuration c (the recipe plus overrides; default
`default` and `headroom_w4`, the recipe with 4-bit weights) and each training seed s (`Recipe.train_seed`: data,
teacher and curation stay those of the recipe's seed), stage 1 and stage 2 run (or are reused from the cache) and
the ablation table is evaluated on the eval split. With x_{c,s,r,i} the paper-average score of row r on eval
sample i (mean over the trained modalities of the 0/1 zero-shot outcome):

    row mean +- sd over seeds:   a_{c,s,r} = mean_i x_{c,s,r,i};  mean_s a, sd_s a (ddof 1)
    claim (a - b), per seed:     d_s = a_{c,s,a} - a_{c,s,b}; t interval mean(d) +- t_{.975, S-1} sd(d) / sqrt(S)
    pooled claim test:           paired bootstrap over samples i of xbar_{c,r,i} = mean_s x_{c,s,r,i} (rows a, b),
                                 Holm over the claims of a configuration -> verdict (holds / contradicted / not
                                 significant); `seeds_holding` counts the seeds whose own test (McNemar, Holm)
                                 holds.

**Curation** (`curation_study`, reports/study/curation/metrics.json). A seeded share `holdout` of the adapt split is
set aside (never trained on). The teacher's stored embeddings of K views are built once for the rest; each setting
(mode, value) curates from the same scores, trains the recipe's stage-1 student on its kept images, and is scored
label-free on the held-out images: teacher agreement

    agree_i = mean_{m in trained modalities} [argmax_k cos(S(x_i^m), t_k) == pseudo_i],   k over the superset

(pseudo_i: the teacher's RGB pseudo-label). Settings are first admitted by the stated requirements of a default
curation (`curation.REQUIREMENTS`: share removed, pseudo-label accuracy, classes kept, uninformative frames discarded,
measured on the adapt split with its labels); the admitted setting with the highest mean agreement is the one to use,
and paired bootstrap tests against it (Holm) say which others are indistinguishable and what the requirements cost
against the highest setting overall (`best`). Eval-split zero-shot of each student is reported beside it, never used
to choose.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import torch

from . import stats, utils
from .cache import build_embedding_cache
from .config import CurationConfig
from .curation import (REQUIREMENTS, check_requirements, curate_by_confidence, curation_report, known_uninformative,
                       meets_requirements, superset_text)
from .data import preload
from .evaluate import embed_model
from .pipeline import run_curation, run_stage1, run_stage2
from .recipe import DEFAULT_RECIPE, Recipe, load_recipe
from .stage2 import CLAIMS as STAGE2_CLAIMS, evaluate_variants
from .train import holdout_rows, train_stage1

log = logging.getLogger(__name__)

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
DEFAULT_CONFIGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "headroom_w4": ("stage2.quant.weight_bits=4",),
}
"""Configuration name -> overrides on the recipe. `headroom_w4`: W4A8 (4-bit weights, int8 activations), a
configuration where post-training quantization costs accuracy, so stage 2 has something to recover."""

DEFAULT_CURATION_SETTINGS: tuple[tuple[str, float], ...] = (
    ("threshold", 0.25), ("threshold", 0.5), ("threshold", 0.7),
    ("top_fraction", 0.25), ("top_fraction", 0.5), ("top_fraction", 0.75),
    ("class_top_fraction", 0.25), ("class_top_fraction", 0.5), ("class_top_fraction", 0.75),
)
"""(mode, tau or fraction): the paper's threshold sweep (0.25 is its default), the released code's top fraction and
the class-balanced top fraction."""


# ----------------------------------------------------------------------------------------------
# Statistics over seeds
# ----------------------------------------------------------------------------------------------


def t_interval(values: Sequence[float], alpha: float = stats.ALPHA) -> dict[str, float]:
    """Mean, sd (ddof 1) and the t interval `mean +- t_{1-alpha/2, n-1} sd / sqrt(n)` of per-seed values, with the
    one-sample t test's p against 0 (scipy.stats.ttest_1samp); sd / interval / p are nan for one value."""
    from scipy import stats as sst

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "sd": float("nan"), "lo": float("nan"), "hi": float("nan"), "p": float("nan"), "n": 1}
    sd = float(x.std(ddof=1))
    half = float(sst.t.ppf(1 - alpha / 2, len(x) - 1)) * sd / np.sqrt(len(x))
    p = float(sst.ttest_1samp(x, 0.0).pvalue) if sd > 0 else (0.0 if mean != 0 else 1.0)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "p": p, "n": int(len(x))}


def claims_over_seeds(per_seed_scores: Sequence[Mapping[str, np.ndarray]],
                      spec: Mapping[str, tuple[str, str, int]] = STAGE2_CLAIMS, seed: int = 0) -> dict[str, Any]:
    """The claims of `spec` over seeds (module docstring): per-seed diffs and their t interval, the pooled paired
    bootstrap on seed-averaged per-sample scores with Holm's correction and its verdict, and `seeds_holding`.

    Args:
        per_seed_scores: one {row: N x M per-sample scores} per seed (`stats.paper_scores`), same samples.
        spec: {claim: (row a, row b, expected sign)}.
    """
    pooled = {r: np.mean([np.asarray(s[r], dtype=np.float64) for s in per_seed_scores], axis=0)
              for r in per_seed_scores[0]}
    pooled_claims = stats.claims(spec, pooled, binary=False, seed=seed)
    per_seed = [stats.claims(spec, s, seed=seed) for s in per_seed_scores]
    out = {}
    for name, (a, b, sign) in spec.items():
        diffs = [c[name]["diff"] for c in per_seed]
        out[name] = {**pooled_claims[name], "test": "paired bootstrap of seed-averaged scores",
                     "per_seed_diff": diffs, "over_seeds": t_interval(diffs),
                     "seeds_holding": sum(c[name]["verdict"] == "holds" for c in per_seed),
                     "seeds_contradicted": sum(c[name]["verdict"] == "contradicted" for c in per_seed)}
    return out


def rows_over_seeds(per_seed_tables: Sequence[Mapping[str, Mapping[str, float]]], column: str = "paper_avg"
                    ) -> dict[str, dict[str, Any]]:
    """{row: {mean, sd, lo, hi, values}} of one table column over seeds (t interval, `t_interval`)."""
    rows = per_seed_tables[0].keys()
    out = {}
    for r in rows:
        values = [float(t[r][column]) for t in per_seed_tables]
        iv = t_interval(values)
        out[r] = {"mean": iv["mean"], "sd": iv["sd"], "lo": iv["lo"], "hi": iv["hi"], "values": values}
    return out


# ----------------------------------------------------------------------------------------------
# The seed study
# ----------------------------------------------------------------------------------------------


def _one_seed(recipe: Recipe) -> dict[str, Any]:
    """Stage 1 + stage 2 of one recipe (reused from the cache when built) and its ablation table on eval."""
    art = run_curation(recipe)
    stage1 = run_stage1(art, recipe)
    student = stage1.student.cpu().eval()
    variants = run_stage2(art, student, recipe)
    evalset = preload(art.evalset)
    models = {"stage1_fp32": student, **variants.models, **variants.controls}
    trained = list(recipe.stage2.modalities)
    table, outcomes = evaluate_variants(models, evalset, art.class_text, list(evalset.modalities),
                                        recipe.stage1.encodings, trained)
    return {"table": table, "scores": stats.paper_scores(outcomes, trained), "history": variants.history,
            "stage2_folder": str(variants.folder), "curated": len(art.cache)}


def seed_study(recipe: str | Path = DEFAULT_RECIPE, seeds: Sequence[int] = DEFAULT_SEEDS,
               configs: Mapping[str, Sequence[str]] | None = None, overrides: Sequence[str] = (),
               out_dir: str | Path | None = None, smoke: bool = False) -> dict[str, Any]:
    """Run every configuration for every training seed and write `<out_dir>/metrics.json` and figures.

    Args:
        recipe: a shipped recipe name or a YAML path.
        seeds: training seeds (`Recipe.train_seed`).
        configs: {name: overrides}; default DEFAULT_CONFIGS.
        overrides: applied to every configuration, before its own.
        out_dir: default reports/study.
        smoke: the recipe's tiny configuration (tests).

    Returns:
        The metrics dict (also written): seeds, configs, per-seed tables, rows over seeds, claims over seeds and
        `headroom` (ptq_int8 - stage1_fp32 of the `headroom_w4` configuration, when run).
    """
    configs = dict(DEFAULT_CONFIGS if configs is None else configs)
    out = utils.resolve_out_dir(out_dir, "study")
    for name, extra in configs.items():  # refuse a bad configuration before any work starts
        load_recipe(recipe, [*overrides, *extra], smoke=smoke)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name, extra in configs.items():
        runs = []
        for s in utils.progress(seeds, desc=f"study {name}", total=len(seeds)):
            r = load_recipe(recipe, [*overrides, *extra, f"train_seed={s}"], smoke=smoke)
            t0 = time.perf_counter()
            runs.append({"seed": s, "recipe_hash": r.hash, **_one_seed(r), "seconds": time.perf_counter() - t0})
            log.info("study %s seed %d: paper avg %s (%.0f s)", name, s,
                     {k: round(v["paper_avg"], 3) for k, v in runs[-1]["table"].items()}, runs[-1]["seconds"])
        results[name] = {
            "overrides": [*overrides, *extra],
            "recipe": load_recipe(recipe, [*overrides, *extra], smoke=smoke).record(),
            "per_seed": [{k: v for k, v in run.items() if k != "scores"} for run in runs],
            "rows": rows_over_seeds([run["table"] for run in runs]),
            "claims": claims_over_seeds([run["scores"] for run in runs]),
        }
    metrics: dict[str, Any] = {"seeds": list(seeds), "configs": results,
                               "seconds": round(time.perf_counter() - start, 1)}
    for name, res in results.items():
        ptq = [t["table"]["ptq_int8"]["paper_avg"] - t["table"]["stage1_fp32"]["paper_avg"] for t in res["per_seed"]]
        res["ptq_minus_fp32"] = t_interval(ptq)
    if "headroom_w4" in results:
        metrics["headroom"] = {"config": "headroom_w4", **results["headroom_w4"]["ptq_minus_fp32"],
                               "ptq_minus_fp32": results["headroom_w4"]["ptq_minus_fp32"]["mean"]}
    from . import plots

    utils.save_figure(plots.seed_rows({n: r["rows"] for n, r in results.items()}), out, "rows_over_seeds")
    utils.save_figure(plots.seed_claims({n: r["claims"] for n, r in results.items()}), out, "claims_over_seeds")
    utils.save_metrics(out, metrics)
    with utils.atomic_path(out / "table.md", suffix=".md") as tmp:
        tmp.write_text(results_table(metrics), encoding="utf-8")
    return metrics


def results_table(metrics: Mapping[str, Any]) -> str:
    """The study as Markdown (the README's results section): rows mean +- sd, then each claim with its verdict."""
    lines = []
    seeds = metrics["seeds"]
    for name, res in metrics["configs"].items():
        lines += [f"**{name}** ({', '.join(res['overrides']) or 'the recipe as shipped'}; {len(seeds)} seeds "
                  f"{seeds}; paper average = mean of RGB and depth zero-shot top-1 on the eval split)", "",
                  "| row | mean | sd | per seed |", "|---|---|---|---|"]
        for row, v in res["rows"].items():
            lines.append(f"| {row} | {v['mean']:.3f} | {v['sd']:.3f} | {' '.join(f'{x:.3f}' for x in v['values'])} |")
        lines += ["", "| claim | a - b (pts) | 95 % CI (samples) | Holm p | verdict | seeds holding | "
                      "over seeds mean [t 95 % CI] |", "|---|---|---|---|---|---|---|"]
        for claim, c in res["claims"].items():
            o = c["over_seeds"]
            lines.append(f"| {claim} | {100 * c['diff']:+.2f} | [{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}] | "
                         f"{c['p_holm']:.3g} | {c['verdict']} | {c['seeds_holding']} / {len(seeds)} | "
                         f"{100 * o['mean']:+.2f} [{100 * o['lo']:+.2f}, {100 * o['hi']:+.2f}] |")
        p = res["ptq_minus_fp32"]
        lines += ["", f"PTQ - fp32: {100 * p['mean']:+.2f} pts (t 95 % CI over seeds {100 * p['lo']:+.2f}, "
                      f"{100 * p['hi']:+.2f}).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The curation study
# ----------------------------------------------------------------------------------------------


def teacher_agreement(emb: Mapping[str, torch.Tensor], text: torch.Tensor, pseudo: Sequence[int],
                      modalities: Sequence[str]) -> np.ndarray:
    """Per image: the share of `modalities` whose zero-shot prediction over `text` equals the pseudo-label
    (`agree_i` of the module docstring)."""
    p = torch.as_tensor(list(pseudo))
    hits = [(torch.nn.functional.normalize(emb[m].float(), dim=1) @ text.float().T).argmax(1).eq(p).double()
            for m in modalities]
    return torch.stack(hits, 1).mean(1).numpy()


def _score_student(model: torch.nn.Module, name: str, held: Any, text: torch.Tensor, held_pseudo: Sequence[int],
                   evalset: Any, class_text: torch.Tensor, trained: Sequence[str], encodings: Any, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One study row's scores: per-image held-out teacher agreement (what chooses), per-sample eval paper-average
    scores (reported only), and the row's fields {holdout_agreement, its CI, eval_paper_avg, its CI}."""
    emb, _ = embed_model(model, held, trained, encodings)
    agree = teacher_agreement(emb, text, held_pseudo, trained)
    table, outcomes = evaluate_variants({name: model}, evalset, class_text, trained, encodings, trained)
    scores = stats.paper_scores(outcomes, trained)[name]
    return agree, scores, {"holdout_agreement": float(agree.mean()),
                           "holdout_agreement_ci": stats.bootstrap_ci(agree, seed=seed),
                           "eval_paper_avg": table[name]["paper_avg"],
                           "eval_paper_avg_ci": stats.bootstrap_ci(scores, seed=seed)}


def _subset_agreement(agree: np.ndarray, subsets: Mapping[str, np.ndarray], seed: int) -> dict[str, Any]:
    """`holdout_agreement_<subset>` (mean and bootstrap CI) over each boolean mask of the held-out images."""
    out: dict[str, Any] = {}
    for name, mask in subsets.items():
        if mask.any():
            out[f"holdout_agreement_{name}"] = float(agree[mask].mean())
            out[f"holdout_agreement_{name}_ci"] = stats.bootstrap_ci(agree[mask], seed=seed)
    return out


def _choose(rows: Mapping[str, Mapping[str, Any]], agree: Mapping[str, np.ndarray],
            eval_scores: Mapping[str, np.ndarray], seed: int, incumbent: str | None = None,
            admitted: Collection[str] | None = None) -> dict[str, Any]:
    """The row with the highest mean held-out agreement among the `admitted` ones (all rows when None; the
    highest overall when none is admitted), paired bootstrap tests (Holm) of it against every other row on the
    held-out agreement and on eval, and the `recommendation` for the recipe:

    * no row is admitted: keep the `incumbent` (the recipe's current setting);
    * the incumbent is not admitted: switch to `chosen`;
    * otherwise switch only when `chosen` is significantly better than the incumbent on held-out agreement (Holm
      p < alpha, diff > 0); a difference within noise moves no default.

    `best` is the highest row overall; when it is not `chosen`, the test `chosen - best` is what the requirements
    cost on the criterion."""
    best = max(agree, key=lambda n: rows[n]["holdout_agreement"])
    pool = [n for n in agree if admitted is None or n in admitted]
    chosen = max(pool, key=lambda n: rows[n]["holdout_agreement"]) if pool else best
    pairs = [(chosen, n) for n in agree if n != chosen]
    holdout = stats.compare_rows(agree, pairs, binary=False, seed=seed)
    out = {"chosen": chosen, "best": best, "vs_chosen_holdout": holdout,
           "vs_chosen_eval": stats.compare_rows(eval_scores, pairs, binary=False, seed=seed)}
    if admitted is not None:
        out["admitted"] = pool
    if incumbent is not None and incumbent in agree:
        test = holdout.get(f"{chosen} - {incumbent}")
        if admitted is not None and not pool:
            setting, why = incumbent, "no setting meets the requirements: keep the recipe's setting"
        elif test is None:  # the incumbent is the chosen row
            setting, why = incumbent, "the recipe's setting is the highest" + (" admitted" if admitted is not None else "")
        else:
            fails = admitted is not None and incumbent not in admitted
            better = test["p_holm"] < stats.ALPHA and test["diff"] > 0
            setting = chosen if fails or better else incumbent
            why = (f"{chosen} - {incumbent} = {100 * test['diff']:+.1f} pts [{100 * test['ci'][0]:+.1f}, "
                   f"{100 * test['ci'][1]:+.1f}], Holm p {test['p_holm']:.2g}: "
                   + ("the recipe's setting fails the requirements, switch" if fails else
                      "significantly better, switch" if better else "within noise, keep the recipe's setting"))
        out["incumbent"] = incumbent
        out["recommendation"] = {"setting": setting, "why": why}
    return out


EQUAL_STEPS_EPOCHS = 3
"""The equal-steps budget of the curation study: this many epochs over the largest setting's training images."""


def _runs_recipe(r: Recipe) -> Recipe:
    """`r` without what the study's runs do not depend on (the recipe's own curation choice and stage-1 epochs:
    each setting curates itself and its epochs name its folder), so the cache key survives a change of default."""
    d = CurationConfig()
    return dataclasses.replace(r, curation=dataclasses.replace(r.curation, mode=d.mode, tau=d.tau,
                                                               top_fraction=d.top_fraction),
                               stage1=dataclasses.replace(r.stage1, epochs=1))


def curation_study(recipe: str | Path = DEFAULT_RECIPE, settings: Sequence[tuple[str, float]] | None = None,
                   holdout: float = 0.2, overrides: Sequence[str] = (), out_dir: str | Path | None = None,
                   smoke: bool = False, equal_steps: bool = False,
                   requirements: Mapping[str, tuple[str, float]] | None = REQUIREMENTS,
                   budget_epochs: int = EQUAL_STEPS_EPOCHS) -> dict[str, Any]:
    """Every curation setting's downstream stage-1 student, scored by teacher agreement on held-out adapt images
    (module docstring); writes `<out_dir>/metrics.json` (default reports/study/curation, or .../curation_equal_steps).

    At the recipe's epochs a setting that keeps fewer images also trains fewer steps, so the sweep mixes the
    curation with the training budget. `equal_steps` is the control: setting s trains
    `E_s = max(1, round(E N_max / N_s))` epochs (E = `budget_epochs`, N_s its training images, N_max the largest
    N_s of the sweep), so every student takes about the same number of optimizer steps whatever the recipe's own
    `stage1.epochs`.

    `requirements` (default `curation.REQUIREMENTS`; None admits every setting): a setting is admitted when its
    curation meets them (`curation.check_requirements`, adapt labels only); the chosen setting is the highest held-out
    agreement among the admitted ones, and the recommendation switches from a recipe setting that fails them.

    Returns:
        {"holdout", "settings": {name: {curation report, holdout_agreement, ci, eval paper average, requirements,
        admitted}}, "requirements", "admitted", "chosen", "best", "recommendation", "vs_chosen_*" (paired tests
        against the chosen setting on the held-out images, their confident half and eval)}.
    """
    settings = list(DEFAULT_CURATION_SETTINGS if settings is None else settings)
    r = load_recipe(recipe, overrides, smoke=smoke)
    out = utils.resolve_out_dir(out_dir, "study/curation_equal_steps" if equal_steps else "study/curation")
    start = time.perf_counter()
    art = run_curation(r)
    adapt, result = art.adapt, art.result
    train_idx, held_idx = holdout_rows(len(adapt), holdout, r.seed)
    text = superset_text(art.teacher, r.curation)
    uninformative = known_uninformative(adapt)
    cur = r.curation
    pool = build_embedding_cache(art.teacher, adapt, [int(i) for i in train_idx], views=cur.views, seed=cur.seed,
                                 batch_size=cur.cache_batch_size, crop_scale=cur.crop_scale,
                                 crop_ratio=cur.crop_ratio, out_size=cur.view_size)
    held = torch.utils.data.Subset(adapt, [int(i) for i in held_idx])
    held_pseudo = [result.all_pseudo_labels[i] for i in held_idx]
    held_conf = np.asarray([float(result.confidences[i]) for i in held_idx])
    unin = set(uninformative)
    subsets = {  # diagnostics of the criterion, reported beside it, never choosing
        "confident_half": held_conf >= np.median(held_conf),  # label-free: one fixed half for every setting
        "informative": np.array([adapt.ids[i] not in unin for i in held_idx]),  # uses the benchmark's metadata
        "uninformative": np.array([adapt.ids[i] in unin for i in held_idx]),
    }
    evalset = preload(art.evalset)
    trained = list(r.stage1.modalities)
    train_set = set(int(i) for i in train_idx)
    folder = utils.cache_dir() / "study" / "curation" / _runs_recipe(r).key("stage1", embeddings=pool.meta.get("key"),
                                                                           holdout=[holdout, r.seed])
    train_data = preload(adapt, r.stage1.modalities)
    curated = {}
    for mode, value in settings:
        kw = {"tau": value} if mode == "threshold" else {"top_fraction": value}
        curated[(mode, value)] = curate_by_confidence(result.confidences, result.all_pseudo_labels, list(adapt.ids),
                                                      result.superset, mode, **kw)
    n_max = max(sum(i in train_set for i in res.kept) for res in curated.values())
    requirements = dict(requirements) if requirements is not None else None
    rows: dict[str, Any] = {}
    agree: dict[str, np.ndarray] = {}
    eval_scores: dict[str, np.ndarray] = {}
    for mode, value in utils.progress(settings, desc="curation study", total=len(settings)):
        name = f"{mode}_{value:.2f}"
        res = curated[(mode, value)]
        report = curation_report(res, adapt.labels, adapt.class_names, result.superset, uninformative)
        kept_train = [adapt.ids[i] for i in res.kept if i in train_set]
        if len(kept_train) < r.stage1.batch_size:
            log.warning("curation study %s: %d training images, fewer than one batch: skipped", name, len(kept_train))
            rows[name] = {"mode": mode, "value": value, "trained_images": len(kept_train), "skipped": True}
            continue
        t0 = time.perf_counter()
        epochs = max(1, round(budget_epochs * n_max / len(kept_train))) if equal_steps else r.stage1.epochs
        sub = folder / f"{name}_e{epochs}"
        trained_run = train_stage1(dataclasses.replace(r.stage1, epochs=epochs, checkpoint_dir=str(sub / "checkpoints")),
                                   train_data, pool.select(kept_train), out_dir=sub)
        student = trained_run.student.cpu().eval()
        agree[name], eval_scores[name], scores = _score_student(student, name, held, text, held_pseudo, evalset,
                                                                art.class_text, trained, r.stage1.encodings, r.seed)
        checks = None if requirements is None else check_requirements(report, requirements)
        rows[name] = {"mode": mode, "value": value, "trained_images": len(kept_train), "epochs": epochs,
                      "steps": epochs * -(-len(kept_train) // r.stage1.batch_size),
                      **{k: report[k] for k in ("kept", "total", "kept_fraction", "kept_pseudo_acc", "classes_kept",
                                                "classes_total", "pseudo_classes_kept", "uninformative")},
                      **scores, **_subset_agreement(agree[name], subsets, r.seed),
                      **({} if checks is None else {"requirements": checks, "admitted": meets_requirements(checks)}),
                      "seconds": round(time.perf_counter() - t0, 1)}
        log.info("curation study %s: %d trained, held-out agreement %.3f, eval paper avg %.3f", name,
                 len(kept_train), rows[name]["holdout_agreement"], rows[name]["eval_paper_avg"])
    ran = [n for n in rows if not rows[n].get("skipped")]
    if not ran:
        raise ValueError(f"curation study: every setting keeps fewer than {r.stage1.batch_size} training images")
    value = cur.tau if cur.mode == "threshold" else cur.top_fraction
    admitted = None if requirements is None else [n for n in ran if rows[n]["admitted"]]
    choice = _choose(rows, agree, eval_scores, r.seed, incumbent=f"{cur.mode}_{value:.2f}", admitted=admitted)
    chosen = choice["chosen"]
    half = subsets["confident_half"]
    choice["vs_chosen_confident_half"] = stats.compare_rows({n: a[half] for n, a in agree.items()},
                                                            [(chosen, n) for n in agree if n != chosen],
                                                            binary=False, seed=r.seed)
    metrics = {
        "holdout": {"fraction": holdout, "images": len(held_idx), "seed": r.seed,
                    "uninformative": int(sum(adapt.ids[i] in set(uninformative) for i in held_idx))},
        "selection": ("highest mean teacher agreement on the held-out adapt images (label-free)"
                      + ("" if requirements is None else " among the settings whose curation meets `requirements` "
                         "(adapt labels and the benchmark's uninformative list)") + "; eval never used"),
        "requirements": None if requirements is None else {k: list(v) for k, v in requirements.items()},
        "diagnostics": {"holdout_agreement_confident_half": "the same agreement on the held-out images whose teacher "
                        "confidence is at least the held-out median (one fixed half for every setting; label-free)",
                        "holdout_agreement_informative / _uninformative": "split by the benchmark's list of "
                        "uninformative frames (metadata a user does not have): reported, never choosing",
                        "vs_chosen_confident_half": "paired tests of the chosen setting on the confident half"},
        "equal_steps": equal_steps,
        "budget": {"epochs": budget_epochs if equal_steps else r.stage1.epochs, "largest_training_set": n_max},
        "settings": rows, **choice,
        "recipe": r.record(), "seconds": round(time.perf_counter() - start, 1),
    }
    from . import plots

    utils.save_figure(plots.curation_study({n: rows[n] for n in ran}, chosen), out, "curation_study")
    utils.save_metrics(out, metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# The stage-2 options study
# ----------------------------------------------------------------------------------------------

DEFAULT_STAGE2_OPTIONS: dict[str, tuple[str, ...]] = {
    "default": (),
    "qat_only": ("stage2.contrastive_weight=0",),
    "lambda_0.01": ("stage2.contrastive_weight=0.01",),
    "grad_norm_balance": ("stage2.balance=grad_norm",),
    "bank": ("stage2.mining=bank",),
    "random_negatives": ("stage2.negatives=random",),
    "released": ("stage2.mining=bank", "stage2.negatives=random", "stage2.distill_weight=0"),
}
"""Stage-2 options (overrides) compared by `stage2_study`: the recipe's, plain QAT (the control for the triplet term),
a fixed balanced λ (the triplet gradient is ~200x the distillation gradient at λ = 1), the automatic balance
(`Stage2Config.balance="grad_norm"`: both terms' gradients of equal norm), bank mining, random negatives,
and the released code's combination (bank, random negatives, triplet-only)."""


def stage2_study(recipe: str | Path = DEFAULT_RECIPE, options: Mapping[str, Sequence[str]] | None = None,
                 holdout: float = 0.2, overrides: Sequence[str] = (), out_dir: str | Path | None = None,
                 smoke: bool = False) -> dict[str, Any]:
    """Each stage-2 option's int8 student, trained from the recipe's stage-1 student on the curated images minus a
    seeded held-out share (`train.holdout_rows`), scored by teacher agreement on the held-out images (as in
    `curation_study`; those images were in stage 1's training set, the same for every option). The eval paper
    average is reported beside it, never used to choose. Writes `<out_dir>/metrics.json` (reports/study/stage2).
    """
    from . import quantize
    from .stage2 import Int8Student
    from .train import train_stage2

    options = dict(DEFAULT_STAGE2_OPTIONS if options is None else options)
    recipes = {n: load_recipe(recipe, [*overrides, *o], smoke=smoke) for n, o in options.items()}  # refuse early
    base = load_recipe(recipe, overrides, smoke=smoke)
    out = utils.resolve_out_dir(out_dir, "study/stage2")
    start = time.perf_counter()
    art = run_curation(base)
    student = run_stage1(art, base).student.cpu().eval()
    train_rows, held_rows = holdout_rows(len(art.cache), holdout, base.seed)
    pool = art.cache.select([art.cache.ids[i] for i in train_rows])
    position = {sid: i for i, sid in enumerate(art.adapt.ids)}
    held_ids = [art.cache.ids[i] for i in held_rows]
    held = torch.utils.data.Subset(art.adapt, [position[sid] for sid in held_ids])
    pseudo = dict(zip(art.result.ids, art.result.pseudo_labels))
    held_pseudo = [pseudo[sid] for sid in held_ids]
    text = superset_text(art.teacher, base.curation)
    trained = list(base.stage2.modalities)
    data_ = preload(art.adapt, base.stage2.modalities)
    evalset = preload(art.evalset)
    folder = utils.cache_dir() / "study" / "stage2" / base.key("stage1", embeddings=art.cache.meta.get("key"),
                                                               holdout=[holdout, base.seed])
    rows: dict[str, Any] = {}
    agree: dict[str, np.ndarray] = {}
    eval_scores: dict[str, np.ndarray] = {}
    for name, r in utils.progress(recipes.items(), desc="stage-2 study", total=len(recipes)):
        t0 = time.perf_counter()
        sub = folder / r.key("stage2")
        run = train_stage2(dataclasses.replace(r.stage2, checkpoint_dir=str(sub / "checkpoints")), student, data_,
                           pool, pseudo, out_dir=sub)
        model = Int8Student(quantize.convert(run.model.cpu()), student.config).eval()
        agree[name], eval_scores[name], scores = _score_student(model, name, held, text, held_pseudo, evalset,
                                                                art.class_text, trained, r.stage1.encodings, base.seed)
        rows[name] = {"overrides": list(options[name]), **scores,
                      "grad_ratio": [h.get("grad_ratio") for h in run.history],
                      "lambda_eff": [h.get("lambda_eff") for h in run.history],
                      "seconds": round(time.perf_counter() - t0, 1)}
        log.info("stage-2 study %s: held-out agreement %.3f, eval paper avg %.3f", name,
                 rows[name]["holdout_agreement"], rows[name]["eval_paper_avg"])
    choice = _choose(rows, agree, eval_scores, base.seed, incumbent="default" if "default" in rows else None)
    chosen = choice["chosen"]
    metrics = {
        "holdout": {"fraction": holdout, "images": len(held_ids), "seed": base.seed},
        "selection": "highest mean teacher agreement on the held-out curated images (label-free); eval never used",
        "options": rows, **choice,
        "recipe": base.record(), "seconds": round(time.perf_counter() - start, 1),
    }
    from . import plots

    utils.save_figure(plots.curation_study(rows, chosen, counts=False), out, "stage2_study")
    utils.save_metrics(out, metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _parse_configs(items: Sequence[str] | None) -> dict[str, tuple[str, ...]] | None:
    """`NAME=k=v,k=v` (or just NAME for the recipe as is) -> {NAME: (k=v, ...)}."""
    if not items:
        return None
    out = {}
    for item in items:
        name, _, rest = item.partition("=")
        out[name] = tuple(x for x in rest.split(",") if x) if rest else ()
    return out


def _parse_requirements(items: Sequence[str] | None) -> dict[str, tuple[str, float]] | None:
    """`NAME>=X` / `NAME<=X` ... -> {NAME: (op, X)}; None when there are none."""
    if not items:
        return None
    out = {}
    for item in items:
        op = ">=" if ">=" in item else "<=" if "<=" in item else None
        if op is None:
            raise SystemExit(f"--require {item!r}: write NAME>=X or NAME<=X, NAME one of {list(REQUIREMENTS)}")
        name, _, bound = item.partition(op)
        if name not in REQUIREMENTS:
            raise SystemExit(f"--require {item!r}: unknown name {name!r}; names: {list(REQUIREMENTS)}")
        out[name] = (op, float(bound))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevl_lib.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=["seeds", "curation", "stage2"])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="k=v on every configuration")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--config", action="append", help="NAME=k=v,k=v (repeatable); default: "
                        + "; ".join(f"{k}={','.join(v)}" for k, v in DEFAULT_CONFIGS.items()))
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--equal-steps", action="store_true", help="curation: the same optimizer steps per setting")
    parser.add_argument("--settings", nargs="+", help="curation: MODE:VALUE ... (default: the 9 of the module)")
    parser.add_argument("--require", action="append", metavar="NAME>=X", help="curation: a requirement (repeatable; "
                        "replaces the default " + ", ".join(f"{k}{op}{v:g}" for k, (op, v) in REQUIREMENTS.items())
                        + ")")
    parser.add_argument("--no-requirements", action="store_true", help="curation: admit every setting")
    parser.add_argument("--budget-epochs", type=int, default=EQUAL_STEPS_EPOCHS,
                        help="curation --equal-steps: epochs over the largest setting's training images")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.study == "seeds":
        m = seed_study(args.recipe, args.seeds, _parse_configs(args.config), args.overrides, args.out, args.smoke)
        print(results_table(m))
    elif args.study == "stage2":
        m = stage2_study(args.recipe, _parse_configs(args.config), args.holdout, args.overrides, args.out, args.smoke)
        for name, row in m["options"].items():
            print(f"{name}: held-out agreement {row['holdout_agreement']:.3f}, eval paper avg {row['eval_paper_avg']:.3f}"
                  f", grad ratio {row['grad_ratio']}")
        print("chosen (held-out agreement):", m["chosen"])
        if "recommendation" in m:
            print(f"recommendation: {m['recommendation']['setting']} ({m['recommendation']['why']})")
    else:
        settings = [(x.split(":")[0], float(x.split(":")[1])) for x in args.settings] if args.settings else None
        requirements = None if args.no_requirements else _parse_requirements(args.require) or REQUIREMENTS
        m = curation_study(args.recipe, settings, args.holdout, args.overrides, args.out, args.smoke, args.equal_steps,
                           requirements, args.budget_epochs)
        for name, row in m["settings"].items():
            if row.get("skipped"):
                print(f"{name}: skipped ({row['trained_images']} training images)")
                continue
            acc = "n/a" if row["kept_pseudo_acc"] is None else f"{row['kept_pseudo_acc']:.3f}"
            print(f"{name}: kept {row['kept']}/{row['total']}, pseudo acc {acc}, "
                  f"classes {row['classes_kept']}/{row['classes_total']}, uninformative discarded "
                  f"{row['uninformative']['discarded']}/{row['uninformative']['total']}, held-out agreement "
                  f"{row['holdout_agreement']:.3f}, eval paper avg {row['eval_paper_avg']:.3f}")
        print("admitted (requirements):", m.get("admitted", "all"))
        print("chosen (held-out agreement):", m["chosen"], "; highest overall:", m["best"])
        if "recommendation" in m:
            print(f"recommendation: {m['recommendation']['setting']} ({m['recommendation']['why']})")
    print(json.dumps({"seconds": m["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
