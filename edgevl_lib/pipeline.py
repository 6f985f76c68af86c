"""The upstream artifacts each notebook needs, built from the recipe through one call each, so every notebook runs
on its own and a rerun of the same recipe retrains nothing.

    art = run_curation(recipe)                 # notebook 01: data, teacher, curation, stored teacher embeddings
    student = run_stage1(art, recipe).student  # notebook 02's dual student (03-05 start from it)
    variants = run_stage2(art, student, recipe)  # notebook 03's PTQ / QAT / stage-2 int8 students (04, 05)

Folders are named by `recipe.key(stage, ...)` (`keys.stage_key`: the recipe sections the stage depends on, plus the
content fingerprints the recipe cannot know): `<cache>/curation/<key>.json`, `<cache>/stage1/<key>/<variant>/`,
`<cache>/stage2/<key>/`, and notebook 04's embeddings under `<cache>/analysis`. The benchmark, the teacher head and the
stored embeddings are content-addressed by their own modules (render config, teacher data + settings, teacher id +
views + pixels). Training resumes after an interruption; `force=True` retrains.
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

from edgevl_lib import keys
from edgevl_lib.cache import EmbeddingCache, build_embedding_cache
from edgevl_lib.config import DataConfig
from edgevl_lib.curation import CurationResult, curate_dataset, load_templates
from edgevl_lib.data import DataError, ModalityEncoding, PairedDataset, default_encoding, preload
from edgevl_lib.loaders import load_dataset
from edgevl_lib.recipe import Recipe
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

    @property
    def kept_digest(self) -> str:
        """`keys.digest` of the kept ids: the curated set's identity, recorded by every notebook's metrics."""
        return keys.digest(list(self.result.ids))


def load_splits(data_cfg: DataConfig) -> tuple[PairedDataset, PairedDataset]:
    """(adapt, eval) of the recipe's data; the embedded benchmark is rendered on first use.

    `data_cfg.classes` selects the rendered classes (embedded; already in `data_cfg.benchmark` via the Recipe) or
    is the loader's `class_names` (real data: scene types outside it become unlabeled; paired folders: a subset of
    classes.txt). `data_cfg.options` go to the loader as keyword arguments. With `eval_root`, the whole of that
    second dataset is the evaluation set (cross-dataset runs).

    Raises:
        DataError: bad data (the message names the file), or paired split folders whose adapt/ and eval/ class
            lists differ; all before any model is built.
    """
    if data_cfg.dataset == "embedded":
        opts: dict[str, Any] = {"config": data_cfg.benchmark, **data_cfg.options}
    else:
        opts = {**({"class_names": list(data_cfg.classes)} if data_cfg.classes else {}), **data_cfg.options}
    adapt = load_dataset(data_cfg.dataset, data_cfg.root, split="adapt", **opts)
    if data_cfg.eval_root:
        return adapt, load_dataset(data_cfg.eval_dataset or data_cfg.dataset, data_cfg.eval_root, split=None,
                                   **{k: v for k, v in opts.items() if k != "config"})
    evalset = load_dataset(data_cfg.dataset, data_cfg.root, split="eval", **opts)
    if data_cfg.dataset == "paired_folder" and list(adapt.class_names) != list(evalset.class_names):
        root = Path(data_cfg.root or "")
        raise DataError(f"{root / 'adapt' / 'classes.txt'} and {root / 'eval' / 'classes.txt'} list different "
                        f"classes ({len(adapt.class_names)} vs {len(evalset.class_names)}; first difference: "
                        f"{_first_difference(adapt.class_names, evalset.class_names)}). Give both split folders the "
                        f"same classes.txt (line i is label i in both), or set data.classes.")
    return adapt, evalset


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1}: {x!r} vs {y!r}"
    return f"one list is longer (line {min(len(a), len(b)) + 1})"


def data_fingerprint(adapt: PairedDataset) -> str:
    """What the recipe cannot know about the adapt data: its name and the digest of its ids and labels."""
    return keys.digest({"name": getattr(adapt, "name", ""), "ids": list(adapt.ids),
                        "labels": [None if y is None else int(y) for y in adapt.labels]})


def run_curation(recipe: Recipe) -> CurationArtifacts:
    """Data -> teacher -> curation -> stored teacher embeddings of the recipe, each reused when already built.

    The curation is stored under `<cache>/curation/<recipe.key("curation", data=...)>.json`; the teacher head and
    the stored embeddings are content-addressed by their own modules (teacher id, views, pixels).

    Returns:
        The CurationArtifacts.
    """
    clock = _Clock()
    adapt, evalset = load_splits(recipe.data)
    clock.lap("data")
    teacher = build_teacher(recipe.teacher)
    clock.lap("teacher")
    from_cache = {"teacher": bool(getattr(teacher, "train_info", {}).get("from_cache", False))}

    cur_cfg = recipe.curation
    # teacher.id fingerprints the weights (a checkpoint file replaced in place gives a new id)
    path = cache_dir() / "curation" / f"{recipe.key('curation', data=data_fingerprint(adapt), teacher=teacher.id)}.json"
    if path.is_file():
        result = CurationResult.load(path)
        from_cache["curation"] = True
        log.info("curation reused from %s", path)
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


def stage1_dir(recipe: Recipe, art: CurationArtifacts, variant: str = "dual") -> Path:
    """`<cache>/stage1/<recipe.key("stage1", embeddings=...)>/<variant>`: one stage-1 student of the recipe.

    Notebook 02 trains every variant of its ablation (and its OOD student) under the same key; notebooks 03-05
    find the `dual` student there. `embeddings` is the stored-embedding cache's content key (teacher, views, data).
    """
    return cache_dir() / "stage1" / recipe.key("stage1", embeddings=art.cache.meta.get("key")) / variant


def run_stage1(art: CurationArtifacts, recipe: Recipe, force: bool = False) -> TrainResult:
    """The recipe's dual stage-1 student: loaded when `stage1_dir` holds the finished run, else trained (or
    resumed after an interruption) there with `train.train_stage1`; `force` retrains it from scratch."""
    cfg = recipe.stage1
    folder = stage1_dir(recipe, art, cfg.train_modalities) / "checkpoints"
    state = folder / "state.json"
    finished = state.is_file() and json.loads(state.read_text(encoding="utf-8")).get("epochs_done") == cfg.epochs
    if finished and not force:
        log.info("stage-1 student reused from %s", folder)
        dataset: PairedDataset = art.adapt
    else:
        log.info("stage-1 student %s in %s (train.train_stage1, %d epochs)",
                 "retrained (force)" if force else "not found: training it", folder, cfg.epochs)
        dataset = preload(art.adapt, cfg.modalities)  # decoding once pays off only when training
    return train_stage1(dataclasses.replace(cfg, checkpoint_dir=str(folder)), dataset, art.cache,
                        out_dir=folder.parent, resume=not force)


def stage2_dir(recipe: Recipe, art: CurationArtifacts, student: Student) -> Path:
    """`<cache>/stage2/<recipe.key("stage2", ...)>`: the int8 variants of the recipe's stage-1 student."""
    return cache_dir() / "stage2" / recipe.key("stage2", embeddings=art.cache.meta.get("key"),
                                               student=fingerprint(student))


def run_stage2(art: CurationArtifacts, student: Student, recipe: Recipe, force: bool = False) -> Int8Variants:
    """PTQ, QAT and stage-2 int8 students of `student` (`stage2.build_int8_variants`), built once in
    `stage2_dir` and loaded from there afterwards (notebooks 04 and 05 start here); `force` rebuilds them."""
    cfg = recipe.stage2
    folder = stage2_dir(recipe, art, student)
    pseudo = dict(zip(art.result.ids, art.result.pseudo_labels))
    if force or not (folder / "variants.json").is_file():
        log.info("int8 variants %s in %s (PTQ, QAT and stage 2, %d epochs each)",
                 "rebuilt (force)" if force else "not found: building them", folder, cfg.epochs)
        dataset: PairedDataset = preload(art.adapt, cfg.modalities)
    else:
        log.info("int8 variants reused from %s", folder)
        dataset = art.adapt
    return build_int8_variants(student, dataset, art.cache, pseudo, cfg, out_dir=folder, resume=not force)


def eval_embeddings(recipe: Recipe, art: CurationArtifacts, variants: Int8Variants, models: dict[str, Any],
                    evalset: Any, modalities: Sequence[str]) -> dict[str, Any]:
    """Every model's and the teacher's embeddings of the evaluation images (notebook 04), stored once under
    `<cache>/analysis` with the key `recipe.key("analysis", ...)` (the int8 variants' folder, the eval ids).

    Returns:
        {"student": {model: {modality: N x D}}, "teacher": {modality: N x D}, "labels": N}.
    """
    from edgevl_lib.analysis import cached_embeddings
    from edgevl_lib.evaluate import embed_model

    encodings = recipe.stage1.encodings
    key = recipe.key("analysis", embeddings=art.cache.meta.get("key"), variants=variants.folder.name,
                     eval=keys.digest(list(evalset.ids)))

    def compute() -> dict[str, Any]:
        emb, labels = {}, None
        for name, model in models.items():
            emb[name], labels = embed_model(model, evalset, modalities, encodings)
        teacher_emb, _ = teacher_embeddings(art.teacher, evalset, modalities, encodings)
        return {"student": emb, "teacher": teacher_emb, "labels": labels}

    return cached_embeddings(f"eval-{key}", compute)
