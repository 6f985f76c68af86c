"""Stage-1 experiments of notebook 02: the modality ablation, the OOD-class split and the epoch timing.

Every experiment trains with `train.train_stage1` and evaluates with `evaluate`; nothing here has its own loop.

* `modality_ablation`: the paper's ablation. Students trained with `train_modalities` = `rgb_only`,
  `nonrgb_only` and `dual` under the same budget (same config, hence the same images, epochs and optimiser
  steps; only the modalities the loss sees differ), each evaluated zero-shot in every evaluation modality.
* `ood_experiment`: Li et al. (ICCV 2023)'s out-of-distribution protocol, label-free: the student is distilled
  only on the curated images whose teacher PSEUDO-label is a seen class (`evaluate.restrict_curation`; ground
  truth never selects anything) and evaluated zero-shot on the classes it never saw (`evaluate.evaluate_ood`).
* `time_cached_vs_online`: one stage-1 epoch from the stored teacher embeddings vs the same epoch (same images,
  views, student, batches) with a teacher forward per step (`teacher_mode="online"`).

Helper: `select_cache_rows` views a subset of an embedding cache's rows without a teacher pass (decoding a dataset
once into memory is `data.preload`).

    runs = modality_ablation(cfg, data.preload(art.adapt, cfg.modalities), art.cache, data.preload(art.evalset),
                             art.class_text, out_dir=out / "students")
    runs["dual"].zero_shot          # {"rgb": ..., "depth": ..., "thermal": ...}
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import data
from .cache import EmbeddingCache
from .config import TRAIN_MODALITIES, Stage1Config
from .curation import CurationResult, Teacher
from .evaluate import evaluate_ood, restrict_curation, split_classes, zero_shot_outcomes
from .train import TrainResult, train_stage1

log = logging.getLogger(__name__)


def select_cache_rows(cache: EmbeddingCache, rows: Sequence[int]) -> EmbeddingCache:
    """The rows `rows` of an embedding cache as an in-memory EmbeddingCache (no teacher pass, no new folder).

    The stored embeddings e_ik and view parameters a_ik of the selected rows are copied in the given order;
    `meta` keeps the teacher and view settings, with `ids`, `num_images` and a `key` that names the selection
    (so a stage-1 checkpoint of the subset is never resumed against the full cache).

    >>> sub = select_cache_rows(cache, [0, 5]); len(sub), sub.ids == [cache.ids[0], cache.ids[5]]   # doctest: +SKIP
    (2, True)
    """
    rows = [int(r) for r in rows]
    if not rows:
        raise ValueError("select_cache_rows needs at least one row")
    bad = [r for r in rows if not 0 <= r < len(cache)]
    if bad:
        raise IndexError(f"rows {bad[:5]} are outside the cache's {len(cache)} rows")
    digest = hashlib.sha256(",".join(map(str, rows)).encode()).hexdigest()[:12]
    sub = EmbeddingCache.__new__(EmbeddingCache)  # the class opens folders; this subset lives in memory
    sub.path = cache.path
    sub.ids = [cache.ids[r] for r in rows]
    sub.meta = {**cache.meta, "ids": sub.ids, "num_images": len(rows), "key": f"{cache.meta.get('key')}-rows-{digest}"}
    sub.embeddings = np.asarray(cache.embeddings[rows])
    sub.views = np.asarray(cache.views[rows])
    sub.done = np.asarray(cache.done[rows])
    return sub


@dataclass
class StudentRun:
    """One trained and evaluated stage-1 student.

    Attributes:
        train: what `train_stage1` returned (student, per-epoch history, checkpoints).
        zero_shot: {modality: zero-shot top-1 on the evaluation set}.
        train_images: images (cache rows) it was distilled on.
        seconds: wall time of training plus evaluation.
        outcomes: {modality: per-sample zero-shot correctness} (`evaluate.zero_shot_outcomes`), for `stats`.
    """

    train: TrainResult
    zero_shot: dict[str, float]
    train_images: int
    seconds: float
    outcomes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        """Mean training loss of each epoch."""
        return [h["loss"] for h in self.train.history]

    def mean_accuracy(self, modalities: Sequence[str] | None = None) -> float:
        """Mean zero-shot accuracy over `modalities` (default: every evaluated one)."""
        names = list(modalities or self.zero_shot)
        return float(np.mean([self.zero_shot[m] for m in names]))


def train_and_evaluate(cfg: Stage1Config, dataset: data.PairedDataset, cache: EmbeddingCache,
                       evalset: data.PairedDataset, text_emb: torch.Tensor, *, out_dir: str | os.PathLike,
                       eval_modalities: Sequence[str] | None = None, resume: bool = False) -> StudentRun:
    """Distil one student (`train_stage1`, cached teacher) and evaluate it zero-shot per modality.

    Args:
        cfg: the stage-1 configuration.
        dataset, cache: the training images and their stored teacher embeddings (rows = training set).
        evalset: labelled evaluation samples; labels index the rows of `text_emb`.
        text_emb: K x D teacher class text embeddings.
        out_dir: the student's folder (checkpoints under `<out_dir>/checkpoints`).
        eval_modalities: modalities to evaluate (default: all of `evalset`'s), with `cfg.encodings`.
        resume: reuse / continue the checkpoint of the same run in `out_dir` (False: train from scratch).

    Returns:
        The StudentRun.
    """
    start = time.perf_counter()
    result = train_stage1(cfg, dataset, cache, out_dir=out_dir, resume=resume)
    modalities = list(eval_modalities or evalset.modalities)
    outcomes = zero_shot_outcomes(result.student, evalset, text_emb, modalities, cfg.encodings)
    zero_shot = {m: int(o.sum()) / len(o) for m, o in outcomes.items()}
    run = StudentRun(result, zero_shot, len(cache), time.perf_counter() - start, outcomes)
    log.info("student %s (%s, %d images): zero-shot %s in %.1f s", cfg.arch, cfg.train_modalities, len(cache),
             {m: round(a, 3) for m, a in zero_shot.items()}, run.seconds)
    return run


def modality_ablation(cfg: Stage1Config, dataset: data.PairedDataset, cache: EmbeddingCache,
                      evalset: data.PairedDataset, text_emb: torch.Tensor, *, out_dir: str | os.PathLike,
                      variants: Sequence[str] = TRAIN_MODALITIES, eval_modalities: Sequence[str] | None = None,
                      resume: bool = False, checkpoint_dirs: Mapping[str, str | os.PathLike] | None = None
                      ) -> dict[str, StudentRun]:
    """The paper's stage-1 ablation: one student per `train_modalities` variant under the same budget.

    Each variant uses `dataclasses.replace(cfg, train_modalities=variant)`, checkpointed in its own folder: same
    seed, images, views, epochs, batch size and hence optimiser steps; `rgb_only` minimises d(T(x), S(x)),
    `nonrgb_only` Σ_m d(T(x), S(x'_m)), `dual` their sum (EdgeVL's L_d).

    Args:
        cfg: the shared configuration (its `train_modalities` is overridden).
        dataset, cache, evalset, text_emb, eval_modalities, resume: as in `train_and_evaluate`.
        out_dir: parent folder; variant v trains in `<out_dir>/<v>`.
        variants: which variants to train, in order.
        checkpoint_dirs: variant -> checkpoint folder instead of `<out_dir>/<v>/checkpoints` (notebook 02 puts
            the students in `pipeline.stage1_dir`, where notebooks 03-05 find the dual one).

    Returns:
        {variant: StudentRun}.
    """
    unknown = [v for v in variants if v not in TRAIN_MODALITIES]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; use {TRAIN_MODALITIES}")
    folders = {v: str(p) for v, p in (checkpoint_dirs or {}).items()}
    return {v: train_and_evaluate(dataclasses.replace(cfg, train_modalities=v, checkpoint_dir=folders.get(v)), dataset,
                                  cache, evalset, text_emb,
                                  out_dir=Path(out_dir) / v, eval_modalities=eval_modalities, resume=resume)
            for v in variants}


CLAIMS: dict[str, tuple[str, str, int]] = {
    "dual_beats_rgb_only": ("dual", "rgb_only", +1),
    "dual_beats_nonrgb_only": ("dual", "nonrgb_only", +1),
}
"""The paper's stage-1 ablation claims on the paper average (RGB + the trained non-RGB modality)."""


@dataclass
class OODRun:
    """The out-of-distribution experiment (module docstring).

    Attributes:
        seen, unseen: the class-name split.
        run: the student distilled on the seen-pseudo-label images (`zero_shot` over ALL classes).
        ood: `evaluate_ood` of that student: {"seen" | "unseen" | "unseen_vs_all": {modality: top-1}}.
        train_true_unseen: how many of its training images truly show an unseen class (teacher pseudo-label
            errors that leak in; computed from ground truth for the report only, never used for selection).
    """

    seen: list[str]
    unseen: list[str]
    run: StudentRun
    ood: dict[str, dict[str, float]]
    train_true_unseen: int | None


def ood_experiment(cfg: Stage1Config, dataset: data.PairedDataset, cache: EmbeddingCache, result: CurationResult,
                   evalset: data.PairedDataset, text_emb: torch.Tensor, *, out_dir: str | os.PathLike,
                   unseen: float | Sequence[str] = 0.4, seed: int = 0, keep_other_pseudo_labels: bool = False,
                   eval_modalities: Sequence[str] | None = None, resume: bool = False) -> OODRun:
    """Distil on seen classes only (by pseudo-label) and evaluate zero-shot on the classes never seen (Li et al.).

    1. `split_classes(evalset.class_names, unseen, seed)` -> (seen, unseen) class names.
    2. `restrict_curation(result, seen)`: the curated images whose teacher pseudo-label is a seen class; their
       rows of `cache` (`select_cache_rows`) are the training set. No ground-truth label is read for this.
       With `keep_other_pseudo_labels`, images pseudo-labelled with a superset name that is not an evaluated
       class (neither seen nor unseen) are kept too: only what the teacher calls an unseen class is dropped.
    3. `train_and_evaluate` with `cfg` (same epochs; fewer images, hence fewer steps than on all classes).
    4. `evaluate_ood`: unseen-class samples among the unseen classes only, seen among seen, unseen among all.

    Args:
        cfg: the stage-1 configuration (usually the dual student's).
        dataset: the curated dataset the cache rows come from (labels only counted for `train_true_unseen`).
        cache: the stored embeddings of `result.kept`, in that order (`pipeline.run_curation`).
        result: the curation (pseudo-labels of the kept images).
        evalset, text_emb: labelled evaluation samples; `text_emb` rows follow `evalset.class_names`.
        out_dir: the student's folder.
        unseen: fraction of classes held out, or their names.
        seed: seed of the class split.
        keep_other_pseudo_labels: see step 2 (default False: seen-class pseudo-labels only).
        eval_modalities, resume: as in `train_and_evaluate`.

    Returns:
        The OODRun.

    Raises:
        ValueError: no curated image qualifies (e.g. a teacher that never predicts a seen class).
    """
    seen, unseen_names = split_classes(evalset.class_names, unseen, seed)
    allowed = seen + ([n for n in result.superset if n not in evalset.class_names] if keep_other_pseudo_labels else [])
    restricted = restrict_curation(result, allowed)
    if not restricted.ids:
        raise ValueError(f"none of the {len(result.ids)} curated images has a pseudo-label among {allowed}; a "
                         f"weak teacher may never predict them (keep_other_pseudo_labels=True also keeps superset "
                         f"names outside the evaluated classes)")
    position = {sid: row for row, sid in enumerate(cache.ids)}
    missing = [sid for sid in restricted.ids if sid not in position]
    if missing:
        raise ValueError(f"{len(missing)} curated ids (e.g. {missing[0]!r}) are not in the cache {cache.path}; pass "
                         f"the cache built from this curation's kept images")
    sub = select_cache_rows(cache, [position[sid] for sid in restricted.ids])
    log.info("OOD: %d of %d curated images have a seen-class pseudo-label (unseen: %s)", len(sub), len(cache),
             unseen_names)
    modalities = list(eval_modalities or evalset.modalities)
    run = train_and_evaluate(dataclasses.replace(cfg, checkpoint_dir=None), dataset, sub, evalset, text_emb,
                             out_dir=out_dir, eval_modalities=modalities, resume=resume)
    ood = evaluate_ood(run.train.student, evalset, text_emb, evalset.class_names, unseen_names, modalities,
                       cfg.encodings)
    true_unseen = None
    if getattr(dataset, "labels", None) and getattr(dataset, "class_names", None):
        unseen_set = set(unseen_names)
        label_of = dict(zip(dataset.ids, dataset.labels))
        true_unseen = sum(label_of.get(sid) is not None and dataset.class_names[label_of[sid]] in unseen_set
                          for sid in sub.ids)
    return OODRun(seen, unseen_names, run, ood, true_unseen)


def time_cached_vs_online(cfg: Stage1Config, dataset: data.PairedDataset, cache: EmbeddingCache,
                          online_teacher: Teacher, *, images: int = 128,
                          out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Wall time of one stage-1 epoch from stored embeddings vs the same epoch with a teacher forward per step.

    Both runs train a fresh student (same seed) for one epoch on the first `images` cache rows with
    `cfg`'s student, batch size and modalities, measured back to back in this process (`TrainResult.epoch_seconds`:
    data loading, teacher forward if any, student forward / backward / step; not student construction or
    checkpoint writing). Online, the stored views are re-cut at the cache's view size and encoded by
    `online_teacher` (its `embed_dim` must equal the cache's; e.g. `teachers.RandomOpenClipTeacher`).

    Args:
        cfg: the stage-1 configuration (epochs, warm-up and teacher mode are overridden).
        dataset, cache: as in `train_stage1`.
        online_teacher: the teacher run every step in the online epoch.
        images: size of the fixed subset (the first rows of the cache).
        out_dir: folder for the two runs' checkpoints; None = a temporary folder, deleted afterwards.

    Returns:
        {"images", "steps", "batch_size", "cached" (s), "online" (s), "ratio" (online / cached),
         "online_teacher" (its id)}.
    """
    sub = select_cache_rows(cache, range(min(images, len(cache))))
    one_epoch = dataclasses.replace(cfg, epochs=1, warmup_epochs=0.0, teacher_mode="cached", checkpoint_dir=None)
    with tempfile.TemporaryDirectory(prefix="stage1-timing-") as scratch:
        root = Path(out_dir) if out_dir is not None else Path(scratch)
        cached = train_stage1(one_epoch, dataset, sub, out_dir=root / "cached", resume=False)
        online = train_stage1(dataclasses.replace(one_epoch, teacher_mode="online"), dataset, sub, online_teacher,
                              out_dir=root / "online", resume=False)
    timing = {"images": len(sub), "steps": cached.history[0]["steps"], "batch_size": cfg.batch_size,
              "cached": cached.epoch_seconds[0], "online": online.epoch_seconds[0],
              "online_teacher": online_teacher.id}
    timing["ratio"] = timing["online"] / timing["cached"]
    log.info("one stage-1 epoch on %d images: cached %.2f s, online %.2f s (x%.1f)", timing["images"],
             timing["cached"], timing["online"], timing["ratio"])
    return timing
