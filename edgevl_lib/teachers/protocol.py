"""The `Teacher` protocol, its shared errors, CLIP zero-shot helpers and the torch preprocessing of every teacher.

A teacher maps images and texts into one L2-normalised space; zero-shot classification (CLIP) is

    logits_k(x) = scale * <f(x), g(t_k)>,   p(k | x) = softmax_k(logits(x)),

with f the image encoder, g the text encoder and t_k the prompts of class k ("a photo of a {}."): `prompt_ensemble`,
`text_classifier`, `zero_shot_logits`. `resize_and_normalize` mirrors open_clip's val transform on tensors;
`norm_tag` and `_file_fingerprint` name normalisations and weights files in teacher ids.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Teacher(Protocol):
    """What the rest of the workbench codes against.

    Attributes:
        id: names model + weights + preprocessing, e.g.
            `open_clip:ViT-g-14:laion2b_s34b_b88k:224:bicubic:clipnorm`; caches key on it.
        embed_dim: D, the width of both embeddings.
        image_size: the teacher's input size (images of any size are resized to it).
        logit_scale: s in softmax(s * cos) for zero-shot probabilities (CLIP's learned exp(t), 100 for
            OpenCLIP models; the embedded teacher's is calibrated on held-out pretrain images).
    """

    id: str
    embed_dim: int
    image_size: int
    logit_scale: float

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW float RGB in [0, 1], any H, W -> BxD L2-normalised float32 (resize + normalise inside)."""
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B strings -> BxD L2-normalised float32."""
        ...


class TeacherWeightsMissing(FileNotFoundError):
    """Teacher weights are not on this machine and downloading was not allowed. The message says what to do."""


class TeacherCheckpointError(ValueError):
    """A teacher weights file that cannot be used (another architecture, pickled code, damaged); names the file."""


# ----------------------------------------------------------------------------------------------
# CLIP zero-shot helpers
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def prompt_ensemble(teacher: Teacher, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """Class text embeddings by CLIP prompt ensembling: w_k = normalise(mean_j normalise(g(prompt_kj))).

    Args:
        teacher: any Teacher.
        prompts: for each of K classes, its prompts (any number per class, e.g. templates + a description).

    Returns:
        KxD float32, rows L2-normalised.
    """
    if not prompts or not all(prompts):
        raise ValueError("prompt_ensemble needs at least one prompt for every class")
    flat = [p for per_class in prompts for p in per_class]
    emb = F.normalize(teacher.encode_text(flat).float().cpu(), dim=-1)
    rows, start = [], 0
    for per_class in prompts:
        rows.append(emb[start:start + len(per_class)].mean(dim=0))
        start += len(per_class)
    return F.normalize(torch.stack(rows), dim=-1)


def text_classifier(teacher: Teacher, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """CLIP zero-shot classifier weights: w_k = normalise(mean_j normalise(g(template_j.format(c_k)))).

    Args:
        teacher: any Teacher.
        class_names: K class names (any names: they go through the text tower).
        templates: T prompt templates with one `{}`, e.g. "a photo of a {}.".

    Returns:
        KxD float32, rows L2-normalised.

    >>> text_classifier(teacher, ["chair", "lamp"], ["a photo of a {}."]).shape   # doctest: +SKIP
    torch.Size([2, D])
    """
    if not class_names or not templates:
        raise ValueError("text_classifier needs at least one class name and one template")
    return prompt_ensemble(teacher, [[t.format(c) for t in templates] for c in class_names])


def zero_shot_logits(img_emb: torch.Tensor, text_emb: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """CLIP logits: logits[b, k] = scale * <f(x_b), w_k> (inputs L2-normalised); softmax gives p(k | x_b).

    Args:
        img_emb: BxD image embeddings.
        text_emb: KxD class embeddings (e.g. from `text_classifier`).
        scale: CLIP's logit scale (exp(t) = 100 for trained CLIP models).

    Returns:
        BxK float32.
    """
    return scale * img_emb.float() @ text_emb.float().to(img_emb.device).t()


# ----------------------------------------------------------------------------------------------
# Preprocessing in torch (deterministic; mirrors open_clip's val transform on tensors)
# ----------------------------------------------------------------------------------------------


def resize_and_normalize(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                         interpolation: str = "bicubic", resize_mode: str = "shortest") -> torch.Tensor:
    """Resize a Bx3xHxW [0, 1] batch to `size` x `size` and normalise: y = (x - mean) / std.

    `shortest`: shortest side -> size (long side int(size * long / short), as torchvision.Resize), then
    centre crop; `squash`: straight to size x size; `longest`: longest side -> size, then pad with 0.
    Downsampling is antialiased; the result is clamped to [0, 1] before normalising (like PIL's uint8).
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected Bx3xHxW RGB in [0, 1], got shape {tuple(images.shape)}")
    x = images.float()
    h, w = x.shape[-2:]
    if resize_mode == "squash":
        new_hw = (size, size)
    elif resize_mode == "shortest":
        new_hw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    elif resize_mode == "longest":
        new_hw = (int(size * h / w), size) if h <= w else (size, int(size * w / h))
    else:
        raise ValueError(f"unknown resize_mode {resize_mode!r}; use shortest, squash or longest")
    if (h, w) != new_hw:
        mode = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}.get(interpolation)
        if mode is None:
            raise ValueError(f"unknown interpolation {interpolation!r}")
        kw: dict[str, Any] = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        x = F.interpolate(x, size=new_hw, mode=mode, **kw).clamp(0, 1)
    h, w = x.shape[-2:]
    if resize_mode == "longest":
        x = F.pad(x, ((size - w) // 2, size - w - (size - w) // 2, (size - h) // 2, size - h - (size - h) // 2))
    elif (h, w) != (size, size):  # centre crop, torchvision's rounding
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def norm_tag(mean: Sequence[float], std: Sequence[float]) -> str:
    """A short name of a normalisation for teacher ids: clipnorm, imagenetnorm, halfnorm or norm<hash>."""
    pair = (tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std))
    for name, (m, s) in {"clipnorm": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "imagenetnorm": (IMAGENET_MEAN, IMAGENET_STD),
                         "halfnorm": ((0.5,) * 3, (0.5,) * 3)}.items():
        if pair == (tuple(round(v, 6) for v in m), tuple(round(v, 6) for v in s)):
            return name
    return "norm" + hashlib.sha256(repr(pair).encode()).hexdigest()[:8]


def _file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of (size, first MiB, last MiB): cheap even for multi-GB checkpoints."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:10]
