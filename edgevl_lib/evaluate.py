"""Zero-shot evaluation of students and teachers per modality, student-teacher agreement, and the OOD split.

Notation: v_i = n(f(x_i)) the L2-normalised image embedding of sample i in one modality (a Student's
`encode`, or a Teacher's `encode_image` of the encoded 3-channel image), u_c = n(text embedding of class c)
(e.g. `teachers.text_classifier`), y_i its label (-1 / None = unknown, ignored), n(v) = v / ||v||_2.

    zero-shot top-1:   acc = 1/|V| Σ_{i ∈ V} 1[argmax_{c ∈ C} v_i·u_c = y_i],   V = {i : y_i ∈ C}
    agreement:         agr = 1/N Σ_i n(s_i)·n(t_i)        (mean student-teacher cosine, big_vision style)

C is every class (default) or a subset of class indices. Non-RGB images reach the encoders through
`data.encode_modality` (rgb identity, depth / thermal fixed-range replicate by default), the same
encoding stage 1 trains with.

Out-of-distribution classes (Li et al., ICCV 2023): `split_classes` splits the class names into seen and
unseen; training keeps only samples whose label (or, label-free, pseudo-label: `restrict_curation`) is a
seen class; `evaluate_ood` then reports

* `unseen`: unseen-class samples classified among the unseen classes ONLY (C = unseen; Li et al.'s
  protocol: the student never saw these classes, the text embeddings come from the teacher),
* `seen`: seen-class samples among the seen classes only,
* `unseen_vs_all` (optional, `include_all=True`): unseen-class samples among ALL classes, a harder
  number that also counts confusions with the seen classes the student was trained on.

>>> img = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.0]]); txt = torch.eye(2)
>>> zero_shot_accuracy(img, torch.tensor([0, 0, -1]), txt)
0.5
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from . import data, utils
from .curation import CurationResult
from .teachers import Teacher
from .students import Student

log = logging.getLogger(__name__)

EncodeFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_dataset(encode_fn: EncodeFn, dataset: Dataset, modalities: Sequence[str],
                  encodings: dict[str, data.ModalityEncoding] | None = None, image_size: int | None = None,
                  batch_size: int = 64, device: str | torch.device = "cpu",
                  num_workers: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Embed every sample of a dataset in each modality: v_i^m = n(encode_fn(encode_modality(x_i^m))).

    Args:
        encode_fn: B x 3 x S x S images in [0, 1] -> B x D (e.g. `student.encode`, `teacher.encode_image`).
        dataset: a PairedDataset or Subset of one (items are `data.Sample`).
        modalities: which modalities to embed (each sample must hold them).
        encodings: modality -> ModalityEncoding; missing ones use `data.default_encoding`.
        image_size: resize the encoded images to S x S (bilinear); None keeps the dataset's size.
        batch_size: samples per encoder call.
        device: where the encoder inputs go.
        num_workers: DataLoader workers.

    Returns:
        ({modality: N x D float32 on CPU, rows L2-normalised}, N int64 labels with -1 for unknown).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=data.collate_samples)
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    labels = []
    for batch in utils.progress(loader, desc="embedding", total=len(loader)):
        inputs = data.encoder_inputs(batch, modalities, encodings, size=image_size)
        for m in modalities:
            chunks[m].append(F.normalize(encode_fn(inputs[m].to(device)).float(), dim=-1).cpu())
        labels.append(batch["label"])
    return {m: torch.cat(c) for m, c in chunks.items()}, torch.cat(labels)


@contextlib.contextmanager
def _encoder(model: Student | Teacher | torch.nn.Module) -> Iterator[tuple[EncodeFn, torch.device, int | None]]:
    """(encode_fn, input device, native image size) for a student (eval mode while inside) or a Teacher.

    A student is a `students.Student` or any module with `encode` and `image_size` (e.g. the int8
    `stage2.Int8Student`); a teacher has `encode_image`.
    """
    if isinstance(model, torch.nn.Module) and hasattr(model, "encode") and hasattr(model, "image_size"):
        was_training = model.training
        model.eval()
        tensor = next(iter(model.buffers()), None)
        device = tensor.device if tensor is not None else torch.device("cpu")
        try:
            yield model.encode, device, model.image_size
        finally:
            model.train(was_training)
    elif hasattr(model, "encode_image"):
        yield model.encode_image, torch.device("cpu"), None  # teachers move inputs and resize themselves
    else:
        raise TypeError(f"{type(model).__name__} is neither a student (encode, image_size) nor a Teacher "
                        f"(encode_image)")


def embed_model(model: Student | Teacher, dataset: Dataset, modalities: Sequence[str],
                encodings: dict[str, data.ModalityEncoding] | None = None, image_size: int | None = None,
                batch_size: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`embed_dataset` for a Student or a Teacher: v_i^m = n(f(encode_modality(x_i^m))).

    Args:
        model: a Student (`encode`, run in eval mode and restored afterwards, inputs on its device, at its
            `image_size` by default) or a Teacher (`encode_image` of the encoded 3-channel [0, 1] image at
            the dataset's size; the teacher resizes and normalises itself).
        dataset, modalities, encodings, batch_size: as in `embed_dataset`.
        image_size: encoder input side; None = the student's size, or the dataset's for a teacher.

    Returns:
        ({modality: N x D normalised embeddings}, N labels with -1 for unknown).
    """
    with _encoder(model) as (encode_fn, device, native_size):
        return embed_dataset(encode_fn, dataset, modalities, encodings, image_size or native_size, batch_size,
                             device)


# ----------------------------------------------------------------------------------------------
# Metrics (pure functions)
# ----------------------------------------------------------------------------------------------


def zero_shot_accuracy(img_emb: torch.Tensor, labels: torch.Tensor | Sequence[int | None], text_emb: torch.Tensor,
                       classes: Sequence[int] | None = None) -> float:
    """Zero-shot top-1 accuracy: acc = 1/|V| Σ_{i ∈ V} 1[argmax_{c ∈ C} cos(v_i, u_c) = y_i], V = {i : y_i ∈ C}.

    Args:
        img_emb: N x D image embeddings (normalised here).
        labels: N class indices into the rows of `text_emb`; -1 or None = unknown (ignored).
        text_emb: K x D class text embeddings (normalised here).
        classes: C, the class indices to choose among (samples of other classes are ignored); None = all K.

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: no sample has a label in C.

    >>> zero_shot_accuracy(torch.eye(3), [0, 1, 1], torch.eye(3)), zero_shot_accuracy(torch.eye(3), [0, 1, 1],
    ...     torch.eye(3), classes=[1, 2])
    (0.6666666666666666, 0.5)
    """
    correct = zero_shot_correct(img_emb, labels, text_emb, classes)
    return int(correct.sum()) / len(correct)


def zero_shot_correct(img_emb: torch.Tensor, labels: torch.Tensor | Sequence[int | None], text_emb: torch.Tensor,
                      classes: Sequence[int] | None = None) -> np.ndarray:
    """Per-sample outcome of `zero_shot_accuracy`: 1[argmax_{c ∈ C} cos(v_i, u_c) = y_i] for every i ∈ V (in
    sample order; samples whose label is not in C are left out), as a bool array: the input of `stats`' paired
    tests between models evaluated on the same samples.

    >>> zero_shot_correct(torch.eye(3), [0, 1, 1], torch.eye(3)).tolist()
    [True, True, False]
    """
    if isinstance(labels, torch.Tensor):
        y = labels.long().cpu()
    else:
        y = torch.tensor([-1 if v is None else int(v) for v in labels], dtype=torch.long)
    candidates = torch.arange(len(text_emb)) if classes is None else torch.tensor(list(classes), dtype=torch.long)
    valid = torch.isin(y, candidates)
    if not bool(valid.any()):
        raise ValueError(f"no sample has a label among the {len(candidates)} evaluated classes")
    cos = F.normalize(img_emb[valid].float(), dim=-1) @ F.normalize(text_emb[candidates].float(), dim=-1).T
    predicted = candidates[cos.argmax(dim=-1)]
    return (predicted == y[valid]).numpy()


def agreement(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> float:
    """Mean student-teacher cosine over paired samples: agr = 1/N Σ_i n(s_i)·n(t_i), in [-1, 1].

    >>> agreement(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    0.5
    """
    if student_emb.shape != teacher_emb.shape:
        raise ValueError(f"student {tuple(student_emb.shape)} and teacher {tuple(teacher_emb.shape)} shapes differ")
    cos = (F.normalize(student_emb.float(), dim=-1) * F.normalize(teacher_emb.float(), dim=-1)).sum(dim=-1)
    return float(cos.mean())


def int8_agreement(fp32_emb: Mapping[str, torch.Tensor], int8_emb: Mapping[str, torch.Tensor],
                   modalities: Sequence[str], zero_shot: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """How far the deployed int8 encoder is from its fp32 self, on the same images.

        cosine    = agreement(cat_m int8_m, cat_m fp32_m)          (all images of all modalities)
        acc_delta = 1/|M| Σ_m (top1_int8(m) - top1_fp32(m))        (`zero_shot` = {"int8"|"fp32": {m: top-1}})

    Returns:
        {"cosine", "acc_delta", "per_modality_cosine": {m: agreement}}.
    """
    return {"cosine": agreement(torch.cat([int8_emb[m] for m in modalities]),
                                torch.cat([fp32_emb[m] for m in modalities])),
            "acc_delta": float(np.mean([zero_shot["int8"][m] - zero_shot["fp32"][m] for m in modalities])),
            "per_modality_cosine": {m: agreement(int8_emb[m], fp32_emb[m]) for m in modalities}}


def evaluate_zero_shot(model: Student | Teacher, dataset: Dataset, text_emb: torch.Tensor,
                       modalities: Sequence[str], encodings: dict[str, data.ModalityEncoding] | None = None,
                       image_size: int | None = None, batch_size: int = 64,
                       classes: Sequence[int] | None = None) -> dict[str, float]:
    """Zero-shot top-1 accuracy of a Student or a Teacher in each modality (see `zero_shot_accuracy`).

    Args:
        model: a `students.Student` (uses `encode`, in eval mode, at its `image_size`) or a Teacher (uses
            `encode_image` on the encoded 3-channel [0, 1] image; it resizes to its own input size).
        dataset: labelled samples; labels index the rows of `text_emb`.
        text_emb: K x D teacher class text embeddings (`teachers.text_classifier`).
        modalities: e.g. ("rgb", "depth").
        encodings: modality -> ModalityEncoding (default `data.default_encoding`).
        image_size: encoder input size; None = the student's size, or the dataset's for a teacher.
        batch_size: samples per encoder call.
        classes: class indices to choose among (None = all).

    Returns:
        {modality: accuracy}.
    """
    outcomes = zero_shot_outcomes(model, dataset, text_emb, modalities, encodings, image_size, batch_size, classes)
    return {m: int(o.sum()) / len(o) for m, o in outcomes.items()}


def zero_shot_outcomes(model: Student | Teacher, dataset: Dataset, text_emb: torch.Tensor,
                       modalities: Sequence[str], encodings: dict[str, data.ModalityEncoding] | None = None,
                       image_size: int | None = None, batch_size: int = 64,
                       classes: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """{modality: `zero_shot_correct` per sample} of a Student or Teacher (arguments as `evaluate_zero_shot`,
    whose accuracies are the means of these outcomes)."""
    width = int(model.embed_dim)
    if text_emb.shape[-1] != width:
        name = getattr(model, "arch", None) or getattr(model, "id", type(model).__name__)
        raise ValueError(f"{name} embeds to embed_dim {width} but the class text embeddings have width "
                         f"{text_emb.shape[-1]}: they come from another teacher. Use the text embeddings of the "
                         f"teacher the student was distilled from (its checkpoint sidecar's embed_dim).")
    emb, labels = embed_model(model, dataset, modalities, encodings, image_size, batch_size)
    return {m: zero_shot_correct(emb[m], labels, text_emb, classes) for m in modalities}


# ----------------------------------------------------------------------------------------------
# Out-of-distribution classes (Li et al., ICCV 2023)
# ----------------------------------------------------------------------------------------------


def split_classes(class_names: Sequence[str], unseen: float | Sequence[str],
                  seed: int = 0) -> tuple[list[str], list[str]]:
    """Split class names into (seen, unseen), both in the order of `class_names`.

    Args:
        class_names: all K class names.
        unseen: a fraction f in (0, 1) (round(f K) classes, at least 1 and at most K - 1, drawn with
            numpy's default_rng(seed)), or the list of unseen names.
        seed: seed of the draw.

    Raises:
        ValueError: a fraction outside (0, 1), or unseen names that are not classes / leave nothing seen.

    >>> split_classes(["a", "b", "c", "d"], ["b"])
    (['a', 'c', 'd'], ['b'])
    """
    names = list(class_names)
    if isinstance(unseen, (int, float)):
        if not 0 < unseen < 1:
            raise ValueError(f"unseen fraction must be in (0, 1), got {unseen}")
        count = min(max(round(unseen * len(names)), 1), len(names) - 1)
        picked = set(np.random.default_rng(seed).permutation(len(names))[:count].tolist())
        unseen_set = {names[i] for i in picked}
    else:
        unseen_set = set(unseen)
        unknown = sorted(unseen_set - set(names))
        if unknown:
            raise ValueError(f"unseen classes {unknown} are not in the class list {names}")
    seen = [n for n in names if n not in unseen_set]
    if not seen or len(seen) == len(names):
        raise ValueError(f"split leaves {len(seen)} seen of {len(names)} classes; both parts must be non-empty")
    return seen, [n for n in names if n in unseen_set]


def class_indices(class_names: Sequence[str], names: Sequence[str]) -> list[int]:
    """Indices of `names` in `class_names` (e.g. the rows of the text embeddings of the unseen classes)."""
    position = {n: i for i, n in enumerate(class_names)}
    missing = [n for n in names if n not in position]
    if missing:
        raise ValueError(f"classes {missing} are not in {list(class_names)}")
    return [position[n] for n in names]


def _labels_and_names(dataset: Dataset) -> tuple[list[int | None], list[str]]:
    """Labels (without loading images when the dataset keeps them) and class names of a dataset or Subset."""
    if isinstance(dataset, Subset):
        labels, names = _labels_and_names(dataset.dataset)
        return [labels[i] for i in dataset.indices], names
    names = list(getattr(dataset, "class_names", []))
    labels = getattr(dataset, "labels", None)
    return (list(labels) if labels is not None else [dataset[i].label for i in range(len(dataset))]), names


def restrict_dataset(dataset: Dataset, classes: Sequence[str]) -> Subset:
    """The samples whose ground-truth label is one of `classes` (names), as a Subset in dataset order.

    Use it for the seen-class training images of a labelled dataset, or the unseen-class test images.
    """
    labels, names = _labels_and_names(dataset)
    keep = set(class_indices(names, classes))
    indices = [i for i, y in enumerate(labels) if y is not None and y in keep]
    log.info("restricted %d samples to %d of classes %s", len(labels), len(indices), list(classes))
    return Subset(dataset, indices)


def restrict_curation(result: CurationResult, classes: Sequence[str]) -> CurationResult:
    """Keep only the curated images whose pseudo-label is one of `classes` (label-free seen-class training set).

    Build the stage-1 cache from the returned `kept` indices (`cache.build_embedding_cache`); its key
    changes with the selection, so the full and the restricted caches live side by side. `confidences` and
    `all_pseudo_labels` (all scored images) are unchanged.
    """
    keep = set(classes)
    unknown = sorted(keep - set(result.superset))
    if unknown:
        raise ValueError(f"classes {unknown} are not in the curation superset")
    rows = [j for j, name in enumerate(result.pseudo_names) if name in keep]
    return dataclasses.replace(result, kept=[result.kept[j] for j in rows], ids=[result.ids[j] for j in rows],
                               pseudo_labels=[result.pseudo_labels[j] for j in rows],
                               pseudo_names=[result.pseudo_names[j] for j in rows])


def evaluate_ood(model: Student | Teacher, dataset: Dataset, text_emb: torch.Tensor, class_names: Sequence[str],
                 unseen: Sequence[str], modalities: Sequence[str],
                 encodings: dict[str, data.ModalityEncoding] | None = None, image_size: int | None = None,
                 batch_size: int = 64, include_all: bool = True) -> dict[str, dict[str, float]]:
    """Seen / unseen-class zero-shot accuracy per modality (module docstring: the three numbers).

    Args:
        model: a Student or a Teacher.
        dataset: labelled evaluation samples of seen and unseen classes.
        text_emb: K x D teacher text embeddings of ALL `class_names` (rows in that order).
        class_names: the K class names the labels index.
        unseen: the unseen class names (`split_classes`); the others are seen.
        modalities, encodings, image_size, batch_size: as in `evaluate_zero_shot`.
        include_all: also report `unseen_vs_all` (unseen-class samples among all K classes).

    Returns:
        {"unseen": {modality: acc}, "seen": {...}[, "unseen_vs_all": {...}]}; a part with no samples is
        left out.
    """
    unseen_idx = class_indices(class_names, unseen)
    seen_idx = [i for i in range(len(class_names)) if i not in set(unseen_idx)]
    emb, labels = embed_model(model, dataset, modalities, encodings, image_size, batch_size)
    parts: dict[str, tuple[Sequence[int], torch.Tensor]] = {"unseen": (unseen_idx, labels), "seen": (seen_idx, labels)}
    if include_all:  # every class is a candidate, but only unseen-class samples count
        parts["unseen_vs_all"] = (list(range(len(class_names))),
                                  torch.where(torch.isin(labels, torch.tensor(unseen_idx)), labels, -1))
    out: dict[str, dict[str, float]] = {}
    for name, (candidates, y) in parts.items():
        if bool(torch.isin(y, torch.as_tensor(list(candidates))).any()):
            out[name] = {m: zero_shot_accuracy(emb[m], y, text_emb, candidates) for m in modalities}
    return out
