"""Figures of notebook 04 (matplotlib, imported lazily) and the interactive feature explorer (ipywidgets).

Angle violins (`angle_distribution_figure`), M_rel / M_neigh bars (`representation_figure`) and the UMAP grid
(`umap_figure`) each return a Figure, saved by the notebook with utils.save_figure.

The explorer (`feature_explorer`) is an ipywidgets UI for JupyterLab; executed headless (papermill / nbclient,
plain Python) it returns the static UMAP figure instead and creates no widget (`has_widget_frontend`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .metrics import ArrayLike, RepresentationScores
from .umap_map import TEXT_SET, set_name

log = logging.getLogger(__name__)

VARIANT_COLOURS = {"fp32": "tab:blue", "ptq": "tab:red", "qat": "tab:orange", "stage2": "tab:green"}
MODALITY_COLOURS = {"rgb": "tab:blue", "depth": "tab:orange", "thermal": "tab:red", "swir": "tab:purple"}
UNKNOWN_COLOUR = "0.75"


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib; each returns a Figure, saved by the notebook with utils.save_figure)
# ----------------------------------------------------------------------------------------------


def _variant_colour(variant: str, index: int) -> str:
    return VARIANT_COLOURS.get(variant, f"C{index % 10}")


def _class_colours(num_classes: int) -> np.ndarray:
    """num_classes x 4 RGBA: tab20's distinct colours up to 20 classes, turbo samples beyond."""
    import matplotlib

    if num_classes <= 20:
        return np.array([matplotlib.colormaps["tab20"](i) for i in range(num_classes)]).reshape(-1, 4)
    return matplotlib.colormaps["turbo"](np.linspace(0, 1, num_classes))


def angle_distribution_figure(angles: Mapping[str, Mapping[str, ArrayLike]], variants: Sequence[str] | None = None,
                              modalities: Sequence[str] | None = None, title: str = "",
                              ylabel: str = "angle(image, text of its label)  [deg]",
                              reference: float | None = None) -> Any:
    """Violins of the feature angles: one panel per modality, one violin (colour) per variant, means annotated.

    Args:
        angles: {variant: {modality: N angles}} (`variant_angles`, or the margins of `variant_margin_angles`;
            NaN = unknown label, left out).
        variants: order of the violins (default: order of `angles`).
        modalities: panels (default: the modalities of the first variant).
        title: figure title.
        ylabel: label of the shared y axis.
        reference: y of a dashed horizontal line (e.g. 0 for margins: below it the label's text is the nearest).

    Returns:
        A Figure with one axes per modality.

    >>> fig = angle_distribution_figure({"fp32": {"rgb": torch.tensor([40.0, 50.0])},
    ...                                  "ptq": {"rgb": torch.tensor([55.0, 65.0])}})
    >>> len(fig.axes)
    1
    """
    import matplotlib.pyplot as plt

    variants = list(variants or angles)
    modalities = list(modalities or angles[variants[0]])
    fig, axes = plt.subplots(1, len(modalities), figsize=(0.6 + 0.9 * len(variants) * len(modalities) + 0.6, 3.4),
                             squeeze=False, sharey=True)
    for ax, m in zip(axes[0], modalities):
        for i, v in enumerate(variants):
            a = np.asarray(angles[v][m], dtype=np.float64) if m in angles.get(v, {}) else np.array([])
            a = a[~np.isnan(a)]
            if a.size == 0:
                continue
            colour = _variant_colour(v, i)
            if a.size > 1 and np.ptp(a) > 0:
                parts = ax.violinplot(a, positions=[i], widths=0.8, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                    body.set_edgecolor(colour)
                    body.set_alpha(0.45)
            ax.scatter([i], [a.mean()], color=colour, edgecolors="k", zorder=3, s=28)
            ax.annotate(f"{a.mean():.1f}°", (i, a.mean()), xytext=(0, 8), textcoords="offset points", ha="center",
                        fontsize=7)
        if reference is not None:
            ax.axhline(reference, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(variants)), variants)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def representation_figure(scores: RepresentationScores) -> Any:
    """Bars of M_rel and M_neigh: two panels, modalities on the x axis, one bar per variant, M_neigh's chance line.

    >>> x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    >>> len(representation_figure(representation_scores({"fp32": {"rgb": x}}, {"rgb": x}, k=3)).axes)
    2
    """
    import matplotlib.pyplot as plt

    variants = list(scores.m_rel)
    modalities = list(dict.fromkeys(m for v in variants for m in scores.m_rel[v]))
    width = 0.8 / max(1, len(variants))
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 1.6 * len(modalities) * max(1, len(variants)) / 2, 3.3))
    x = np.arange(len(modalities))
    target = "teacher RGB" if scores.target == "rgb" else "teacher, same modality"
    for ax, name, values in ((axes[0], "M_rel (similarity correlation)", scores.m_rel),
                             (axes[1], f"M_neigh (k={scores.k} neighbour overlap)", scores.m_neigh)):
        for i, v in enumerate(variants):
            ys = [values[v].get(m, np.nan) for m in modalities]
            bars = ax.bar(x + (i - (len(variants) - 1) / 2) * width, ys, width, label=v, color=_variant_colour(v, i))
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks(x, modalities)
        ax.set_ylim(min(0.0, float(np.nanmin([min(d.values()) for d in values.values()]))) - 0.02, 1.05)
        ax.set_title(f"{name}\nvs {target}", fontsize=9)
    axes[1].axhline(scores.chance, color="k", ls="--", lw=1)
    axes[1].text(len(modalities) - 0.5, scores.chance, f"chance k/(N-1) = {scores.chance:.3f}", ha="right",
                 va="bottom", fontsize=7)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _draw_map(ax: Any, coords: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str],
              variant: str, modalities: Sequence[str], colour_by: str, text_key: str | None = TEXT_SET,
              angles: Mapping[str, Mapping[str, ArrayLike]] | None = None, legend: bool = True) -> Any:
    """Scatter one variant's points (its modalities) coloured by class / modality / angle, plus the text stars."""
    colours = _class_colours(len(class_names))
    markers = {"rgb": "o", "depth": "s", "thermal": "^"}
    mappable = None
    if colour_by == "angle" and angles is not None:  # one colour scale for every variant and modality
        every = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for per in angles.values()
                                for a in per.values()])
        every = every[~np.isnan(every)]
        lo, hi = np.percentile(every, [2, 98]) if every.size else (0.0, 180.0)
    for j, m in enumerate(modalities):
        xy = coords[set_name(variant, m)]
        if colour_by == "class":
            c = np.array([colours[y] if y >= 0 else (0.75, 0.75, 0.75, 1.0) for y in labels])
            ax.scatter(xy[:, 0], xy[:, 1], c=c, s=4, alpha=0.6, marker=markers.get(m, "o"), linewidths=0,
                       rasterized=True)
        elif colour_by == "modality":
            ax.scatter(xy[:, 0], xy[:, 1], color=MODALITY_COLOURS.get(m, f"C{j}"), s=4, alpha=0.5,
                       marker=markers.get(m, "o"), linewidths=0, rasterized=True)
        elif colour_by == "angle":
            if angles is None:
                raise ValueError("colour_by='angle' needs the angles ({variant: {modality: N angles}})")
            a = np.asarray(angles[variant][m], dtype=np.float64)
            known = ~np.isnan(a)
            ax.scatter(xy[~known, 0], xy[~known, 1], color=UNKNOWN_COLOUR, s=4, linewidths=0, rasterized=True)
            mappable = ax.scatter(xy[known, 0], xy[known, 1], c=a[known], cmap="viridis", vmin=lo, vmax=hi, s=4,
                                  marker=markers.get(m, "o"), linewidths=0, rasterized=True)
        else:
            raise ValueError(f"colour_by must be 'class', 'modality' or 'angle', got {colour_by!r}")
    if text_key and text_key in coords:
        txt = coords[text_key]
        ax.scatter(txt[:, 0], txt[:, 1], marker="*", s=150, c=colours[:len(txt)], edgecolors="k", linewidths=0.6,
                   zorder=4)
        names = [class_names[c] if c < len(class_names) else str(c) for c in range(len(txt))]
        to_points = 72.0 / ax.figure.dpi  # display pixels -> points
        offsets = label_offsets(ax.transData.transform(txt) * to_points, names, fontsize=6,
                                right=ax.get_window_extent().x1 * to_points)
        for c, ((x, y), (dx, dy)) in enumerate(zip(txt, offsets)):
            ax.annotate(names[c], (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6, zorder=5,
                        ha="right" if dx < 0 else "left",
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="0.4") if dy > 4 else None)
    if legend and colour_by in ("class", "modality"):
        from matplotlib.lines import Line2D

        if colour_by == "class":
            handles = [Line2D([], [], marker="o", ls="", color=colours[c], label=n) for c, n in enumerate(class_names)]
        else:
            handles = [Line2D([], [], marker=markers.get(m, "o"), ls="", color=MODALITY_COLOURS.get(m, f"C{j}"),
                              label=m) for j, m in enumerate(modalities)]
        if text_key and text_key in coords:
            handles.append(Line2D([], [], marker="*", ls="", color="w", markeredgecolor="k", markersize=9,
                                  label="class text"))
        ax.legend(handles=handles, fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if mappable is not None and legend:
        ax.figure.colorbar(mappable, ax=ax, label="angle to label text [deg]")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def label_offsets(anchors: np.ndarray, names: Sequence[str], fontsize: float = 6.0, pad: float = 3.0,
                  right: float | None = None) -> list[tuple[float, float]]:
    """Offsets (points) that keep text labels from overlapping: label i starts at its anchor + (pad, pad); labels are
    placed bottom-up (by anchor y, then x) and each is raised by whole line heights until its box (width about
    0.6 fontsize per character, height 1.25 fontsize) overlaps no placed box. A label that would cross `right` (the
    axes' right edge, in points) goes left of its anchor instead: dx = -pad, to be drawn right-aligned (ha="right").
    Deterministic; a leader line is worth drawing when dy > pad.

    Args:
        anchors: N x 2 anchor positions in points (display coordinates).
        names: the N label strings.
        right: the x (points) no label may cross; None = no limit.
    """
    height = 1.25 * fontsize
    boxes: list[tuple[float, float, float, float]] = []
    out: list[tuple[float, float]] = [(pad, pad)] * len(names)
    for i in np.lexsort((anchors[:, 0], anchors[:, 1])):
        width = 0.6 * fontsize * len(names[i])
        dx = pad if right is None or float(anchors[i, 0]) + pad + width <= right else -pad
        x0 = float(anchors[i, 0]) + dx - (width if dx < 0 else 0.0)
        x1 = x0 + width
        y0 = float(anchors[i, 1]) + pad
        while any(x0 < bx1 and bx0 < x1 and y0 < by1 and by0 < y0 + height for bx0, by0, bx1, by1 in boxes):
            y0 += height
        boxes.append((x0, y0, x1, y0 + height))
        out[i] = (dx, y0 - float(anchors[i, 1]))
    return out


def _map_inputs(coords: Mapping[str, np.ndarray], labels: ArrayLike | Sequence[int | None],
                variants: Sequence[str] | None, class_names: Sequence[str],
                text_key: str | None) -> tuple[list[str], dict[str, list[str]], np.ndarray]:
    """Check the map's inputs; return (variants, {variant: modalities}, N labels as an int array)."""
    y = np.asarray([-1 if v is None else int(v) for v in np.asarray(labels, dtype=object).reshape(-1)], dtype=int)
    if ((y < -1) | (y >= len(class_names))).any():
        raise ValueError(f"labels must be -1 (unknown) or indices into the {len(class_names)} class names")
    if text_key and text_key in coords and len(coords[text_key]) != len(class_names):
        raise ValueError(f"the {text_key!r} set has {len(coords[text_key])} points for {len(class_names)} class "
                         f"names; pass one text embedding per class, in class order")
    found: dict[str, list[str]] = {}
    for name in coords:
        if "/" in name:
            v, m = name.split("/", 1)
            found.setdefault(v, []).append(m)
    variants = list(variants or found)
    missing = [v for v in variants if v not in found]
    if missing:
        raise ValueError(f"no UMAP coordinates for variants {missing}; have {sorted(found)} (see umap_sets)")
    for v in variants:
        for m in found[v]:
            if len(coords[set_name(v, m)]) != len(y):
                raise ValueError(f"{set_name(v, m)} has {len(coords[set_name(v, m)])} points but there are "
                                 f"{len(y)} labels; the sets must be the labelled evaluation samples")
    return variants, found, y


def umap_figure(coords: Mapping[str, np.ndarray], labels: ArrayLike | Sequence[int | None],
                class_names: Sequence[str], variants: Sequence[str] | None = None, text_key: str | None = TEXT_SET,
                colour_by: Sequence[str] = ("class", "modality"), title: str = "") -> Any:
    """UMAP grid: one row per variant (e.g. fp32 vs int8), one column per colouring, class text stars labelled.

    Each panel shows all modalities of its variant in the shared map (`umap_coordinates`); markers: o rgb,
    s depth, ^ thermal; grey = unknown label.

    Args:
        coords: {"<variant>/<modality>": N x 2, ..., "text": C x 2}.
        labels: N labels of the samples (-1 = unknown), the same for every set.
        class_names: the C class names (rows of the text set).
        variants: rows (default: every variant in `coords`).
        text_key: the text set's name (None = no stars).
        colour_by: columns, from "class", "modality" (and "angle" is only for the explorer).
        title: figure title.

    Returns:
        A Figure with len(variants) x len(colour_by) axes.

    >>> xy = {"fp32/rgb": np.zeros((2, 2)), "stage2/rgb": np.ones((2, 2)), "text": np.eye(2)}
    >>> len(umap_figure(xy, [0, 1], ["a", "b"]).axes)
    4
    """
    import matplotlib.pyplot as plt

    variants, found, y = _map_inputs(coords, labels, variants, class_names, text_key)
    fig, axes = plt.subplots(len(variants), len(colour_by), figsize=(4.2 * len(colour_by) + 1.4, 3.6 * len(variants)),
                             squeeze=False)
    for r, v in enumerate(variants):
        for c, how in enumerate(colour_by):
            _draw_map(axes[r, c], coords, y, class_names, v, found[v], how, text_key, legend=(r == 0))
            axes[r, c].set_title(f"{v}: by {how}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Interactive explorer (ipywidgets in JupyterLab; static figure when headless)
# ----------------------------------------------------------------------------------------------


def has_widget_frontend(interactive: bool | None = None) -> bool:
    """Whether widgets shown now would reach a live frontend (JupyterLab, Notebook) that renders them.

    `interactive` True / False decides (a notebook parameter). None = auto-detect:

    1. `EDGEVL_HEADLESS`, `PAPERMILL_EXECUTION` (set by `edgevl_lib.run`) or `CI` set -> False.
    2. Not inside a Jupyter kernel (plain Python, terminal IPython, pytest) -> False.
    3. Inside a kernel: the `allow_stdin` flag of the execute request now running. nbclient, the executor of
       papermill and `jupyter nbconvert --execute`, always sends allow_stdin=False (no human to type an answer,
       and no widget manager either); JupyterLab sends True (its `requestExecute` default) as do the other
       frontends where `input()` works. So papermill is recognised even when started by hand, with no
       environment variable. (Voila, a widget renderer built on nbclient, also sends False: pass
       `interactive=True` there.)

    >>> has_widget_frontend(), has_widget_frontend(True)
    (False, True)
    """
    if interactive is not None:
        return bool(interactive)
    if any(os.environ.get(name) for name in ("EDGEVL_HEADLESS", "PAPERMILL_EXECUTION", "CI")):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    try:
        parent = kernel.get_parent()  # the execute_request being handled (ipykernel >= 6)
        allow = parent.get("content", {}).get("allow_stdin") if parent else None
    except Exception:
        allow = None
    if allow is None:
        allow = getattr(kernel, "_allow_stdin", False)
    return bool(allow)


class FeatureExplorer:
    """ipywidgets UI over the UMAP map: Dropdowns variant x modality x colour-by and an Output with the scatter.

    Displays itself (the widget box) as a cell's last expression; every Dropdown change redraws the Output.
    Build it through `feature_explorer`, which falls back to a static figure when no frontend renders widgets.

    Args:
        coords, labels, class_names, variants, angles, text_key: as in `feature_explorer`.

    Attributes:
        controls: {"variant", "modality", "colour_by"}: the Dropdowns.
        output: the ipywidgets.Output holding the current scatter (a PNG).
        widget: the VBox shown.
        figure: the last drawn matplotlib Figure.

    >>> ex = FeatureExplorer({"fp32/rgb": np.zeros((2, 2))}, [0, 1], ["a", "b"])   # doctest: +SKIP
    >>> ex.controls["colour_by"].value = "modality"                                 # doctest: +SKIP
    """

    def __init__(self, coords: Mapping[str, np.ndarray], labels: ArrayLike | Sequence[int | None],
                 class_names: Sequence[str], variants: Sequence[str] | None = None,
                 angles: Mapping[str, Mapping[str, ArrayLike]] | None = None, text_key: str | None = TEXT_SET) -> None:
        import ipywidgets as widgets

        self.coords, self.class_names, self.angles, self.text_key = coords, list(class_names), angles, text_key
        self.variants, self.modalities, self.labels = _map_inputs(coords, labels, variants, class_names, text_key)
        all_modalities = list(dict.fromkeys(m for v in self.variants for m in self.modalities[v]))
        style = {"description_width": "initial"}
        self.controls = {
            "variant": widgets.Dropdown(options=self.variants, value=self.variants[0], description="variant",
                                        style=style),
            "modality": widgets.Dropdown(options=["all", *all_modalities], value="all", description="modality",
                                         style=style),
            "colour_by": widgets.Dropdown(options=["class", "modality"] + (["angle"] if angles is not None else []),
                                          value="class", description="colour by", style=style),
        }
        self.output = widgets.Output()
        self.widget = widgets.VBox([widgets.HBox(list(self.controls.values())), self.output])
        self.figure: Any = None
        for control in self.controls.values():
            control.observe(lambda _change: self.update(), names="value")
        self.update()

    def draw(self, variant: str, modality: str, colour_by: str) -> Any:
        """The Figure for one selection (a pyplot-free Figure, so nothing else shows it or keeps it alive)."""
        from matplotlib.figure import Figure

        mods = self.modalities[variant] if modality == "all" else [m for m in self.modalities[variant] if m == modality]
        fig = Figure(figsize=(7.5, 5.0))
        ax = fig.add_subplot()
        if mods:
            _draw_map(ax, self.coords, self.labels, self.class_names, variant, mods, colour_by, self.text_key,
                      self.angles)
        else:
            ax.text(0.5, 0.5, f"{variant} has no {modality} embeddings", ha="center", transform=ax.transAxes)
        ax.set_title(f"{variant} · {modality} · coloured by {colour_by}", fontsize=10)
        fig.tight_layout()
        return fig

    def update(self) -> None:
        """Redraw the Output for the current Dropdown values (as a PNG: works under any matplotlib backend)."""
        import io

        from IPython.display import Image, display

        state = {name: c.value for name, c in self.controls.items()}
        self.figure = self.draw(**state)
        png = io.BytesIO()
        self.figure.savefig(png, format="png", dpi=100, bbox_inches="tight")
        with self.output:
            self.output.clear_output(wait=True)
            display(Image(data=png.getvalue(), format="png"))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def feature_explorer(coords: Mapping[str, np.ndarray], labels: ArrayLike | Sequence[int | None],
                     class_names: Sequence[str], variants: Sequence[str] | None = None,
                     angles: Mapping[str, Mapping[str, ArrayLike]] | None = None, text_key: str | None = TEXT_SET,
                     interactive: bool | None = None) -> Any:
    """Interactive UMAP explorer in JupyterLab; the static UMAP figure when executed headless.

    Use it as the last expression of a cell: with a widget frontend (`has_widget_frontend(interactive)`) it
    returns a FeatureExplorer (Dropdowns variant x modality x colour-by, colour by angle when `angles` is given)
    that displays itself; otherwise (papermill, nbconvert, plain Python) it imports no ipywidgets and returns
    `umap_figure(coords, labels, class_names, variants)`, detached from pyplot so that it shows exactly once, as
    the cell's value, and leaves no widget state in the executed notebook.

    Args:
        coords: {"<variant>/<modality>": N x 2, ..., "text": C x 2} (`umap_coordinates(umap_sets(...))`).
        labels: N labels (-1 = unknown).
        class_names: C class names.
        variants: the variants offered (default all in `coords`).
        angles: {variant: {modality: N angles}} to offer colour-by angle.
        text_key: the text set's name in `coords` (None = no stars).
        interactive: the notebook parameter: True / False force, None = auto-detect.

    Returns:
        A FeatureExplorer, or a matplotlib Figure when headless.

    >>> xy = {"fp32/rgb": np.zeros((2, 2)), "text": np.eye(2)}
    >>> type(feature_explorer(xy, [0, 1], ["a", "b"])).__name__   # headless here (no kernel)
    'Figure'
    """
    if has_widget_frontend(interactive):
        return FeatureExplorer(coords, labels, class_names, variants, angles, text_key)
    import matplotlib.pyplot as plt

    log.info("no widget frontend (papermill / nbconvert / plain Python): showing the static UMAP figure; "
             "pass interactive=True to force the widgets")
    fig = umap_figure(coords, labels, class_names, variants, text_key)
    plt.close(fig)  # detach from pyplot: the inline backend would show it a second time
    return fig
