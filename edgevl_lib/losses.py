"""Distillation losses between a frozen CLIP teacher and the student, as pure functions.

Notation: B batch size, D embedding dim, C number of text embeddings (class prompts or captions),
t_i = T(x_i) the teacher's embedding of RGB image i, s_i = S(x_i) the student's embedding of the
same scene in some modality (RGB or an encoded non-RGB image), u_c the teacher's text embeddings,
n(v) = v / ||v||_2. All functions take raw embeddings and return a scalar tensor.

| term (weights key)    | source                                   | function                       |
|-----------------------|------------------------------------------|--------------------------------|
| `dual`                | EdgeVL (Cai et al., ECCV 2024), stage 1  | `dual_distillation_loss`       |
| `cosine`              | feature cosine distillation              | `cosine_distillation_loss`     |
| `image_contrastive`   | Li et al., ICCV 2023, L_im-cst           | `image_contrastive_loss`       |
| `vl_align`            | Li et al., ICCV 2023, L_vlalign          | `vl_alignment_loss`            |
| `affinity`            | TinyCLIP (Wu et al., ICCV 2023)          | `affinity_mimicking_loss`      |

`combined_distillation_loss(weights, ...)` sums the weighted terms the weights enable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

DISTANCES: tuple[str, ...] = ("l1", "mse", "cosine")
AFFINITIES: tuple[str, ...] = ("image_text", "text_image", "image_image")
LOSS_TERMS: tuple[str, ...] = ("dual", "cosine", "image_contrastive", "vl_align", "affinity")


def embedding_distance(teacher: torch.Tensor, student: torch.Tensor, distance: str = "l1") -> torch.Tensor:
    """Mean distance between paired embeddings, averaged over the batch and (for l1 / mse) over D.

    l1:     d = 1/(B·D) Σ_i Σ_k |t_ik - s_ik|          (torch.nn.L1Loss(), reduction="mean")
    mse:    d = 1/(B·D) Σ_i Σ_k (t_ik - s_ik)^2
    cosine: d = 1/B Σ_i (1 - cos(t_i, s_i))

    >>> embedding_distance(torch.tensor([[0., 1.]]), torch.tensor([[1., 1.]]))
    tensor(0.5000)
    """
    if teacher.shape != student.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)} shapes differ")
    if distance == "l1":
        return (teacher - student).abs().mean()
    if distance == "mse":
        return (teacher - student).pow(2).mean()
    if distance == "cosine":
        return cosine_distillation_loss(teacher, student)
    raise ValueError(f"unknown distance {distance!r}; use one of {DISTANCES}")


def _as_list(student_others: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    if student_others is None:
        return []
    if isinstance(student_others, Mapping):
        return list(student_others.values())
    return list(student_others)


def dual_distillation_loss(teacher_emb: torch.Tensor, student_rgb: torch.Tensor,
                           student_others: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                           distance: str = "l1", normalize: bool = True,
                           modality_reduction: str = "sum") -> torch.Tensor:
    """EdgeVL stage-1 dual-modality distillation: the teacher's RGB embedding supervises every modality.

    L_d = d(T(x), S(x)) + Σ_m d(T(x), S(x'_m))

    for RGB image x and each non-RGB image x'_m of the same scene, with d the mean absolute error over
    the batch and the D embedding dims (`embedding_distance`). As in the released code
    (ramdrop/edgevl trainer.py) teacher and student embeddings are L2-normalised first and d is
    `nn.L1Loss` averaged over all B·D elements. The paper sums the modality terms
    (`modality_reduction="sum"`, the default); the released code averages over the concatenated
    [S(x'); S(x)] batch, which is the same loss divided by the number of modalities
    (`modality_reduction="mean"` reproduces it exactly).

    Args:
        teacher_emb: B x D teacher embeddings of the RGB images (frozen; no gradient needed).
        student_rgb: B x D student embeddings of the RGB images.
        student_others: B x D student embeddings of each non-RGB modality (dict by name, or list).
        distance: `l1` (EdgeVL), `mse` (the released code's other option) or `cosine`.
        normalize: L2-normalise teacher and student embeddings before the distance.
        modality_reduction: `sum` (paper) or `mean` (released code) over the 1 + M modality terms.

    >>> t = torch.tensor([[1.0, 0.0]])
    >>> dual_distillation_loss(t, t, {"depth": torch.tensor([[0.0, 1.0]])})
    tensor(1.)
    """
    if modality_reduction not in ("sum", "mean"):
        raise ValueError(f"unknown modality_reduction {modality_reduction!r}; use sum or mean")
    teacher = F.normalize(teacher_emb, dim=-1) if normalize else teacher_emb
    terms = []
    for student in [student_rgb, *_as_list(student_others)]:
        s = F.normalize(student, dim=-1) if normalize else student
        terms.append(embedding_distance(teacher, s, distance))
    total = torch.stack(terms).sum()
    return total / len(terms) if modality_reduction == "mean" else total


def cosine_distillation_loss(teacher_emb: torch.Tensor, student_emb: torch.Tensor) -> torch.Tensor:
    """Cosine feature distillation: L_cos = 1/B Σ_i (1 - t_i·s_i / (||t_i|| ||s_i||)).

    >>> cosine_distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    tensor(1.)
    """
    cos = (F.normalize(teacher_emb, dim=-1) * F.normalize(student_emb, dim=-1)).sum(dim=-1)
    return (1 - cos).mean()


def image_contrastive_loss(teacher_emb: torch.Tensor, student_emb: torch.Tensor,
                           temperature: float = 0.07) -> torch.Tensor:
    """Li et al. (ICCV 2023) image-space contrastive distillation L_im-cst (InfoNCE, student -> teacher).

    L_im-cst = -1/B Σ_i log( exp(n(s_i)·n(t_i)/τ) / Σ_j exp(n(s_i)·n(t_j)/τ) )

    Student embedding i must pick the teacher embedding of the same image among the B teacher
    embeddings of the batch; equal to `F.cross_entropy(n(S) n(T)^T / τ, arange(B))`. The default
    τ = 0.07 is CLIP's initial temperature (a choice, not a value from the paper).

    >>> t = torch.eye(2)
    >>> round(float(image_contrastive_loss(t, t, temperature=1.0)), 4)  # -log(e / (e + 1))
    0.3133
    """
    logits = F.normalize(student_emb, dim=-1) @ F.normalize(teacher_emb, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def _softmax_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(softmax(teacher) || softmax(student)), averaged over rows."""
    p_log = F.log_softmax(teacher_logits, dim=-1)
    q_log = F.log_softmax(student_logits, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1).mean()


def vl_alignment_loss(teacher_emb: torch.Tensor, student_emb: torch.Tensor, text_emb: torch.Tensor,
                      temperature: float = 0.01) -> torch.Tensor:
    """Li et al. (ICCV 2023) vision-language alignment L_vlalign over the teacher's text embeddings.

    p_i = softmax_c(n(t_i)·n(u_c)/τ),  q_i = softmax_c(n(s_i)·n(u_c)/τ)
    L_vlalign = 1/B Σ_i KL(p_i || q_i) = 1/B Σ_i Σ_c p_ic (log p_ic - log q_ic)

    The student learns the teacher's zero-shot class distribution; equal to
    `F.kl_div(log q, log p, reduction="batchmean", log_target=True)`. τ = 0.01 is CLIP's trained
    logit scale (100).

    Args:
        teacher_emb: B x D teacher image embeddings.
        student_emb: B x D student image embeddings (normalised here).
        text_emb: C x D teacher text embeddings (normalised here).
        temperature: τ.
    """
    text = F.normalize(text_emb, dim=-1)
    teacher_logits = F.normalize(teacher_emb, dim=-1) @ text.T / temperature
    student_logits = F.normalize(student_emb, dim=-1) @ text.T / temperature
    return _softmax_kl(teacher_logits, student_logits)


def affinity_mimicking_loss(teacher_emb: torch.Tensor, student_emb: torch.Tensor,
                            text_emb: torch.Tensor | None = None, temperature: float = 0.01,
                            affinities: Sequence[str] = ("image_text", "text_image")) -> torch.Tensor:
    """TinyCLIP (Wu et al., ICCV 2023) affinity mimicking: match the teacher's affinity distributions.

    With v = n(image embedding) and u = n(teacher text embedding), each affinity is a row-softmax:

        image_text:  A_ic = softmax_c(v_i·u_c/τ)               (B x C, one row per image)
        text_image:  A_ci = softmax_i(u_c·v_i/τ)               (C x B, one row per text, over the batch)
        image_image: A_ij = softmax_{j≠i}(v_i·v_j/τ)           (B x B, self-pairs masked out)

        L_aff = 1/|A| Σ_{a ∈ affinities} mean_rows KL(A^T_a || A^S_a)

    TinyCLIP averages the image-to-text and text-to-image terms and writes them as the soft cross
    entropy -Σ A^T log A^S (Microsoft Cream, TinyCLIP/src/open_clip/clip_soft_loss.py); that is the
    KL here plus the teacher's entropy, a constant, so the gradients are identical and the KL is 0
    at perfect mimicry. The student has no text tower here, so both sides use the teacher's text
    embeddings (with class prompts, `image_text` equals `vl_alignment_loss`). `image_image` is the
    within-batch image affinity; it needs no text and B >= 2.

    Args:
        teacher_emb: B x D teacher image embeddings.
        student_emb: B x D student image embeddings.
        text_emb: C x D teacher text embeddings (needed for image_text / text_image).
        temperature: τ.
        affinities: subset of `AFFINITIES`, averaged.
    """
    unknown = set(affinities) - set(AFFINITIES)
    if unknown or not affinities:
        raise ValueError(f"affinities must be a non-empty subset of {AFFINITIES}, got {tuple(affinities)}")
    v_t, v_s = F.normalize(teacher_emb, dim=-1), F.normalize(student_emb, dim=-1)
    terms = []
    if {"image_text", "text_image"} & set(affinities):
        if text_emb is None:
            raise ValueError("image_text / text_image affinities need text_emb")
        u = F.normalize(text_emb, dim=-1)
        logits_t, logits_s = v_t @ u.T / temperature, v_s @ u.T / temperature
        if "image_text" in affinities:
            terms.append(_softmax_kl(logits_t, logits_s))
        if "text_image" in affinities:
            terms.append(_softmax_kl(logits_t.T, logits_s.T))
    if "image_image" in affinities:
        if v_t.shape[0] < 2:
            raise ValueError("image_image affinity needs a batch of at least 2")
        self_pair = torch.eye(v_t.shape[0], dtype=torch.bool, device=v_t.device)
        logits_t = (v_t @ v_t.T / temperature).masked_fill(self_pair, float("-inf"))
        logits_s = (v_s @ v_s.T / temperature).masked_fill(self_pair, float("-inf"))
        # -inf - -inf is nan on the masked diagonal; there p = 0, so drop those entries explicitly.
        p_log, q_log = F.log_softmax(logits_t, dim=-1), F.log_softmax(logits_s, dim=-1)
        kl = torch.where(self_pair, torch.zeros_like(p_log), p_log.exp() * (p_log - q_log))
        terms.append(kl.sum(dim=-1).mean())
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class DistillLossConfig:
    """Which distillation terms a run uses, their weights and hyper-parameters.

    Attributes:
        weights: term name (`LOSS_TERMS`) -> weight; terms with weight 0 or absent are skipped.
            EdgeVL stage 1 is `{"dual": 1.0}`.
        distance: d in the dual loss (`l1`, `mse`, `cosine`).
        modality_reduction: `sum` (paper) or `mean` (released code) over modality terms of `dual`.
        contrastive_temperature: τ of `image_contrastive`.
        align_temperature: τ of `vl_align`.
        affinity_temperature: τ of `affinity`.
        affinities: which TinyCLIP affinities `affinity` averages.
    """

    weights: dict[str, float] = field(default_factory=lambda: {"dual": 1.0})
    distance: str = "l1"
    modality_reduction: str = "sum"
    contrastive_temperature: float = 0.07
    align_temperature: float = 0.01
    affinity_temperature: float = 0.01
    affinities: tuple[str, ...] = ("image_text", "text_image")


def combined_distillation_loss(weights: Mapping[str, float], teacher_emb: torch.Tensor, student_rgb: torch.Tensor,
                               student_others: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None,
                               text_emb: torch.Tensor | None = None,
                               config: DistillLossConfig | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the enabled distillation terms over every modality of the batch.

    L = Σ_k w_k L_k, where `dual` is `dual_distillation_loss` (it already covers all modalities) and
    every other term is summed over the RGB and non-RGB student embeddings, each compared with the
    teacher's RGB embedding: L_k = Σ_{m ∈ {rgb} ∪ others} f_k(T(x), S(x_m)).

    Args:
        weights: term name -> weight (e.g. `cfg.weights`); zero weights are skipped.
        teacher_emb: B x D teacher RGB embeddings.
        student_rgb: B x D student RGB embeddings.
        student_others: B x D student embeddings of each non-RGB modality (dict or list), or None.
        text_emb: C x D teacher text embeddings (needed by `vl_align` and text affinities).
        config: hyper-parameters (temperatures, distance); its own `weights` field is ignored.

    Returns:
        (total, parts): the scalar loss to back-propagate, and the detached unweighted value of each
        enabled term, for logging.
    """
    cfg = config or DistillLossConfig()
    unknown = set(weights) - set(LOSS_TERMS)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; use {LOSS_TERMS}")
    enabled = {name: float(w) for name, w in weights.items() if w}
    if not enabled:
        raise ValueError("no loss term has a non-zero weight")
    students = [student_rgb, *_as_list(student_others)]

    def per_modality(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return torch.stack([fn(teacher_emb, s) for s in students]).sum()

    parts: dict[str, torch.Tensor] = {}
    for name in enabled:
        if name == "dual":
            parts[name] = dual_distillation_loss(teacher_emb, student_rgb, students[1:], cfg.distance,
                                                 modality_reduction=cfg.modality_reduction)
        elif name == "cosine":
            parts[name] = per_modality(cosine_distillation_loss)
        elif name == "image_contrastive":
            parts[name] = per_modality(lambda t, s: image_contrastive_loss(t, s, cfg.contrastive_temperature))
        elif name == "vl_align":
            if text_emb is None:
                raise ValueError("vl_align needs text_emb (the teacher's class-prompt embeddings)")
            parts[name] = per_modality(lambda t, s: vl_alignment_loss(t, s, text_emb, cfg.align_temperature))
        else:  # affinity
            parts[name] = per_modality(lambda t, s: affinity_mimicking_loss(
                t, s, text_emb, cfg.affinity_temperature, cfg.affinities))
    total = torch.stack([enabled[name] * value for name, value in parts.items()]).sum()
    return total, {name: value.detach() for name, value in parts.items()}
