"""MobileCLIP-style teacher ensembles: `EnsembleTeacher` (concatenated, re-normalised embeddings) and
`ensemble_soft_targets` (averaged zero-shot distributions of several teachers)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .protocol import Teacher, zero_shot_logits


class EnsembleTeacher:
    """Several teachers as one (MobileCLIP's teacher ensemble).

    `concat`: f(x) = normalise([f_1(x), ..., f_M(x)]) with every f_m L2-normalised, so D = sum_m D_m and
    <f(x), g(t)> = (1/M) sum_m <f_m(x), g_m(t)>: the ensemble's cosine is the mean of the members' cosines.
    """

    def __init__(self, members: Sequence[Teacher], mode: str = "concat") -> None:
        if not members:
            raise ValueError("EnsembleTeacher needs at least one member")
        if mode != "concat":
            raise ValueError(f"unknown ensemble mode {mode!r}; only 'concat' is implemented "
                             f"(use ensemble_soft_targets for averaged distributions)")
        self.members = list(members)
        self.mode = mode
        self.embed_dim: int = sum(m.embed_dim for m in self.members)
        self.image_size: int = max(m.image_size for m in self.members)
        # cos of concatenated normalised embeddings = mean of member cosines, so the scales average too
        self.logit_scale = sum(m.logit_scale for m in self.members) / len(self.members)
        self.id: str = f"ensemble:{mode}[" + "|".join(m.id for m in self.members) + "]"

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW -> Bx(sum D_m), concatenated member embeddings, re-normalised."""
        parts = [F.normalize(m.encode_image(images).float(), dim=-1) for m in self.members]
        return F.normalize(torch.cat([p.to(parts[0].device) for p in parts], dim=-1), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B strings -> Bx(sum D_m), concatenated member embeddings, re-normalised."""
        parts = [F.normalize(m.encode_text(texts).float(), dim=-1) for m in self.members]
        return F.normalize(torch.cat([p.to(parts[0].device) for p in parts], dim=-1), dim=-1)


@torch.no_grad()
def ensemble_soft_targets(members: Sequence[Teacher], images: torch.Tensor, text_embs: Sequence[torch.Tensor],
                          scale: float = 100.0) -> torch.Tensor:
    """Soft targets of a teacher ensemble: p(k | x) = (1/M) sum_m softmax_k(scale * <f_m(x), w_{m,k}>).

    Args:
        members: M teachers.
        images: Bx3xHxW RGB in [0, 1].
        text_embs: per member, its KxD_m class embeddings (`text_classifier(member, ...)`), same K classes.
        scale: logit scale applied to every member.

    Returns:
        BxK float32 probabilities (rows sum to 1), on the first member's device.
    """
    if len(members) != len(text_embs) or not members:
        raise ValueError(f"need one class-embedding matrix per member, got {len(text_embs)} for {len(members)}")
    probs = [zero_shot_logits(m.encode_image(images), w, scale).softmax(dim=-1) for m, w in zip(members, text_embs)]
    return torch.stack([p.to(probs[0].device) for p in probs]).mean(dim=0)
