"""Statistics for every comparison a notebook prints: bootstrap CIs, paired tests, Holm's correction, verdicts.

Rows of a table (students, variants, thresholds) are evaluated on the SAME evaluation samples, so they are compared
with paired statistics over those samples:

* `bootstrap_ci`: percentile bootstrap CI of a mean over samples. A sample may carry several scores (one per
  modality, e.g. the paper average over RGB and depth): they are resampled together (cluster bootstrap).
* `paired_bootstrap`: CI and two-sided p of mean(a) - mean(b), resampling the same sample indices for both rows.
* `mcnemar`: the exact McNemar test on paired binary outcomes (scipy.stats.binomtest on the discordant pairs).
* `holm`: Holm's step-down correction of several p-values (family-wise error rate).
* `verdict`: `holds` / `contradicted` / `not significant` from a difference, its corrected p and the claimed sign.
* `compare_rows` / `claims`: all of the above for a table's pairs and for the paper's claims.
* `above_chance`: one-sided exact binomial test of an accuracy against 1 / classes (a teacher modality at chance).

    correct = {"fp32": fp32_correct, "int8": int8_correct}           # N x M booleans (samples x modalities)
    claims({"int8_beats_fp32": ("int8", "fp32", +1)}, correct)
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

ALPHA = 0.05
N_BOOT = 2000


def _scores(x: Any) -> np.ndarray:
    """N x M float array (M = 1 for a plain vector)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not len(arr):
        raise ValueError(f"expected N or N x M scores with N > 0, got shape {arr.shape}")
    return arr


def _boot_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(scores: Any, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0) -> dict[str, float]:
    """Mean and percentile-bootstrap (1 - alpha) CI over samples.

        mean = 1/(N M) Σ_i Σ_m s_im;   mean*_b over N samples drawn with replacement (rows kept whole);
        CI = [q_{alpha/2}, q_{1-alpha/2}] of {mean*_b}

    Returns:
        {"mean", "lo", "hi", "n"}.

    >>> bootstrap_ci([1, 1, 1, 1])["lo"]
    1.0
    """
    s = _scores(scores)
    per_sample = s.mean(axis=1)
    means = per_sample[_boot_indices(len(s), n_boot, seed)].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(per_sample.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(s))}


def paired_bootstrap(a: Any, b: Any, n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0) -> dict[str, float]:
    """Difference of two rows on the same samples, with a paired bootstrap CI and two-sided p.

        d_i = mean_m(a_im) - mean_m(b_im);  diff = mean_i d_i;  d*_b = mean of d over resampled indices
        CI = [q_{alpha/2}, q_{1-alpha/2}] of {d*_b};
        p = min(1, 2 (1 + min(#{d*_b <= 0}, #{d*_b >= 0})) / (B + 1))   (>= 2 / (B + 1): B = n_boot resamples)

    Returns:
        {"diff", "lo", "hi", "p", "n"}.
    """
    sa, sb = _scores(a), _scores(b)
    if sa.shape != sb.shape:
        raise ValueError(f"paired rows need the same samples: shapes {sa.shape} and {sb.shape}")
    d = sa.mean(axis=1) - sb.mean(axis=1)
    boots = d[_boot_indices(len(d), n_boot, seed)].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    if np.all(d == 0):
        p = 1.0
    else:
        tail = min(np.sum(boots <= 0), np.sum(boots >= 0))
        p = float(min(1.0, 2 * (tail + 1) / (n_boot + 1)))  # add-one: never 0 from a finite bootstrap
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "p": p, "n": int(len(d))}


def mcnemar(a: Any, b: Any) -> dict[str, float]:
    """Exact McNemar test of paired binary outcomes (every modality column counts as a pair).

        n01 = #(a wrong, b right), n10 = #(a right, b wrong);  p = binomtest(n10, n01 + n10, 0.5), two-sided

    Returns:
        {"n10", "n01", "p"} (p = 1 without discordant pairs).

    >>> mcnemar([1, 1, 1, 0], [0, 0, 0, 0])["n10"]
    3
    """
    from scipy.stats import binomtest

    sa, sb = _scores(a).astype(bool).ravel(), _scores(b).astype(bool).ravel()
    if sa.shape != sb.shape:
        raise ValueError(f"paired rows need the same samples: {sa.shape} and {sb.shape}")
    n10, n01 = int(np.sum(sa & ~sb)), int(np.sum(~sa & sb))
    p = 1.0 if n10 + n01 == 0 else float(binomtest(n10, n10 + n01, 0.5).pvalue)
    return {"n10": n10, "n01": n01, "p": p}


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: sort p ascending, p'_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)).

    >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
    {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    names = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(names), 0.0, {}
    for j, name in enumerate(names):
        running = max(running, min(1.0, (m - j) * float(pvalues[name])))
        out[name] = running
    return {k: out[k] for k in pvalues}


def verdict(diff: float, p_adjusted: float, expected_sign: int = 1, alpha: float = ALPHA) -> str:
    """`holds` (significant, in the claimed direction), `contradicted` (significant, the other way) or
    `not significant` (corrected p >= alpha)."""
    if p_adjusted >= alpha or diff == 0:
        return "not significant"
    return "holds" if np.sign(diff) == np.sign(expected_sign) else "contradicted"


def compare_rows(scores: Mapping[str, Any], pairs: Sequence[tuple[str, str]], binary: bool = True,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every pair (a, b) of rows: paired bootstrap diff + CI, the test's p (exact McNemar for binary outcomes,
    else the paired bootstrap's), and Holm's correction over the pairs.

    Returns:
        {"a - b": {"diff", "ci": [lo, hi], "p", "p_holm", "test"}}.
    """
    rows = {}
    for a, b in pairs:
        boot = paired_bootstrap(scores[a], scores[b], seed=seed)
        p = mcnemar(scores[a], scores[b])["p"] if binary else boot["p"]
        rows[f"{a} - {b}"] = {"diff": boot["diff"], "ci": [boot["lo"], boot["hi"]], "p": p,
                              "test": "mcnemar exact" if binary else "paired bootstrap", "n": boot["n"]}
    adjusted = holm({k: v["p"] for k, v in rows.items()})
    for k, v in rows.items():
        v["p_holm"] = adjusted[k]
    return rows


def claims(spec: Mapping[str, tuple[str, str, int]], scores: Mapping[str, Any], binary: bool = True,
           seed: int = 0) -> dict[str, dict[str, Any]]:
    """The paper's claims as measured: `spec` = {claim: (row a, row b, expected sign of a - b)}.

    Each claim gets {"a", "b", "diff", "ci", "p", "p_holm" (Holm over the claims of `spec`), "test", "verdict"}.
    """
    rows = compare_rows(scores, [(a, b) for a, b, _ in spec.values()], binary=binary, seed=seed)
    out = {}
    for name, (a, b, sign) in spec.items():
        row = rows[f"{a} - {b}"]
        out[name] = {"a": a, "b": b, **row, "expected": "a > b" if sign > 0 else "a < b",
                     "verdict": verdict(row["diff"], row["p_holm"], sign)}
    return out


def claim_lines(block: Mapping[str, Mapping[str, Any]], scale: float = 100.0, unit: str = " pts") -> list[str]:
    """One readable line per claim: `name: a - b = +1.2 pts [95 % CI +0.3, +2.1], p_holm 0.012 -> holds`."""
    return [f"{name}: {c['a']} - {c['b']} = {scale * c['diff']:+.2f}{unit} [95 % CI {scale * c['ci'][0]:+.2f}, "
            f"{scale * c['ci'][1]:+.2f}], p {c['p']:.3g}, Holm {c['p_holm']:.3g} ({c['test']}) -> {c['verdict']}"
            for name, c in block.items()]


def paper_scores(outcomes: Mapping[str, Mapping[str, Any]], modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """{row: N x M per-sample scores over `modalities`} from {row: {modality: N scores}}: the input of the paired
    statistics for the paper average (the mean over RGB and the trained non-RGB modality)."""
    return {row: np.stack([np.asarray(per[m], dtype=np.float64) for m in modalities], axis=1)
            for row, per in outcomes.items()}


def above_chance(accuracy: float, n: int, num_classes: int, alpha: float = ALPHA) -> dict[str, Any]:
    """Is a top-1 accuracy above chance? One-sided exact binomial test of k = round(accuracy n) hits in n against
    p0 = 1 / num_classes (scipy.stats.binomtest, alternative "greater"): `at chance` when p >= alpha. A teacher at
    chance on a modality gives stage 2 nothing but noise as pseudo-labels there."""
    from scipy.stats import binomtest

    k = int(round(accuracy * n))
    p = float(binomtest(k, n, 1.0 / num_classes, alternative="greater").pvalue)
    return {"accuracy": accuracy, "chance": 1.0 / num_classes, "n": n, "p": p,
            "verdict": "above chance" if p < alpha else "at chance"}


def warn_at_chance(results: Mapping[str, Mapping[str, Any]], who: str = "teacher") -> list[str]:
    """Log one WARNING per modality whose `above_chance` verdict is `at chance`, and return the messages."""
    messages = [f"{who} zero-shot on {m} is at chance ({r['accuracy']:.3f} vs 1/{round(1 / r['chance'])}, "
                f"p {r['p']:.2g}, n {r['n']}): its pseudo-labels carry no class information there; check the "
                f"modality encoding (data.default_encoding) and the teacher before trusting stage 2 on {m}"
                for m, r in results.items() if r["verdict"] == "at chance"]
    for message in messages:
        log.warning(message)
    return messages
