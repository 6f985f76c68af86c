"""Feature angles, student-teacher representation consistency, UMAP maps and an interactive explorer.

Notation (as in `evaluate`): v_i = n(f(x_i)) the L2-normalised image embedding of evaluation sample i in one
modality, u_c = n(text embedding of class c), y_i its (pseudo-)label (-1 = unknown), n(v) = v / ||v||_2; S and T
are the N x D student and teacher embeddings of the same N samples (row i of both = sample i).

    feature angle (EdgeVL):  theta_i = arccos(clamp(v_i . u_{y_i}, -1, 1)) * 180 / pi      (degrees)

EdgeVL (Cai et al., ECCV 2024) compares the mean angle of the model variants: post-training quantization (PTQ) of
the fp32 stage-1 student opens the angle between image features and the text feature of their label, stage 2
(quantization-aware training with the semi-hard triplet loss) closes it, below the fp32 student's angle
(theta_3 < theta_1, fp32 = theta_1, stage 2 = theta_3).

Representation consistency (after Li et al., ICCV 2023, who ask how well the student imitates the teacher's
visual representation space; the formulas below are our reconstruction, not their verbatim definitions):

    relative structure:      M_rel   = corr({ n(s_i).n(s_j) : i < j }, { n(t_i).n(t_j) : i < j })
    neighbourhood overlap:   M_neigh = 1/N sum_i |kNN_S(i) ∩ kNN_T(i)| / k

corr is Pearson's (or Spearman's) correlation over the N(N-1)/2 off-diagonal pairs; kNN_X(i) are the k samples
with the largest cosine similarity to sample i in space X, i itself excluded. Both are 1 for identical spaces and
for any rotation of the teacher space (they only see cosines), and at chance for an unrelated space: M_rel about 0,
M_neigh about k / (N - 1) (a random k-subset of the N - 1 others meets a fixed k-subset in k^2 / (N - 1) elements
on average). The student of modality m is compared with the teacher's RGB embeddings of the same samples (the
target it was distilled to; `target="rgb"`) or with the teacher's own embeddings of modality m (`target="same"`).

UMAP: one `umap.UMAP` (umap-learn) is fitted on the union of several embedding sets (e.g. the fp32 and int8 image
embeddings of every modality plus the C class text embeddings) so that all panels share one 2-D map, starting from
the exact cosine k-nearest-neighbour graph (umap's `precomputed_knn`); the coordinates are cached under
`utils.cache_dir() / "analysis"` (safetensors, keyed by sha256 of the input bytes and the parameters). `import umap`
costs seconds (numba), so it happens inside `umap_coordinates`, the only place. Embeddings can be cached too
(`cached_embeddings`), so a re-run of the notebook skips both the encoders and the fit.

The explorer (`feature_explorer`) is an ipywidgets UI for JupyterLab; executed headless (papermill / nbclient,
plain Python) it returns the static UMAP figure instead and creates no widget (`has_widget_frontend`).

>>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); u = torch.eye(2)
>>> feature_angles(v, torch.tensor([0, 0, -1]), u)
tensor([ 0., 90., nan])
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import utils

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "ptq", "qat", "stage2")
"""The model variants of notebook 04: fp32 stage-1 student, PTQ int8, QAT int8 (no triplet), stage-2 int8."""
MODALITIES = ("rgb", "depth", "thermal")
TEXT_SET = "text"
"""Name of the class text embeddings among the UMAP sets (`umap_sets`)."""
VARIANT_COLOURS = {"fp32": "tab:blue", "ptq": "tab:red", "qat": "tab:orange", "stage2": "tab:green"}
MODALITY_COLOURS = {"rgb": "tab:blue", "depth": "tab:orange", "thermal": "tab:red", "swir": "tab:purple"}
UNKNOWN_COLOUR = "0.75"
ArrayLike = torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------------------------
# Feature angles (EdgeVL)
# ----------------------------------------------------------------------------------------------


def _matrix(x: ArrayLike | Sequence, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty N x D matrix, got shape {tuple(t.shape)}")
    return t.double()


def _labels(labels: ArrayLike | Sequence[int | None], n: int, num_classes: int) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        y = labels.detach().cpu().long().reshape(-1)
    else:
        y = torch.tensor([-1 if v is None else int(v) for v in np.asarray(labels, dtype=object).reshape(-1)],
                         dtype=torch.long)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} embeddings; pass one label per row (-1 = unknown)")
    bad = (y < -1) | (y >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"labels {sorted(set(y[bad].tolist()))[:5]} are not class indices 0..{num_classes - 1} "
                         f"or -1 (unknown); the rows of text_emb must be the classes the labels index")
    return y


def feature_angles(img_emb: ArrayLike, labels: ArrayLike | Sequence[int | None], text_emb: ArrayLike) -> torch.Tensor:
    """Angle in degrees between each image embedding and the text embedding of its label (EdgeVL).

    theta_i = arccos(clamp(n(v_i) . n(u_{y_i}), -1, 1)) * 180 / pi, computed in float64 (the clamp guards
    arccos against rounding just outside [-1, 1]).

    Args:
        img_emb: N x D image embeddings (normalised here).
        labels: N (pseudo-)labels indexing the rows of `text_emb`; -1 or None = unknown.
        text_emb: C x D class text embeddings (normalised here).

    Returns:
        N float32 angles in [0, 180]; rows with an unknown label are NaN (kept, so row i stays sample i;
        `angle_summary` ignores them).

    Raises:
        ValueError: shapes disagree, or a label is neither -1 nor a row of `text_emb`.

    >>> feature_angles(torch.tensor([[1.0, 3 ** 0.5], [1.0, 0.0]]), [0, 1], torch.eye(2)).round()
    tensor([60., 90.])
    """
    img, text = _matrix(img_emb, "img_emb"), _matrix(text_emb, "text_emb")
    if img.shape[1] != text.shape[1]:
        raise ValueError(f"image embeddings are {img.shape[1]}-d but text embeddings {text.shape[1]}-d")
    y = _labels(labels, len(img), len(text))
    known = y >= 0
    out = torch.full((len(img),), float("nan"), dtype=torch.float64)
    cos = (F.normalize(img[known], dim=-1) * F.normalize(text[y[known]], dim=-1)).sum(dim=-1).clamp(-1.0, 1.0)
    out[known] = torch.rad2deg(torch.arccos(cos))
    return out.float()


def variant_angles(emb: Mapping[str, Mapping[str, ArrayLike]], labels: ArrayLike | Sequence[int | None],
                   text_emb: ArrayLike) -> dict[str, dict[str, torch.Tensor]]:
    """`feature_angles` for every variant and modality: {variant: {modality: N angles}}.

    >>> a = variant_angles({"fp32": {"rgb": torch.eye(2)}}, [0, 0], torch.eye(2))
    >>> a["fp32"]["rgb"]
    tensor([ 0., 90.])
    """
    return {v: {m: feature_angles(x, labels, text_emb) for m, x in per_mod.items()} for v, per_mod in emb.items()}


def _angle_stats(angles: ArrayLike) -> dict[str, float]:
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(a.mean()), "median": float(np.median(a)), "std": float(a.std()), "n": int(a.size)}


def angle_summary(angles: Mapping[str, Any], stat: str | None = None) -> dict[str, Any]:
    """Mean, median, standard deviation (population, ddof 0) and count of the angles, NaN (unknown label) ignored.

    Args:
        angles: {modality: N angles} or, nested, {variant: {modality: N angles}} (`variant_angles`).
        stat: None for the full {"mean", "median", "std", "n"} dict at each leaf, or one of those names for
            just that number (e.g. "mean" for metrics.json's `angle_deg.<variant>.<modality>`).

    Returns:
        The same nesting as `angles` with the statistics at the leaves; a leaf with no known label has NaN
        statistics and n = 0.

    >>> angle_summary({"rgb": torch.tensor([30.0, 60.0, float("nan")])})
    {'rgb': {'mean': 45.0, 'median': 45.0, 'std': 15.0, 'n': 2}}
    >>> angle_summary({"fp32": {"rgb": torch.tensor([30.0, 60.0])}}, stat="mean")
    {'fp32': {'rgb': 45.0}}
    """
    if stat is not None and stat not in ("mean", "median", "std", "n"):
        raise ValueError(f"stat must be one of mean, median, std, n or None, got {stat!r}")
    out: dict[str, Any] = {}
    for name, value in angles.items():
        if isinstance(value, Mapping):
            out[name] = angle_summary(value, stat)
        else:
            stats = _angle_stats(value)
            out[name] = stats if stat is None else stats[stat]
    return out


# ----------------------------------------------------------------------------------------------
# Representation consistency (after Li et al., ICCV 2023)
# ----------------------------------------------------------------------------------------------


def _paired(student: ArrayLike, teacher: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = _matrix(student, "student"), _matrix(teacher, "teacher")
    if len(s) != len(t):
        raise ValueError(f"student has {len(s)} rows, teacher {len(t)}: both must embed the same samples in the same "
                         f"order (the dimensions may differ)")
    if len(s) < 3:
        raise ValueError(f"need at least 3 samples to compare representation spaces, got {len(s)}")
    return F.normalize(s, dim=-1), F.normalize(t, dim=-1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    if float(denom) == 0.0:
        raise ValueError("one space has identical similarities for every pair (e.g. all embeddings equal); "
                         "its correlation with another space is undefined")
    return float((a @ b) / denom)


def m_rel(student: ArrayLike, teacher: ArrayLike, method: str = "pearson") -> float:
    """Consistency of relative structure: how well the student keeps the teacher's pairwise similarities.

    After Li et al. (ICCV 2023), who measure how well the student imitates the teacher's visual representation
    space; a space is judged by the relations between its samples, not by absolute coordinates (so spaces of
    different dimension, or rotated, can be compared):

        M_rel = corr({ n(s_i).n(s_j) : i < j }, { n(t_i).n(t_j) : i < j })

    the correlation between the off-diagonal entries of the student's and the teacher's cosine-similarity
    matrices (each symmetric: the N(N-1)/2 pairs i < j). Pearson by default; `method="spearman"` uses the
    Pearson correlation of the ranks (ties averaged, scipy's `rankdata`). 1 = same relative structure (identical
    spaces, or one a rotation / reflection of the other), about 0 for unrelated spaces, -1 = inverted. O(N^2)
    memory (float64).

    Args:
        student: N x D_s student embeddings (normalised here).
        teacher: N x D_t teacher embeddings of the same N samples, same order (normalised here).
        method: "pearson" or "spearman".

    Returns:
        M_rel in [-1, 1].

    Raises:
        ValueError: row counts differ, N < 3, an unknown method, or a space with constant similarities.

    >>> s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> round(m_rel(s, s @ torch.tensor([[0.0, -1.0], [1.0, 0.0]])), 6)  # a rotated copy
    1.0
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    s, t = _paired(student, teacher)
    rows, cols = torch.triu_indices(len(s), len(s), offset=1)
    sim_s, sim_t = (s @ s.T)[rows, cols], (t @ t.T)[rows, cols]
    if method == "spearman":
        from scipy.stats import rankdata

        sim_s, sim_t = torch.from_numpy(rankdata(sim_s.numpy())), torch.from_numpy(rankdata(sim_t.numpy()))
    return _pearson(sim_s, sim_t)


def _knn(x: torch.Tensor, k: int) -> torch.Tensor:
    sim = x @ x.T
    sim.fill_diagonal_(-math.inf)  # a sample is not its own neighbour
    return sim.topk(k, dim=1).indices


def m_neigh(student: ArrayLike, teacher: ArrayLike, k: int = 10) -> float:
    """Neighbourhood overlap: the share of each sample's k nearest teacher-space neighbours the student keeps.

    After Li et al. (ICCV 2023): a student that imitates the teacher's space keeps each sample's neighbourhood,

        M_neigh = 1/N sum_i |kNN_S(i) ∩ kNN_T(i)| / k

    kNN_X(i) = the k samples j != i with the largest cosine similarity n(x_i).n(x_j) in space X (self excluded;
    exact ties are broken by torch.topk). 1 = every neighbourhood kept; chance level for an unrelated space is
    k / (N - 1) (`m_neigh_chance`), e.g. 10 / 749 = 0.013 for N = 750.

    Args:
        student: N x D_s student embeddings.
        teacher: N x D_t teacher embeddings of the same N samples, same order.
        k: neighbours per sample, 1 <= k <= N - 1.

    Returns:
        M_neigh in [0, 1].

    >>> s = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> m_neigh(s, s, k=1), m_neigh(s, s[[0, 2, 1, 3]], k=1)  # pairs {0, 1}, {2, 3} vs {0, 2}, {1, 3}
    (1.0, 0.0)
    """
    s, t = _paired(student, teacher)
    if not 1 <= k <= len(s) - 1:
        raise ValueError(f"k must be in [1, N - 1] = [1, {len(s) - 1}], got {k}")
    ks, kt = _knn(s, k), _knn(t, k)
    hits = (ks.unsqueeze(2) == kt.unsqueeze(1)).any(dim=2).sum(dim=1)  # |kNN_S(i) ∩ kNN_T(i)|
    return float(hits.double().mean() / k)


def m_neigh_chance(n: int, k: int = 10) -> float:
    """Expected M_neigh of an unrelated space: k / (N - 1).

    >>> m_neigh_chance(11, 2)
    0.2
    """
    return k / (n - 1)


@dataclass(frozen=True)
class RepresentationScores:
    """M_rel and M_neigh of each student variant and modality against one teacher space.

    Attributes:
        m_rel: {variant: {modality: M_rel}}.
        m_neigh: {variant: {modality: M_neigh}}.
        k: neighbours of M_neigh.
        n: samples compared.
        target: "rgb" (each modality against the teacher's RGB embeddings) or "same" (against the teacher's
            embeddings of the same modality).
        method: correlation of M_rel ("pearson" / "spearman").
    """

    m_rel: dict[str, dict[str, float]]
    m_neigh: dict[str, dict[str, float]]
    k: int
    n: int
    target: str
    method: str = "pearson"

    @property
    def chance(self) -> float:
        """Chance level of M_neigh, k / (N - 1)."""
        return m_neigh_chance(self.n, self.k)

    def mean(self, metric: str) -> dict[str, float]:
        """{variant: mean over modalities} of "m_rel" or "m_neigh" (metrics.json's `m_rel.<variant>`)."""
        values = {"m_rel": self.m_rel, "m_neigh": self.m_neigh}[metric]
        return {v: float(np.mean(list(per_mod.values()))) for v, per_mod in values.items()}


def representation_scores(emb: Mapping[str, Mapping[str, ArrayLike]], teacher_emb: Mapping[str, ArrayLike],
                          target: str = "rgb", k: int = 10, method: str = "pearson") -> RepresentationScores:
    """M_rel and M_neigh of every student variant and modality against the teacher (module docstring).

    Args:
        emb: {variant: {modality: N x D student embeddings}}.
        teacher_emb: {modality: N x D teacher embeddings of the same samples}.
        target: "rgb" compares every modality with the teacher's RGB embeddings (the stage-1 distillation
            target); "same" compares modality m with the teacher's embeddings of modality m.
        k: neighbours of M_neigh.
        method: correlation of M_rel.

    Returns:
        A RepresentationScores.

    >>> x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    >>> representation_scores({"fp32": {"rgb": x}}, {"rgb": x}, k=3).m_neigh
    {'fp32': {'rgb': 1.0}}
    """
    if target not in ("rgb", "same"):
        raise ValueError(f"target must be 'rgb' (teacher RGB space) or 'same' (teacher, same modality), got {target!r}")
    rel: dict[str, dict[str, float]] = {}
    neigh: dict[str, dict[str, float]] = {}
    n = 0
    for variant, per_mod in emb.items():
        rel[variant], neigh[variant] = {}, {}
        for modality, student in per_mod.items():
            key = "rgb" if target == "rgb" else modality
            if key not in teacher_emb:
                raise ValueError(f"teacher_emb has no {key!r} embeddings (has {sorted(teacher_emb)}); "
                                 f"embed the teacher on that modality or use target='rgb'")
            rel[variant][modality] = m_rel(student, teacher_emb[key], method)
            neigh[variant][modality] = m_neigh(student, teacher_emb[key], k)
            n = len(student)
    return RepresentationScores(rel, neigh, k, n, target, method)


def analysis_metrics(angles: Mapping[str, Mapping[str, ArrayLike]],
                     scores: RepresentationScores | None = None) -> dict[str, Any]:
    """The metrics.json block of notebook 04.

    Returns:
        {"angle_deg": {variant: {modality: mean angle}}, "angle_stats": {variant: {modality: {mean, median,
        std, n}}}, and with `scores`: "m_rel" / "m_neigh": {variant: mean over modalities},
        "m_rel_by_modality" / "m_neigh_by_modality": {variant: {modality: value}}, "representation": {target,
        k, n, method, m_neigh_chance}}.

    >>> analysis_metrics({"fp32": {"rgb": torch.tensor([10.0, 20.0])}})["angle_deg"]
    {'fp32': {'rgb': 15.0}}
    """
    out: dict[str, Any] = {"angle_deg": angle_summary(angles, "mean"), "angle_stats": angle_summary(angles)}
    if scores is not None:
        out.update({"m_rel": scores.mean("m_rel"), "m_neigh": scores.mean("m_neigh"),
                    "m_rel_by_modality": scores.m_rel, "m_neigh_by_modality": scores.m_neigh,
                    "representation": {"target": scores.target, "k": scores.k, "n": scores.n,
                                       "method": scores.method, "m_neigh_chance": scores.chance}})
    return out


# ----------------------------------------------------------------------------------------------
# Caches: embeddings and UMAP coordinates (safetensors, never pickle)
# ----------------------------------------------------------------------------------------------


def analysis_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of the analysis caches: `root` if given, else `utils.cache_dir() / "analysis"`; created."""
    path = Path(root) if root is not None else utils.cache_dir() / "analysis"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_file(prefix: str, key: str, root: str | os.PathLike | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:60] or "key"
    return analysis_cache_dir(root) / f"{prefix}-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"


def _flatten(tensors: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"embedding names must be non-empty strings without '/', got {name!r}")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            t = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
            flat[prefix + name] = t.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    return flat


def _unflatten(flat: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def save_embeddings(key: str, tensors: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Store a (nested) dict of tensors as one safetensors file named after `key`, atomically.

    Args:
        key: the caller's cache key; it must change whenever the embeddings would (e.g. include the checkpoint
            digests, the dataset and the encodings). Any string; the file name is a slug of it plus its sha256.
        tensors: {name: tensor} or nested {variant: {modality: tensor}} (names without '/').
        root: cache folder (default `utils.cache_dir() / "analysis"`).

    Returns:
        The file written.

    >>> path = save_embeddings("demo", {"fp32": {"rgb": torch.zeros(2, 3)}}, root=getfixture("tmp_path"))
    """
    from safetensors.torch import save_file

    path = _cache_file("emb", key, root)
    with utils.atomic_path(path, suffix=".safetensors") as tmp:
        save_file(_flatten(tensors), str(tmp), metadata={"key": key, "format": "edgevl-embeddings-1"})
    log.info("stored embeddings %r in %s", key, path)
    return path


def load_embeddings(key: str, root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The dict `save_embeddings(key, ...)` stored (same nesting), or None when there is none / it is unreadable.

    >>> _ = save_embeddings("demo", {"fp32": {"rgb": torch.ones(1, 2)}}, root=getfixture("tmp_path"))
    >>> load_embeddings("demo", root=getfixture("tmp_path"))
    {'fp32': {'rgb': tensor([[1., 1.]])}}
    """
    from safetensors import safe_open

    path = _cache_file("emb", key, root)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                log.warning("embedding cache %s was written for another key; ignoring it", path)
                return None
            flat = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # a damaged file is a cache miss, not a failure
        log.warning("embedding cache %s is unreadable (%s); it will be recomputed", path, exc)
        return None
    return _unflatten(flat)


def cached_embeddings(key: str, compute: Callable[[], Mapping[str, Any]],
                      root: str | os.PathLike | None = None) -> dict[str, Any]:
    """`load_embeddings(key)` if stored, else `compute()`, stored with `save_embeddings` and returned.

    Args:
        key: cache key (see `save_embeddings`).
        compute: builds the (nested) dict of tensors, e.g. a lambda that embeds the evaluation set per variant.
        root: cache folder.

    Returns:
        The (nested) dict of CPU tensors; the same values whether computed or loaded.

    >>> cached_embeddings("demo2", lambda: {"rgb": torch.eye(2)}, root=getfixture("tmp_path"))["rgb"].shape
    torch.Size([2, 2])
    """
    found = load_embeddings(key, root)
    if found is not None:
        log.info("embeddings %r read from the cache", key)
        return found
    tensors = compute()
    save_embeddings(key, tensors, root)
    return _unflatten(_flatten(tensors))


# ----------------------------------------------------------------------------------------------
# UMAP (umap-learn; imported lazily, here only)
# ----------------------------------------------------------------------------------------------


def set_name(variant: str, modality: str) -> str:
    """Name of one variant's image embeddings of one modality among the UMAP sets, e.g. "stage2/depth"."""
    return f"{variant}/{modality}"


def umap_sets(emb: Mapping[str, Mapping[str, ArrayLike]], text_emb: ArrayLike | None = None,
              variants: Sequence[str] | None = None, modalities: Sequence[str] | None = None) -> dict[str, ArrayLike]:
    """The embedding sets one UMAP is fitted on: {"<variant>/<modality>": N x D, ..., "text": C x D}.

    Args:
        emb: {variant: {modality: N x D}}.
        text_emb: C x D class text embeddings (added as the set "text"), or None.
        variants: which variants (default all in `emb`), e.g. ("fp32", "stage2") for fp32 vs int8.
        modalities: which modalities (default all of each variant).

    >>> list(umap_sets({"fp32": {"rgb": torch.eye(2)}, "ptq": {"rgb": torch.eye(2)}}, torch.eye(2), ["fp32"]))
    ['fp32/rgb', 'text']
    """
    sets: dict[str, ArrayLike] = {}
    for v in variants or list(emb):
        if v not in emb:
            raise ValueError(f"no embeddings for variant {v!r}; have {sorted(emb)}")
        for m in modalities or list(emb[v]):
            sets[set_name(v, m)] = emb[v][m]
    if text_emb is not None:
        sets[TEXT_SET] = text_emb
    return sets


def _umap_key(arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for name, a in arrays.items():
        h.update(f"\0{name}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def exact_cosine_knn(x: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine distance 1 - n(x_i).n(x_j), each row's own index first (distance 0).

    The layout umap-learn's `precomputed_knn` expects (its own search includes the point itself). Computed in
    row blocks of `block` x N similarities (torch), so N = 9000 needs about 75 MB.

    Returns:
        (N x k int32 indices, N x k float32 distances), neighbours sorted by distance.

    >>> exact_cosine_knn(np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), 2)[0].tolist()
    [[0, 1], [1, 0], [2, 1]]
    """
    xt = F.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32)), dim=-1)
    indices, dists = [], []
    for start in range(0, len(xt), block):
        sim = xt[start:start + block] @ xt.T
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = 2.0  # above any cosine: self first even among duplicates
        val, idx = sim.topk(k, dim=1)
        indices.append(idx.to(torch.int32))
        dists.append((1.0 - val).clamp_min(0.0))
    return torch.cat(indices).numpy(), torch.cat(dists).numpy()


def umap_coordinates(sets: Mapping[str, ArrayLike], n_neighbors: int = 15, min_dist: float = 0.1,
                     metric: str = "cosine", n_epochs: int | None = None, seed: int = 0, neighbours: str = "exact",
                     cache: bool = True, cache_root: str | os.PathLike | None = None,
                     **umap_kwargs: Any) -> dict[str, np.ndarray]:
    """Fit ONE seeded umap.UMAP on the union of the sets; return each set's 2-D coordinates (shared map).

    The rows of all sets are stacked in the given order, `umap.UMAP(n_components=2, n_neighbors, min_dist,
    metric, n_epochs, random_state=seed, n_jobs=1, **umap_kwargs).fit_transform` maps them, and the result is
    split back. A seed makes umap-learn single-threaded and deterministic (same inputs, same coordinates on the
    same machine). With `neighbours="exact"` (metric "cosine" only) the k-nearest-neighbour graph UMAP starts
    from is computed exactly here (`exact_cosine_knn`) and passed as umap's `precomputed_knn`: exact, and about
    4x faster on 9000 points than umap's approximate NN-descent search with its numba compilation (measured
    on a 2-core CPU: ~20 s vs ~80 s for a first fit); "umap" lets umap-learn search (exact below 4096 points,
    NN-descent above). The coordinates are cached as `umap-<key>.safetensors` under `cache_root` (default
    `utils.cache_dir() / "analysis"`), key = sha256 of the set names, shapes, float32 bytes and the parameters
    (including umap's version): a second call with the same inputs reads the file and does not refit.

    Args:
        sets: {name: n_i x D} (e.g. `umap_sets(...)`), all of the same D.
        n_neighbors, min_dist, metric, n_epochs: umap.UMAP's (n_epochs None = umap's default: 200 for large
            data, 500 for small).
        seed: umap's random_state.
        neighbours: "exact" (cosine kNN computed here) or "umap" (umap-learn's own search).
        cache: read / write the on-disk cache.
        cache_root: cache folder.
        **umap_kwargs: other umap.UMAP arguments (JSON-serialisable; part of the key), e.g. init="random".

    Returns:
        {name: n_i x 2 float32}, in the order of `sets`.

    >>> xy = umap_coordinates({"a": np.random.rand(30, 8), "b": np.random.rand(5, 8)}, n_neighbors=5,
    ...                       cache_root=getfixture("tmp_path"))   # doctest: +SKIP
    >>> xy["a"].shape, xy["b"].shape                                  # doctest: +SKIP
    ((30, 2), (5, 2))
    """
    if not sets:
        raise ValueError("no embedding sets to map")
    arrays = {}
    for name, x in sets.items():
        a = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x),
                                 dtype=np.float32)
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"set {name!r} must be a non-empty n x D matrix, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"set {name!r} holds NaN or inf values; UMAP needs finite embeddings")
        arrays[name] = a
    dims = {a.shape[1] for a in arrays.values()}
    if len(dims) != 1:
        raise ValueError(f"all sets must have the same dimension, got {{name: D}} = "
                         f"{ {n: a.shape[1] for n, a in arrays.items()} }")
    total = sum(len(a) for a in arrays.values())
    if not 2 <= n_neighbors < total:
        raise ValueError(f"n_neighbors must be in [2, {total - 1}] for {total} points, got {n_neighbors}")
    from importlib.metadata import version

    if neighbours not in ("exact", "umap"):
        raise ValueError(f"neighbours must be 'exact' or 'umap', got {neighbours!r}")
    exact = neighbours == "exact" and metric == "cosine"
    params = {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric, "n_epochs": n_epochs,
              "seed": seed, "exact_knn": exact, "umap": version("umap-learn"), **umap_kwargs}
    try:
        key = _umap_key(arrays, params)
    except TypeError as exc:
        raise ValueError(f"umap_kwargs must be JSON-serialisable to key the cache: {exc}") from exc
    path = analysis_cache_dir(cache_root) / f"umap-{key}.safetensors"
    if cache and path.is_file():
        coords = _read_umap_cache(path, arrays)
        if coords is not None:
            log.info("UMAP coordinates of %d points read from %s", total, path)
            return coords

    import umap  # lazy: the first import compiles numba code (seconds)

    start = time.perf_counter()
    data = np.concatenate(list(arrays.values()))
    if exact:
        umap_kwargs = {**umap_kwargs, "precomputed_knn": (*exact_cosine_knn(data, n_neighbors), None)}
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                        n_epochs=n_epochs, random_state=seed, n_jobs=1, **umap_kwargs)
    with warnings.catch_warnings():  # no search index kept: umap warns that .transform is unavailable (unused)
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        flat = reducer.fit_transform(data)
    seconds = time.perf_counter() - start
    log.info("UMAP fitted on %d points (%d-d) in %.1f s", total, next(iter(dims)), seconds)
    coords, offset = {}, 0
    for name, a in arrays.items():
        coords[name] = np.ascontiguousarray(flat[offset:offset + len(a)], dtype=np.float32)
        offset += len(a)
    if cache:
        from safetensors.numpy import save_file

        meta = {"params": json.dumps(params, sort_keys=True), "names": json.dumps(list(arrays)),
                "fit_seconds": f"{seconds:.3f}"}
        with utils.atomic_path(path, suffix=".safetensors") as tmp:
            save_file(coords, str(tmp), metadata=meta)
    return coords


def _read_umap_cache(path: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    from safetensors.numpy import load_file

    try:
        stored = load_file(str(path))
    except Exception as exc:
        log.warning("UMAP cache %s is unreadable (%s); refitting", path, exc)
        return None
    if set(stored) != set(arrays) or any(stored[n].shape != (len(a), 2) for n, a in arrays.items()):
        log.warning("UMAP cache %s does not match the sets; refitting", path)
        return None
    return {n: stored[n] for n in arrays}


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
                              modalities: Sequence[str] | None = None, title: str = "") -> Any:
    """Violins of the feature angles: one panel per modality, one violin (colour) per variant, means annotated.

    Args:
        angles: {variant: {modality: N angles}} (`variant_angles`; NaN = unknown label, left out).
        variants: order of the violins (default: order of `angles`).
        modalities: panels (default: the modalities of the first variant).
        title: figure title.

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
        ax.set_xticks(range(len(variants)), variants)
        ax.set_title(m, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("angle(image, text of its label)  [deg]")
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
        for c, (x, y) in enumerate(txt):
            ax.annotate(class_names[c] if c < len(class_names) else str(c), (x, y), xytext=(3, 3),
                        textcoords="offset points", fontsize=6, zorder=5)
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
