"""Stage-2 experiments of notebook 03: the int8 variants of the paper's ablation, their artifacts and speed.

EdgeVL's ablation (Table "quantization as enhancement") compares, on the same data:

    stage1_fp32   the stage-1 student in float32
    ptq_int8      + post-training quantization: observers on a few training batches, then int8
                  (`quantize.prepare_ptq` -> `quantize.calibrate` -> `quantize.convert`)
    qat_int8      + plain quantization-aware training: L = L_d            (`train.train_stage2`, λ = 0)
    stage2_int8   + QAT with the semi-hard triplet loss: L = w_d L_d + λ L_c  (`train.train_stage2`, λ > 0)

All int8 models are x86 PT2E models (int8 per-channel symmetric weights, uint8 per-tensor activations). They are
evaluated eagerly, where q/dq pairs simulate the int8 arithmetic in float, and they run on real oneDNN int8
kernels after `quantize.compile_int8` (`int8_speedup` times that against the float student compiled the same way).

`build_int8_variants` trains and converts the three int8 variants into one folder and writes each as a `.pt2`
program (`Int8Student`: torch.export program + JSON sidecar with arch / image size / embedding width); a second
call with the same folder loads them instead of training (`pipeline.run_stage2` keys that folder by its inputs).

    variants = build_int8_variants(student, dataset, cache, pseudo_labels, cfg, out_dir=folder)
    table, outcomes = evaluate_variants({"stage1_fp32": student, **variants.models}, evalset, text_emb, ["rgb", "depth"])
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import data, keys, quantize, utils
from .cache import CachedViewDataset, EmbeddingCache
from .config import Stage2Config
from .evaluate import zero_shot_outcomes
from .students import Student, count_params, load_student, reparameterized, save_student
from .train import Stage2Result, fingerprint, holdout_rows, train_stage2

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("stage1_fp32", "ptq_int8", "qat_int8", "stage2_int8")
"""Rows of the paper's stage-2 ablation, in order."""
INT8_VARIANTS: tuple[str, ...] = VARIANTS[1:]
CONTROLS: tuple[str, ...] = ("fp32_ld", "fp32_ld_lc")
"""Control rows: the stage-1 student trained further with the same loop, data, steps and λ as `qat_int8` /
`stage2_int8` but without fake quantization, so the table separates quantization from extra training and from
the contrastive term."""
SUMMARY_FILE = "variants.json"


class Int8Student(torch.nn.Module):
    """An int8 student: a converted PT2E graph with the Student interface (`forward`, `encode`, `image_size`).

    Args:
        graph: output of `quantize.convert` (or `quantize.load_int8`); maps B x 3 x H x W [0, 1] images to
            B x D embeddings (the Student's input normalisation is inside the graph).
        config: the float student's build config (`Student.config`: arch, embed_dim, image_size, ...).
    """

    def __init__(self, graph: torch.nn.Module, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.graph = graph
        self.config = dict(config)

    arch = Student.arch  # read from `config`, as the float student's
    embed_dim = Student.embed_dim
    image_size = Student.image_size

    def train(self, mode: bool = True) -> "Int8Student":
        """A no-op for the graph: a converted int8 graph is inference-only (batch norm folded, no dropout)."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W images in [0, 1] -> B x D embeddings (not normalised), int8 arithmetic simulated in float."""
        return self.graph(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding, as `Student.encode`."""
        return F.normalize(self.forward(x), dim=-1)

    def example_inputs(self, batch_size: int = 2) -> tuple[torch.Tensor]:
        return (torch.rand(batch_size, 3, self.image_size, self.image_size),)


def save_int8_student(model: Int8Student, path: str | os.PathLike) -> Path:
    """Write `model` as a `.pt2` torch.export program (int8 weights; batch dimension dynamic) + `.json` sidecar.

    The program reloads with `load_int8_student` (torch.export.load: no pickle) in any process with torch,
    and runs eagerly or through `quantize.compile_int8`. Returns the `.pt2` path.
    """
    path = Path(path)
    quantize.save_int8(model.graph, path, model.example_inputs(2))
    utils.write_json(path.with_suffix(".json"), {"format": "edgevl-int8-student", "student": model.config,
                                                  "bytes": quantize.model_size_bytes(path)})
    return path


def load_int8_student(path: str | os.PathLike) -> Int8Student:
    """Load a `.pt2` written by `save_int8_student` (its `.json` sidecar gives the student config)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"{path}: int8 student program or its sidecar {sidecar.name} is missing; write both "
                                f"with stage2.save_int8_student")
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if meta.get("format") != "edgevl-int8-student":
        raise ValueError(f"{sidecar}: not an int8 student sidecar (format {meta.get('format')!r})")
    return Int8Student(quantize.load_int8(path), meta["student"]).eval()


# ----------------------------------------------------------------------------------------------
# PTQ, QAT and stage 2
# ----------------------------------------------------------------------------------------------


def calibration_batches(dataset: data.PairedDataset, cache: EmbeddingCache, cfg: Stage2Config, image_size: int,
                        batches: int | None = None) -> list[torch.Tensor]:
    """The first `batches` (default `cfg.quant.calibration_batches`) training batches of epoch 0 for PTQ.

    Same views, order and encodings as the first QAT epoch (without the held-out images of
    `cfg.holdout_fraction`); each batch is [x; x'_1; ...] (every modality of `cfg.modalities` concatenated), so
    the activation ranges cover RGB and non-RGB inputs.
    """
    n = cfg.quant.calibration_batches if batches is None else batches
    views = CachedViewDataset(cache, dataset, image_size, cfg.seed)
    train_rows, held_rows = holdout_rows(len(views), cfg.holdout_fraction, cfg.seed)
    if held_rows:
        views = torch.utils.data.Subset(views, train_rows)
    order = torch.Generator().manual_seed(cfg.seed * 100_003)
    loader = DataLoader(views, batch_size=cfg.batch_size, sampler=torch.utils.data.RandomSampler(views, generator=order),
                        collate_fn=CachedViewDataset.collate)
    out = []
    for batch, _ in loader:
        if len(out) >= n:
            break
        inputs = data.encoder_inputs(batch, list(cfg.modalities), cfg.encodings, size=image_size)
        out.append(torch.cat([inputs[m] for m in cfg.modalities]))
    return out


def ptq_int8(student: Student, batches: Sequence[torch.Tensor], cfg: Stage2Config) -> Int8Student:
    """Post-training quantization of the float student: observers, `batches` through it, convert to int8."""
    float_copy = _for_quant(student)  # a copy: export shares storage with the module it traces
    prepared = quantize.prepare_ptq(float_copy, float_copy.example_inputs(2), cfg.quant)
    quantize.calibrate(prepared, batches)
    return Int8Student(quantize.convert(prepared), student.config).eval()


def _cpu_copy(student: Student) -> Student:
    return copy.deepcopy(student).cpu().eval()


def _for_quant(student: Student) -> Student:
    """A CPU copy in eval mode with MobileOne-style branches folded (`students.reparameterized`)."""
    return reparameterized(student).cpu().eval()


@dataclass
class Int8Variants:
    """The int8 rows of the ablation (`build_int8_variants`).

    Attributes:
        models: {"ptq_int8" | "qat_int8" | "stage2_int8": Int8Student}.
        paths: the `.pt2` file of each model.
        history: {"qat_int8" | "stage2_int8" | "fp32_ld" | "fp32_ld_lc": per-epoch training records
            (train.Stage2Result.history: losses, triplets, `grad_ratio`, `holdout_score`, ...)}.
        triplets: totals of the stage-2 run: `anchors`, `mined`, `images`.
        seconds: wall time of each variant's build in the call that built it.
        from_cache: True when every model was loaded from `out_dir` instead of built.
        folder: where they live.
        info: `params`, `calibration_images`, `chosen_epoch` ({run: the epoch its model comes from}).
        controls: {"fp32_ld" | "fp32_ld_lc": float Student} (`CONTROLS`), saved as `<name>.safetensors`.
    """

    models: dict[str, Int8Student]
    paths: dict[str, Path]
    history: dict[str, list[dict[str, Any]]]
    triplets: dict[str, int]
    seconds: dict[str, float]
    from_cache: bool
    folder: Path
    info: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, Student] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        """On-disk bytes of each `.pt2` program."""
        return {name: quantize.model_size_bytes(p) for name, p in self.paths.items()}


def build_int8_variants(student: Student, dataset: data.PairedDataset, cache: EmbeddingCache,
                        pseudo_labels: Mapping[str, int], cfg: Stage2Config, *, out_dir: str | os.PathLike,
                        resume: bool = True) -> Int8Variants:
    """PTQ, plain QAT (λ = 0) and stage 2 (λ = `cfg.contrastive_weight`) from one stage-1 student, and the two
    float control rows (`CONTROLS`: the same training without fake quantization, λ = 0 and λ = cfg's).
    The λ = 0 rows are L = w_d L_d with w_d = `cfg.distill_weight`, or 1 when that is 0 (triplet-only stage 2).

    QAT and stage 2 train with the same configuration, images, views, order and steps (`train.train_stage2`);
    only λ differs. PTQ calibrates on the first `cfg.quant.calibration_batches` batches of that order.
    Everything is written to `out_dir` (`<variant>.pt2` + `.json`, `qat_int8/` and `stage2_int8/` checkpoints,
    and `variants.json` last); when `variants.json` names the same inputs, the models are loaded instead.

    Args:
        student: the stage-1 float student.
        dataset, cache: the curated training images and their stored teacher embeddings.
        pseudo_labels: sample id -> teacher pseudo-label (the curation's) of every cached image.
        cfg: stage-2 configuration (λ, margin, J, lr, epochs, batch size, quantization).
        out_dir: the variants' folder.
        resume: reuse finished variants / continue interrupted QAT runs in `out_dir`.

    Returns:
        Int8Variants.
    """
    out_dir = Path(out_dir)
    inputs = {"stage1_student": fingerprint(student), "cache_key": cache.meta.get("key"),
              "config": keys.stable_fields(cfg)}
    summary_path = out_dir / SUMMARY_FILE
    if resume and summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("inputs") == inputs:
            paths = {v: out_dir / f"{v}.pt2" for v in INT8_VARIANTS}
            models = {v: load_int8_student(p) for v, p in paths.items()}
            controls = {c: load_student(out_dir / f"{c}.safetensors").eval() for c in CONTROLS}
            log.info("int8 variants loaded from %s", out_dir)
            return Int8Variants(models, paths, summary["history"], summary["triplets"], summary["seconds"], True,
                                out_dir, summary.get("info", {}), controls)
        log.warning("%s holds variants of other inputs; rebuilding", out_dir)
    models, seconds, history = {}, {}, {}

    start = time.perf_counter()
    batches = calibration_batches(dataset, cache, cfg, student.image_size)
    models["ptq_int8"] = ptq_int8(student, batches, cfg)
    seconds["ptq_int8"] = time.perf_counter() - start
    log.info("PTQ: calibrated on %d batches (%d images) in %.1f s", len(batches), sum(len(b) for b in batches),
             seconds["ptq_int8"])

    runs: dict[str, Stage2Result] = {}
    chosen: dict[str, int | None] = {}

    def weights(contrastive: float) -> dict[str, float]:
        """λ and w_d of a run: a λ = 0 run is distillation, w_d = 1 when cfg's is 0."""
        distill = cfg.distill_weight if contrastive > 0 or cfg.distill_weight > 0 else 1.0
        return {"contrastive_weight": contrastive, "distill_weight": distill}

    for name, weight in (("qat_int8", 0.0), ("stage2_int8", cfg.contrastive_weight)):
        start = time.perf_counter()
        run_cfg = dataclasses.replace(cfg, **weights(weight), checkpoint_dir=str(out_dir / name / "checkpoints"))
        runs[name] = train_stage2(run_cfg, student, dataset, cache, pseudo_labels, out_dir=out_dir / name,
                                  resume=resume)
        models[name] = Int8Student(quantize.convert(runs[name].model.cpu()), student.config).eval()
        history[name] = runs[name].history
        chosen[name] = runs[name].chosen_epoch
        seconds[name] = time.perf_counter() - start
    controls = {}
    for name, weight in zip(CONTROLS, (0.0, cfg.contrastive_weight)):
        start = time.perf_counter()
        run_cfg = dataclasses.replace(cfg, **weights(weight), fake_quant=False,
                                      checkpoint_dir=str(out_dir / name / "checkpoints"))
        run = train_stage2(run_cfg, student, dataset, cache, pseudo_labels, out_dir=out_dir / name, resume=resume)
        controls[name] = run.model.cpu().eval()
        save_student(controls[name], out_dir / f"{name}.safetensors")
        history[name] = run.history
        chosen[name] = run.chosen_epoch
        seconds[name] = time.perf_counter() - start

    paths = {v: save_int8_student(models[v], out_dir / f"{v}.pt2") for v in INT8_VARIANTS}
    # Return the saved programs, as a later call loads them: the same outputs as the in-memory graphs (tested),
    # but only the nodes the graph uses, which Inductor's int8 passes compile about 2.5x faster at batch 1.
    models = {v: load_int8_student(p) for v, p in paths.items()}
    triplets = runs["stage2_int8"].triplets
    info = {"params": count_params(student), "calibration_images": sum(len(b) for b in batches),
            "chosen_epoch": chosen}
    utils.write_json(summary_path, {"inputs": inputs, "history": history, "triplets": triplets, "seconds": seconds,
                                    "info": info})
    return Int8Variants(models, paths, history, triplets, seconds, False, out_dir, info, controls)


# ----------------------------------------------------------------------------------------------
# Evaluation and speed
# ----------------------------------------------------------------------------------------------


CLAIMS: dict[str, tuple[str, str, int]] = {
    "stage2_int8_beats_fp32": ("stage2_int8", "stage1_fp32", +1),  # "quantization as enhancement"
    "stage2_beats_plain_qat": ("stage2_int8", "qat_int8", +1),      # the contrastive term helps
    "qat_beats_ptq": ("qat_int8", "ptq_int8", +1),                  # QAT recovers what PTQ loses
    "qat_beats_same_float_training": ("qat_int8", "fp32_ld", +1),   # the gain is quantization, not extra epochs
    "stage2_beats_same_float_training": ("stage2_int8", "fp32_ld_lc", +1),
}
"""The paper's stage-2 claims on the paper average: {claim: (row a, row b, expected sign of a - b)}."""


def evaluate_variants(models: Mapping[str, torch.nn.Module], evalset: data.PairedDataset, text_emb: torch.Tensor,
                      modalities: Sequence[str], encodings: dict[str, data.ModalityEncoding] | None = None,
                      trained: Sequence[str] | None = None
                      ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """Zero-shot top-1 of every model in every modality, `avg` (their mean) and `paper_avg` (the mean over the
    `trained` modalities, RGB and the distilled non-RGB one, the paper's headline): the ablation table.

    Returns:
        ({variant: {modality: accuracy, ..., "avg", "paper_avg"}}, {variant: {modality: per-sample outcomes}}).
    """
    table, outcomes = {}, {}
    trained = list(trained or modalities)
    for name, model in models.items():
        start = time.perf_counter()
        outcomes[name] = zero_shot_outcomes(model, evalset, text_emb, modalities, encodings)
        acc = {m: int(o.sum()) / len(o) for m, o in outcomes[name].items()}
        table[name] = {**acc, "avg": float(np.mean([acc[m] for m in modalities])),
                       "paper_avg": float(np.mean([acc[m] for m in trained]))}
        log.info("%s: %s (%.1f s)", name, {k: round(v, 3) for k, v in table[name].items()},
                 time.perf_counter() - start)
    return table, outcomes


def int8_speedup(student: Student, int8: Int8Student, batch_size: int = 1, runs: int = 50, warmup: int = 5,
                 threads: int | None = None) -> dict[str, Any]:
    """Latency of the int8 student vs its float self on this CPU, both through `quantize.compile_int8`.

    Both are compiled with Inductor (freezing): the float one runs oneDNN fp32 kernels, the int8 one oneDNN
    int8 kernels, on the same random input; `warmup` calls each (the first compiles), then `runs` calls timed in
    interleaved blocks (`bench.time_interleaved`) so that machine load hits both alike.

        speedup = median(fp32 ms) / median(int8 ms)

    Returns:
        {"fp32_ms", "int8_ms" (medians), "fp32_p10_ms", "fp32_p90_ms", "int8_p10_ms", "int8_p90_ms", "speedup",
         "batch_size", "threads", "runs"}.
    """
    from .bench import latency_stats, time_interleaved

    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(batch_size, 3, int8.image_size, int8.image_size, generator=torch.Generator().manual_seed(0))
        fns = {name: (lambda fn=quantize.compile_int8(model): fn(x))
               for name, model in (("fp32", _cpu_copy(student)), ("int8", int8.graph))}
        stats = {n: latency_stats(t) for n, t in time_interleaved(fns, {n: runs for n in fns},
                                                                  {n: warmup for n in fns}).items()}
    finally:
        torch.set_num_threads(previous)
    spread = {f"{n}_{q}_ms": stats[n][f"{q}_ms"] for n in stats for q in ("p10", "p90")}
    return {"fp32_ms": stats["fp32"]["median_ms"], "int8_ms": stats["int8"]["median_ms"], **spread,
            "speedup": stats["fp32"]["median_ms"] / stats["int8"]["median_ms"], "batch_size": batch_size,
            "threads": threads, "runs": runs}
