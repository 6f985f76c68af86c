"""The figures the notebooks show: bars, histograms and image grids (matplotlib, no state kept).

Each function returns a Figure; the notebook saves it with `utils.save_figure(fig, out_dir, name)`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from edgevl_lib.data import DEFAULT_RANGES, RGB, ModalityEncoding, PairedDataset, encode_modality


def grouped_bars(values: Mapping[str, Mapping[str, float]], title: str = "", ylabel: str = "top-1",
                 ylim: tuple[float, float] | None = (0.0, 1.0)) -> Any:
    """Grouped bar chart: outer keys are groups on the x axis, inner keys are bars within a group.

    >>> fig = grouped_bars({"rgb": {"teacher": 0.9, "student": 0.8}, "depth": {"teacher": 0.3, "student": 0.7}})
    """
    import matplotlib.pyplot as plt

    groups = list(values)
    series = list(dict.fromkeys(k for g in groups for k in values[g]))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(1.4 + 1.3 * len(groups) * max(1, len(series)) / 2, 3.2))
    x = np.arange(len(groups))
    for i, name in enumerate(series):
        ys = [values[g].get(name, np.nan) for g in groups]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def confidence_histogram(conf: torch.Tensor | np.ndarray, thresholds: Sequence[float] = (),
                         correct: torch.Tensor | np.ndarray | None = None, bins: int = 40) -> Any:
    """Histogram of teacher confidences c_i, with vertical lines at the thresholds tau.

    With `correct` (pseudo-label == true label, for evaluation only) the bars are split by correctness.
    """
    import matplotlib.pyplot as plt

    conf = np.asarray(conf, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3))
    edges = np.linspace(0, 1, bins + 1)
    if correct is None:
        ax.hist(conf, bins=edges, color="tab:blue")
    else:
        ok = np.asarray(correct, dtype=bool)
        ax.hist([conf[ok], conf[~ok]], bins=edges, stacked=True, color=["tab:green", "tab:red"],
                label=["pseudo-label correct", "pseudo-label wrong"])
        ax.legend(fontsize=8, frameon=False)
    for tau in thresholds:
        ax.axvline(tau, color="k", ls="--", lw=1)
        ax.text(tau, ax.get_ylim()[1] * 0.95, f" tau={tau:g}", fontsize=8, va="top")
    ax.set_xlabel("teacher confidence  max_k softmax(s cos(img, text_k))")
    ax.set_ylabel("images")
    fig.tight_layout()
    return fig


def display_image(x: torch.Tensor, modality: str) -> np.ndarray:
    """HxWx3 array for imshow: rgb as is, depth with turbo and thermal with inferno over fixed ranges."""
    if modality == RGB or x.shape[0] == 3:
        return x.permute(1, 2, 0).clamp(0, 1).numpy()
    cmap = "inferno" if modality == "thermal" else "turbo"
    enc = ModalityEncoding("colormap", range=DEFAULT_RANGES.get(modality), colormap=cmap)
    return encode_modality(x, modality, enc).permute(1, 2, 0).numpy()


def image_grid(dataset: PairedDataset, indices: Sequence[int], titles: Sequence[str] | None = None,
               modalities: Sequence[str] | None = None, cols: int = 8, suptitle: str = "") -> Any:
    """Grid of samples: for each index one column block, one row per modality, with a title per sample."""
    import matplotlib.pyplot as plt

    mods = list(modalities or dataset.modalities)
    indices = list(indices)
    cols = max(1, min(cols, len(indices)))
    blocks = max(1, -(-len(indices) // cols))
    fig, axes = plt.subplots(blocks * len(mods), cols, figsize=(1.3 * cols, 1.4 * blocks * len(mods)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, idx in enumerate(indices):
        sample = dataset[idx]
        b, c = divmod(n, cols)
        for r, m in enumerate(mods):
            ax = axes[b * len(mods) + r, c]
            ax.imshow(display_image(sample.images[m], m))
            if r == 0 and titles is not None:
                ax.set_title(titles[n], fontsize=7)
            if c == 0:
                ax.text(-0.05, 0.5, m, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


# --- benchmark plots ---


def _engine_color(name: str) -> str:
    if "int8" in name:
        return "tab:green"
    if "clip" in name:
        return "tab:red"
    if "teacher" in name:
        return "tab:purple"
    if "fp16" in name:
        return "tab:orange"
    return "tab:blue"


def latency_bars(latency_ms: Mapping[str, float], title: str = "", xlabel: str = "median latency (ms), batch 1",
                 spread: Mapping[str, tuple[float, float]] | None = None, log_scale: bool = True) -> Any:
    """Horizontal bars of median latency per engine (fastest on top), int8 green, CLIP red, teacher purple.

    Args:
        latency_ms: {engine: median ms}.
        title, xlabel: labels.
        spread: optional {engine: (p10, p90)} drawn as error bars.
        log_scale: log x axis (engines differ by orders of magnitude).

    >>> fig = latency_bars({"student_int8_ort": 20.0, "clip_b16_fp32_torch": 300.0})
    """
    import matplotlib.pyplot as plt

    names = sorted(latency_ms, key=lambda n: latency_ms[n], reverse=True)
    values = [latency_ms[n] for n in names]
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.32 * len(names)))
    xerr = None
    if spread:
        xerr = np.array([[max(0.0, v - spread.get(n, (v, v))[0]) for n, v in zip(names, values)],
                         [max(0.0, spread.get(n, (v, v))[1] - v) for n, v in zip(names, values)]])
    bars = ax.barh(names, values, xerr=xerr, color=[_engine_color(n) for n in names], capsize=2)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7, padding=3)
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def size_bars(sizes_mb: Mapping[str, float], nominal: Sequence[str] = (), title: str = "model size") -> Any:
    """Horizontal bars of model sizes in MB (log scale); names in `nominal` (parameters x 4 bytes, no file) hatched.

    >>> fig = size_bars({"student_int8": 23.6, "clip_b16": 345.0}, nominal=["clip_b16"])
    """
    import matplotlib.pyplot as plt

    names = sorted(sizes_mb, key=lambda n: sizes_mb[n], reverse=True)
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.32 * len(names)))
    bars = ax.barh(names, [sizes_mb[n] for n in names], color=[_engine_color(n) for n in names],
                   hatch=["//" if n in nominal else "" for n in names], edgecolor="k", linewidth=0.4)
    ax.bar_label(bars, labels=[f"{sizes_mb[n]:.4g} MB" for n in names], fontsize=7, padding=3)
    ax.set_xscale("log")
    ax.set_xlabel("MB (on disk; hatched: nominal fp32 = parameters x 4 bytes)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def accuracy_latency_scatter(points: Mapping[str, tuple[float, float]], references: Mapping[str, float] | None = None,
                             marked: Sequence[str] = ("teacher",), ylabel: str = "zero-shot top-1",
                             title: str = "accuracy vs latency") -> Any:
    """Accuracy against batch-1 latency: one point per model (names containing a `marked` word drawn as stars)
    and a dashed vertical line per latency-only reference (e.g. CLIP-B/16 with random weights: no accuracy).

    Args:
        points: {name: (median ms, accuracy)}.
        references: {name: median ms} drawn as vertical lines.
        marked: substrings of names drawn as stars (the teacher).

    >>> fig = accuracy_latency_scatter({"teacher": (12.0, 0.8), "student_int8": (2.0, 0.7)}, {"clip_b16": 300.0})
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (ms, acc) in points.items():
        star = any(m in name for m in marked)
        ax.scatter([ms], [acc], s=120 if star else 45, marker="*" if star else "o", color=_engine_color(name),
                   zorder=3, edgecolor="k", linewidth=0.4)
        ax.annotate(name, (ms, acc), fontsize=7, xytext=(4, 4), textcoords="offset points")
    for name, ms in (references or {}).items():
        ax.axvline(ms, color=_engine_color(name), ls="--", lw=1)
        ax.text(ms, 0.02, f" {name}", rotation=90, fontsize=7, va="bottom", ha="right", color=_engine_color(name),
                transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_xlabel("median latency (ms), batch 1, log scale")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def loss_curves(curves: Mapping[str, Sequence[float]], title: str = "", ylabel: str = "mean training loss",
                xlabel: str = "epoch") -> Any:
    """One line per named curve (value per epoch, 1-based x axis).

    >>> fig = loss_curves({"dual": [0.9, 0.5], "rgb_only": [0.6, 0.4]})
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    longest = max((len(v) for v in curves.values()), default=0)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xticks=range(1, longest + 1))
    if curves:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def step_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "",
                ylabel: str = "training loss (per step)") -> Any:
    """Per-step training curves: one line per run over its global step, from each epoch record's `step_loss`
    (train.train_stage1 / train_stage2), epoch boundaries dotted; runs without per-step records (older caches)
    fall back to one point per epoch at the epoch's last step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    bounds: set[int] = set()
    for name, records in histories.items():
        ys: list[float] = []
        xs: list[float] = []
        for h in records:
            steps, last = h.get("step_loss"), (xs[-1] if xs else 0)
            if steps:
                xs += list(range(last + 1, last + len(steps) + 1))
                ys += list(steps)
            else:
                ys.append(h["loss"])
                xs.append(last + int(h.get("steps", 1)))
            bounds.add(xs[-1])
        ax.plot(xs, ys, lw=1.0, label=name, marker="o" if len(xs) < 4 else None)
    for b in sorted(bounds)[:-1]:
        ax.axvline(b + 0.5, color="0.8", lw=0.6, ls=":")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if histories:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def stage2_history(history: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """Stage-2 training: the distillation loss L_d of every QAT run and the stage-2 triplet loss L_c, per epoch
    (`history` = {variant: train.train_stage2's per-epoch records})."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    for name, records in history.items():
        ax[0].plot([h["epoch"] for h in records], [h["parts"]["dual"] for h in records], marker="o", label=name)
    ax[0].set(xlabel="epoch", ylabel="L_d (mean)", title="distillation loss under fake quantization")
    records = history.get("stage2_int8", [])
    ax[1].plot([h["epoch"] for h in records], [h["parts"].get("triplet", 0) for h in records], marker="o",
               label="stage2_int8")
    ax[1].set(xlabel="epoch", ylabel="L_c (mean)", title="stage-2 triplet loss")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def edge_latency_figures(latency: Mapping[str, Mapping[str, float]], zero_shot: Mapping[str, Mapping[str, float]],
                         modalities: Sequence[str], cpu: str, threads: int, int8_engine: str) -> tuple[Any, Any]:
    """Notebook 05's two figures: batch-1 latency bars (p10-p90 whiskers) of every engine, and the project
    student's zero-shot top-1 against its latency, with CLIP-B/16 and the paper-scale int8 student as references.

    Args:
        latency: `benchmark.measure_latency`'s {engine: stats}; zero_shot: {"teacher"|"fp32"|"int8": {m: top-1}}.
    """
    medians = {n: s["median_ms"] for n, s in latency.items()}
    bars = latency_bars(medians, spread={n: (s["p10_ms"], s["p90_ms"]) for n, s in latency.items()},
                        title=f"batch-1 latency on {cpu}, {threads} thread(s) (bars: p10-p90)")
    points = {f"{who} ({m})": (medians[engine], zero_shot[who][m])
              for who, engine in (("teacher", "teacher_fp32_torch"), ("fp32", "project_fp32_ort"),
                                  ("int8", "project_int8_ort"))
              for m in modalities}
    scatter = accuracy_latency_scatter(points, {"clip_b16 (random weights)": medians["clip_b16_fp32_torch"],
                                                "student_int8 (ViT-S, random weights)": medians[int8_engine]},
                                       title="zero-shot top-1 vs batch-1 latency (project student, eval split)")
    return bars, scatter


def seed_rows(rows: Mapping[str, Mapping[str, Mapping[str, Any]]], ylabel: str = "paper average top-1 (eval)") -> Any:
    """The seed study's rows: one panel per configuration, each row's per-seed values (dots) and mean +- sd (bar).

    Args:
        rows: {configuration: {row: {"mean", "sd", "values"}}} (`study.rows_over_seeds`).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.4), squeeze=False, sharey=True)
    for ax, (name, per_row) in zip(axes[0], rows.items()):
        names = list(per_row)
        for i, r in enumerate(names):
            v = per_row[r]
            ax.errorbar(i, v["mean"], yerr=0 if np.isnan(v["sd"]) else v["sd"], fmt="s", color="C0", capsize=4)
            ax.scatter(np.full(len(v["values"]), i) + np.linspace(-0.12, 0.12, len(v["values"])), v["values"],
                       s=14, color="C1", zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def seed_claims(claims: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Any:
    """Each claim's a - b in points per configuration: the pooled paired-bootstrap CI (bar) and per-seed diffs
    (dots), coloured by verdict; zero marked."""
    import matplotlib.pyplot as plt

    colors = {"holds": "C2", "contradicted": "C3", "not significant": "0.5"}
    names = list(next(iter(claims.values())))
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(names) * len(claims) + 1.2))
    y = 0
    ticks, labels = [], []
    for k, (config, block) in enumerate(claims.items()):
        for claim in names:
            c = block[claim]
            ax.errorbar(100 * c["diff"], y, xerr=[[100 * (c["diff"] - c["ci"][0])], [100 * (c["ci"][1] - c["diff"])]],
                        fmt="o", color=colors[c["verdict"]], capsize=3)
            ax.scatter([100 * d for d in c["per_seed_diff"]], [y] * len(c["per_seed_diff"]), marker="|", s=80,
                       color="k", zorder=3)
            ticks.append(y)
            labels.append(f"{config}: {claim} ({c['verdict']})")
            y -= 1
        y -= 0.6
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("a - b, points of paper average (bar: 95 % CI over samples; ticks: seeds)")
    fig.tight_layout()
    return fig


def curation_study(rows: Mapping[str, Mapping[str, Any]], chosen: str, counts: bool = True) -> Any:
    """A study's settings: held-out teacher agreement (left, what chooses) and eval paper average (right, reported
    only), with 95 % CIs; the chosen setting in red and bold; `counts` adds each setting's kept / total. Rows with
    `admitted: False` (they fail the curation requirements) get hollow markers and "fails requirements"."""
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.4 * len(names) + 1.6), sharey=True)
    for ax, key, title in ((axes[0], "holdout_agreement", "held-out adapt: teacher agreement (chooses)"),
                           (axes[1], "eval_paper_avg", "eval: paper average (reported only)")):
        for i, n in enumerate(names):
            ci = rows[n][f"{key}_ci"]
            color = "C3" if n == chosen else "C0"
            ax.errorbar(rows[n][key], -i, xerr=[[rows[n][key] - ci["lo"]], [ci["hi"] - rows[n][key]]], fmt="o",
                        color=color, capsize=3, markerfacecolor="white" if rows[n].get("admitted") is False else color)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fails = {n: " fails requirements" if rows[n].get("admitted") is False else "" for n in names}
    axes[0].set_yticks([-i for i in range(len(names))],
                       [f"{n}  ({rows[n]['kept']}/{rows[n]['total']}){fails[n]}" if counts else f"{n} {fails[n]}"
                        for n in names], fontsize=8)
    for label in axes[0].get_yticklabels():
        if label.get_text().startswith(chosen + " "):
            label.set_fontweight("bold")
    fig.tight_layout()
    return fig
