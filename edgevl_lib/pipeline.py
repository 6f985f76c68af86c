"""The upstream artifacts each notebook needs, built through one call so every notebook runs on its own.

`run_curation` is what notebook 01 runs and what later notebooks call when they start from nothing: data,
teacher, curation and stored teacher embeddings. Every piece is cached by content (benchmark by config hash,
teacher head by data + training config, curation by teacher id + data + curation config, embeddings by
teacher id + views + data), so a second call costs seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from edgevl_lib.cache import EmbeddingCache, build_embedding_cache
from edgevl_lib.config import BenchmarkConfig, CurationConfig, TeacherConfig, to_dict
from edgevl_lib.curation import CurationResult, curate_dataset, load_templates
from edgevl_lib.data import PairedDataset
from edgevl_lib.loaders import load_dataset
from edgevl_lib.teachers import Teacher, build_teacher, text_classifier
from edgevl_lib.utils import cache_dir

log = logging.getLogger(__name__)


@dataclass
class CurationArtifacts:
    """Everything stage 1 and later stages start from.

    Attributes:
        teacher: the vision-language teacher.
        adapt: the unlabeled pairs the method adapts on (labels only for evaluation).
        evalset: labelled evaluation pairs.
        result: the curation (kept ids, pseudo-labels, confidences).
        cache: stored teacher embeddings of K views of every kept image.
        class_text: K x D teacher text embeddings of `evalset.text_names` (prompt-ensembled templates).
        from_cache: which pieces were reused rather than computed in this call.
        seconds: wall time of each piece in this call (data, teacher, curation, cache).
    """

    teacher: Teacher
    adapt: PairedDataset
    evalset: PairedDataset
    result: CurationResult
    cache: EmbeddingCache
    class_text: torch.Tensor
    from_cache: dict[str, bool]
    seconds: dict[str, float]


def load_splits(dataset: str, data_root: str | None, bench_cfg: BenchmarkConfig,
                classes: Sequence[str] | None = None) -> tuple[PairedDataset, PairedDataset]:
    """(adapt, eval) of a dataset; the embedded benchmark is rendered on first use.

    `classes` overrides the class list: for `embedded` it selects the rendered classes, for real datasets it is
    the loader's `class_names` (scene types outside it become unlabeled).
    """
    if dataset == "embedded":
        opts: dict[str, Any] = {"config": dataclasses.replace(bench_cfg, classes=tuple(classes))
                                if classes else bench_cfg}
    else:
        opts = {"class_names": list(classes)} if classes else {}
    return (load_dataset(dataset, data_root, split="adapt", **opts),
            load_dataset(dataset, data_root, split="eval", **opts))


def _curation_key(teacher: Teacher, adapt: PairedDataset, cfg: CurationConfig) -> str:
    src = {"teacher": teacher.id, "root": str(getattr(adapt, "root", "")), "name": getattr(adapt, "name", ""),
           "ids": hashlib.sha256("\n".join(adapt.ids).encode()).hexdigest(),
           "curation": {k: v for k, v in to_dict(cfg).items() if k in ("mode", "tau", "top_fraction", "scale",
                                                                       "superset", "templates", "descriptions")}}
    return hashlib.sha256(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_curation(dataset: str = "embedded", data_root: str | None = None,
                 bench_cfg: BenchmarkConfig | None = None, teacher_cfg: TeacherConfig | None = None,
                 cur_cfg: CurationConfig | None = None,
                 classes: Sequence[str] | str | None = None) -> CurationArtifacts:
    """Data -> teacher -> curation -> stored teacher embeddings, each reused when already built.

    Args:
        dataset, data_root: which data (see `loaders.load_dataset`); `embedded` renders the benchmark.
        bench_cfg: the embedded benchmark's configuration (also the teacher's pretraining data).
        teacher_cfg: which teacher; its `benchmark` is replaced by `bench_cfg`.
        cur_cfg: curation and view-cache configuration.
        classes: optional class list (see `load_splits`), or one comma-separated string; for `embedded` the
            teacher is pretrained on it too.

    Returns:
        The CurationArtifacts.
    """
    bench_cfg = bench_cfg or BenchmarkConfig()
    if isinstance(classes, str):  # papermill -p classes "chair,stool,table"
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if classes and dataset == "embedded":
        bench_cfg = dataclasses.replace(bench_cfg, classes=tuple(classes))
    teacher_cfg = dataclasses.replace(teacher_cfg or TeacherConfig(), benchmark=bench_cfg)
    cur_cfg = cur_cfg or CurationConfig()
    clock = _Clock()
    adapt, evalset = load_splits(dataset, data_root, bench_cfg, None if dataset == "embedded" else classes)
    clock.lap("data")
    teacher = build_teacher(teacher_cfg)
    clock.lap("teacher")
    from_cache = {"teacher": bool(getattr(teacher, "train_info", {}).get("from_cache", False))}

    path = cache_dir() / "curation" / f"{_curation_key(teacher, adapt, cur_cfg)}.json"
    if path.is_file():
        result = CurationResult.load(path)
        from_cache["curation"] = True
    else:
        result = curate_dataset(teacher, adapt, cur_cfg)
        result.save(path)
        from_cache["curation"] = False
    clock.lap("curation")

    cache = build_embedding_cache(teacher, adapt, result.kept, views=cur_cfg.views, seed=cur_cfg.seed,
                                  batch_size=cur_cfg.cache_batch_size, crop_scale=cur_cfg.crop_scale,
                                  crop_ratio=cur_cfg.crop_ratio, out_size=cur_cfg.view_size)
    clock.lap("cache")
    class_text = text_classifier(teacher, evalset.text_names, load_templates(cur_cfg.templates))
    return CurationArtifacts(teacher, adapt, evalset, result, cache, class_text, from_cache, clock.laps)


class _Clock:
    """Named wall-clock laps."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
