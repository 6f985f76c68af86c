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
