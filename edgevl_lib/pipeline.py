"""The upstream artifacts each notebook needs, built through one call so every notebook runs on its own.

`run_curation` is what notebook 01 runs and what later notebooks call when they start from nothing: data,
teacher, curation and stored teacher embeddings. Every piece is cached by content (benchmark by config hash,
teacher head by data + training config, curation by teacher id + data + curation config, embeddings by
teacher id + views + data), so a second call costs seconds.

`run_stage1` (notebook 02's dual student; 03-05 start from it) and `run_stage2` (notebook 03's int8
variants; 04 and 05 start from them) do the same for the trained students, under `<cache>/stage1/<key>` and
`<cache>/stage2/<key>`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from edgevl_lib.cache import EmbeddingCache, build_embedding_cache
from edgevl_lib.config import BenchmarkConfig, CurationConfig, Stage1Config, Stage2Config, TeacherConfig, to_dict
from edgevl_lib.curation import CurationResult, curate_dataset, load_templates
from edgevl_lib.data import ModalityEncoding, PairedDataset, default_encoding
from edgevl_lib.loaders import load_dataset
from edgevl_lib.stage2 import Int8Variants, build_int8_variants
from edgevl_lib.students import Student
from edgevl_lib.teachers import Teacher, build_teacher, text_classifier
from edgevl_lib.train import TrainResult, fingerprint, train_stage1
from edgevl_lib.utils import cache_dir, progress

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


def _pixels_digests(dataset: Any, modalities: Sequence[str]) -> dict[str, str]:
    """sha256 per modality over (id, shape, float32 pixels) of every sample, in one pass over the dataset."""
    hashes = {m: hashlib.sha256() for m in modalities}
    for i in progress(range(len(dataset)), desc="hashing eval images", total=len(dataset)):
        sample = dataset[i]
        for m, h in hashes.items():
            x = sample.images[m].detach().float().contiguous().cpu()
            h.update(f"{sample.id}|{tuple(x.shape)}|".encode())
            h.update(x.numpy().tobytes())
    return {m: h.hexdigest() for m, h in hashes.items()}


def teacher_embeddings(teacher: Teacher, dataset: Any, modalities: Sequence[str],
                       encodings: dict[str, ModalityEncoding] | None = None
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`evaluate.embed_model(teacher, dataset, ...)`, stored per modality in the cache and reused.

    Notebooks 01, 02, 04 and 05 all need the teacher's embeddings of the evaluation images; each modality is
    embedded once and kept under `<cache>/analysis` (`analysis.save_embeddings`). The key is the teacher id,
    the modality's encoding and a sha256 of the exact pixels (ids, shapes, values), so any change to the
    data, the encoding or the teacher is a miss.

    Returns:
        ({modality: N x D normalised embeddings}, N labels), as `embed_model`.
    """
    from edgevl_lib.analysis import load_embeddings, save_embeddings
    from edgevl_lib.evaluate import embed_model

    encodings = dict(encodings or {})
    digests = _pixels_digests(dataset, modalities)
    keys = {m: f"teacher-eval|{teacher.id}|{(encodings.get(m) or default_encoding(m)).describe(m)}|{digests[m]}"
            for m in modalities}
    out, labels = {}, None
    for m in modalities:
        found = load_embeddings(keys[m])
        if found is not None:
            out[m], labels = found["embeddings"], found["labels"]
    missing = [m for m in modalities if m not in out]
    if missing:
        emb, labels = embed_model(teacher, dataset, missing, encodings)
        for m in missing:
            save_embeddings(keys[m], {"embeddings": emb[m], "labels": labels})
            out[m] = emb[m]
    return {m: out[m] for m in modalities}, labels


# ----------------------------------------------------------------------------------------------
# Stage 1 and stage 2 artifacts, for notebooks that start after them
# ----------------------------------------------------------------------------------------------


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage1_checkpoint_dir(cache: EmbeddingCache, cfg: Stage1Config) -> Path:
    """The shared folder of the stage-1 student of `cfg` distilled from `cache`: cache/stage1/<key>/checkpoints.

    Notebook 02 trains its dual student there and notebooks 03-05 find it there; the key covers the
    configuration (minus workers / folder) and the cache's key (teacher, views, data).
    """
    config = {k: v for k, v in json.loads(json.dumps(to_dict(cfg), default=str)).items()
              if k not in ("num_workers", "checkpoint_dir")}
    return cache_dir() / "stage1" / _key({"config": config, "cache": cache.meta.get("key")}) / "checkpoints"


def run_stage1(art: CurationArtifacts, cfg: Stage1Config) -> TrainResult:
    """The stage-1 student of `cfg` on `art`'s curated images: loaded when `stage1_checkpoint_dir` holds a
    finished run, else trained (or resumed) there with `train.train_stage1`.
    """
    folder = stage1_checkpoint_dir(art.cache, cfg)
    state = folder / "state.json"
    finished = state.is_file() and json.loads(state.read_text(encoding="utf-8")).get("epochs_done") == cfg.epochs
    if finished:
        log.info("stage-1 student found in %s", folder)
        dataset: PairedDataset = art.adapt
    else:
        log.info("stage-1 student not found in %s: training it (train.train_stage1, %d epochs)", folder, cfg.epochs)
        from edgevl_lib.stage1 import preload  # decoding once pays off only when training

        dataset = preload(art.adapt, cfg.modalities)
    return train_stage1(dataclasses.replace(cfg, checkpoint_dir=str(folder)), dataset, art.cache,
                        out_dir=folder.parent, resume=True)


def stage2_dir(student: Student, cache: EmbeddingCache, cfg: Stage2Config) -> Path:
    """cache/stage2/<key>: the int8 variants of `student` under `cfg` (key: student fingerprint, cache, config)."""
    config = {k: v for k, v in json.loads(json.dumps(to_dict(cfg), default=str)).items()
              if k not in ("num_workers", "checkpoint_dir", "device")}
    return cache_dir() / "stage2" / _key({"student": fingerprint(student), "cache": cache.meta.get("key"),
                                          "config": config})


def run_stage2(art: CurationArtifacts, student: Student, cfg: Stage2Config) -> Int8Variants:
    """PTQ, QAT and stage-2 int8 students of `student` (`stage2.build_int8_variants`), built once in
    `stage2_dir` and loaded from there afterwards (notebooks 04 and 05 start here)."""
    folder = stage2_dir(student, art.cache, cfg)
    pseudo = dict(zip(art.result.ids, art.result.pseudo_labels))
    if not (folder / "variants.json").is_file():
        log.info("int8 variants not found in %s: building them (PTQ, QAT and stage 2, %d epochs each)", folder,
                 cfg.epochs)
        from edgevl_lib.stage1 import preload

        dataset: PairedDataset = preload(art.adapt, cfg.modalities)
    else:
        dataset = art.adapt
    return build_int8_variants(student, dataset, art.cache, pseudo, cfg, out_dir=folder)
