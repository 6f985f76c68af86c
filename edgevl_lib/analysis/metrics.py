"""Feature angles and student-teacher representation consistency (M_rel, M_neigh).

Notation (as in `evaluate`): v_i = n(f(x_i)) the L2-normalised image embedding of evaluation sample i in one
modality, u_c = n(text embedding of class c), y_i its (pseudo-)label (-1 = unknown), n(v) = v / ||v||_2; S and T
are the N x D student and teacher embeddings of the same N samples (row i of both = sample i).

    feature angle (EdgeVL):  theta_i = arccos(clamp(v_i . u_{y_i}, -1, 1)) * 180 / pi      (degrees)
    margin angle:            mu_i = theta_{i, y_i} - min_{c != y_i} theta_{i, c}            (degrees, in [-180, 180])

theta_{i, c} is the angle between v_i and u_c. mu_i < 0: the label's text is the nearest class text (the
cosine zero-shot prediction is right); mu_i > 0: another class's text is nearer by mu_i degrees (wrong).

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

>>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); u = torch.eye(2)
>>> feature_angles(v, torch.tensor([0, 0, -1]), u)
tensor([ 0., 90., nan])
>>> margin_angles(v, torch.tensor([0, 0, -1]), u)
tensor([-90.,  90.,  nan])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

VARIANTS = ("fp32", "ptq", "qat", "stage2")
"""The model variants of notebook 04: fp32 stage-1 student, PTQ int8, QAT int8 (no triplet), stage-2 int8."""
MODALITIES = ("rgb", "depth", "thermal")
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


def _angle_inputs(img_emb: ArrayLike, labels: ArrayLike | Sequence[int | None],
                  text_emb: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N x D image embeddings, N labels, C x D text embeddings), float64 / long, validated."""
    img, text = _matrix(img_emb, "img_emb"), _matrix(text_emb, "text_emb")
    if img.shape[1] != text.shape[1]:
        raise ValueError(f"image embeddings are {img.shape[1]}-d but text embeddings {text.shape[1]}-d")
    return img, _labels(labels, len(img), len(text)), text


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
    img, y, text = _angle_inputs(img_emb, labels, text_emb)
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


def margin_angles(img_emb: ArrayLike, labels: ArrayLike | Sequence[int | None], text_emb: ArrayLike) -> torch.Tensor:
    """Margin angle in degrees: the angle to the label's text minus the smallest angle to any other class text.

        theta_{i, c} = arccos(clamp(n(v_i) . n(u_c), -1, 1)) * 180 / pi
        mu_i = theta_{i, y_i} - min_{c != y_i} theta_{i, c}

    computed in float64. mu_i < 0: the label's text is the nearest class text by |mu_i| degrees (arccos is
    decreasing, so this is the cosine zero-shot prediction being right); mu_i > 0: another class is nearer by
    mu_i degrees (wrong); 0: a tie. Smaller is better, as for `feature_angles`, but unlike the plain angle the
    margin also sees how close the other classes are.

    Args:
        img_emb: N x D image embeddings (normalised here).
        labels: N (pseudo-)labels indexing the rows of `text_emb`; -1 or None = unknown.
        text_emb: C x D class text embeddings, C >= 2 (normalised here).

    Returns:
        N float32 margins in [-180, 180]; rows with an unknown label are NaN (row i stays sample i).

    Raises:
        ValueError: shapes disagree, fewer than 2 classes, or a label is neither -1 nor a row of `text_emb`.

    >>> u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # classes at 0, 90 and 180 deg
    >>> margin_angles(torch.tensor([[3 ** 0.5, 1.0], [3 ** 0.5, 1.0]]), [0, 1], u).round()  # the image at 30 deg
    tensor([-30.,  30.])
    """
    img, y, text = _angle_inputs(img_emb, labels, text_emb)
    if len(text) < 2:
        raise ValueError(f"the margin angle needs at least 2 classes (another class to compare with), got {len(text)}")
    known = y >= 0
    out = torch.full((len(img),), float("nan"), dtype=torch.float64)
    cos = (F.normalize(img[known], dim=-1) @ F.normalize(text, dim=-1).T).clamp(-1.0, 1.0)
    theta = torch.rad2deg(torch.arccos(cos))  # N_known x C
    own = y[known].unsqueeze(1)
    out[known] = theta.gather(1, own).squeeze(1) - theta.scatter(1, own, math.inf).min(dim=1).values
    return out.float()


def variant_margin_angles(emb: Mapping[str, Mapping[str, ArrayLike]], labels: ArrayLike | Sequence[int | None],
                          text_emb: ArrayLike) -> dict[str, dict[str, torch.Tensor]]:
    """`margin_angles` for every variant and modality: {variant: {modality: N margins}}.

    >>> variant_margin_angles({"fp32": {"rgb": torch.eye(2)}}, [0, 0], torch.eye(2))["fp32"]["rgb"]
    tensor([-90.,  90.])
    """
    return {v: {m: margin_angles(x, labels, text_emb) for m, x in per_mod.items()} for v, per_mod in emb.items()}


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


ANGLE_CLAIMS: dict[str, tuple[str, str, int]] = {
    "stage2_angle_below_fp32": ("stage2", "fp32", -1),   # the paper's theta_3 < theta_1
    "ptq_opens_the_angle": ("ptq", "fp32", +1),
    "stage2_closes_the_ptq_angle": ("stage2", "ptq", -1),
}
"""The paper's angle claims, tested on the per-sample mean angle over the trained modalities (degrees)."""

MARGIN = "_margin"
"""Suffix of the margin rows and claims: row `stage2_margin` = the margins of variant `stage2` (`claim_rows`)."""

MARGIN_CLAIMS: dict[str, tuple[str, str, int]] = {
    name + MARGIN: (a + MARGIN, b + MARGIN, sign) for name, (a, b, sign) in ANGLE_CLAIMS.items()}
"""The same claims on the margin angle (same signs: a smaller margin = nearer the label's text relative to the
other classes), e.g. `stage2_angle_below_fp32_margin`: mu_3 < mu_1."""


def claim_rows(angles: Mapping[str, Any], margins: Mapping[str, Any]) -> dict[str, Any]:
    """The rows of {**ANGLE_CLAIMS, **MARGIN_CLAIMS}: the angles under their variant names and the margins under
    `<variant>_margin`, so `stats.claims` tests all six in one Holm family.

    >>> sorted(claim_rows({"fp32": {}}, {"fp32": {}}))
    ['fp32', 'fp32_margin']
    """
    return {**angles, **{v + MARGIN: per_mod for v, per_mod in margins.items()}}


def analysis_metrics(angles: Mapping[str, Mapping[str, ArrayLike]], scores: RepresentationScores | None = None,
                     margins: Mapping[str, Mapping[str, ArrayLike]] | None = None) -> dict[str, Any]:
    """The metrics.json block of notebook 04.

    Returns:
        {"angle_deg": {variant: {modality: mean angle}}, "angle_stats": {variant: {modality: {mean, median,
        std, n}}}, with `margins` (`variant_margin_angles`): "margin_angle_deg" / "margin_angle_stats", the
        same for the margin angles, and with `scores`: "m_rel" / "m_neigh": {variant: mean over modalities},
        "m_rel_by_modality" / "m_neigh_by_modality": {variant: {modality: value}}, "representation": {target,
        k, n, method, m_neigh_chance}}.

    >>> analysis_metrics({"fp32": {"rgb": torch.tensor([10.0, 20.0])}})["angle_deg"]
    {'fp32': {'rgb': 15.0}}
    >>> analysis_metrics({}, margins={"fp32": {"rgb": torch.tensor([-10.0, 20.0])}})["margin_angle_deg"]
    {'fp32': {'rgb': 5.0}}
    """
    out: dict[str, Any] = {"angle_deg": angle_summary(angles, "mean"), "angle_stats": angle_summary(angles)}
    if margins is not None:
        out.update({"margin_angle_deg": angle_summary(margins, "mean"), "margin_angle_stats": angle_summary(margins)})
    if scores is not None:
        out.update({"m_rel": scores.mean("m_rel"), "m_neigh": scores.mean("m_neigh"),
                    "m_rel_by_modality": scores.m_rel, "m_neigh_by_modality": scores.m_neigh,
                    "representation": {"target": scores.target, "k": scores.k, "n": scores.n,
                                       "method": scores.method, "m_neigh_chance": scores.chance}})
    return out
