"""One frozen dataclass per stage, each with a `.smoke()` variant for tests and quick runs.

They are the sections of a `recipe.Recipe` (data, teacher, curation, stage1, stage2, analysis, benchmark), which is
how notebooks get them. Impossible values are refused in `__post_init__` (`check`), so a recipe fails before any
work. Fields that cannot change a result (workers, devices, folders) carry `metadata=keys.VOLATILE` and enter no
cache key; fields a Recipe fills in (every section's `seed`, `teacher.benchmark`) carry `keys.DERIVED`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .keys import DERIVED, VOLATILE


def check(ok: bool, name: str, rule: str, value: Any) -> None:
    """Raise ValueError("<name> <rule> (got <value>)") unless `ok`: the one shape of an impossible-value error,
    which `recipe` prefixes with the section (e.g. `stage1.epochs must be >= 1 (got 0)`)."""
    if not ok:
        raise ValueError(f"{name} {rule} (got {value!r})")

# ----------------------------------------------------------------------------------------------
# Embedded benchmark (edgevl_lib.render)
# ----------------------------------------------------------------------------------------------

BENCHMARK_CLASSES: tuple[str, ...] = (
    "chair", "stool", "table", "desk", "bench", "bed", "sofa", "bookshelf", "cabinet",
    "lamp", "monitor", "mug", "bottle", "traffic cone", "trash can",
)


@dataclass(frozen=True)
class BenchmarkConfig:
    """The procedural RGB / depth / thermal benchmark (see edgevl_lib.render for the scene model).

    Difficulty knobs: `random_appearance` (share of samples whose materials ignore the class palette),
    `max_distractors`, `occlusion_prob`, `camera_jitter`, `light_jitter`, `depth_noise`, `thermal_noise`,
    `shape_jitter` (within-class geometry variation). `uninformative`: the share of the adapt split that is
    uninformative frames (no object of any class, or one the camera cannot make out; `render.UNINFORMATIVE_KINDS`),
    added after its labelled samples; eval and teacher_pretrain have none. Curation should discard them.
    """

    seed: int = field(default=0, metadata=DERIVED)
    image_size: int = 64
    classes: tuple[str, ...] = BENCHMARK_CLASSES
    per_class: dict[str, int] = field(default_factory=lambda: {"teacher_pretrain": 120, "adapt": 160, "eval": 50})
    random_appearance: float = 0.2
    max_distractors: int = 4
    occlusion_prob: float = 0.4
    camera_jitter: float = 1.0
    light_jitter: float = 1.0
    shape_jitter: float = 1.0
    uninformative: float = 0.2
    depth_noise: float = 1.0
    thermal_noise: float = 1.0
    rgb_noise: float = 0.01
    depth_range: tuple[float, float] = (0.4, 8.0)
    workers: int = field(default=2, metadata=VOLATILE)

    def __post_init__(self) -> None:
        check(0 <= self.uninformative < 1, "uninformative", "must be in [0, 1) (a share of the adapt split)",
              self.uninformative)

    def smoke(self) -> "BenchmarkConfig":
        return dataclasses.replace(self, image_size=32, classes=self.classes[:5],
                                   per_class={"teacher_pretrain": 6, "adapt": 6, "eval": 4}, workers=1)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of any config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------------------------
# Teachers (edgevl_lib.teachers)
# ----------------------------------------------------------------------------------------------

CLIP_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a photo of the {}.", "a rendering of a {}.", "a 3d render of a {}.",
    "a picture of a {}.", "a low resolution photo of a {}.", "a photo of a small {}.", "a photo of a large {}.",
)


@dataclass(frozen=True)
class TeacherConfig:
    """Which vision-language teacher to build with `edgevl_lib.teachers.build_teacher`.

    kind: `embedded` (default; the offline stand-in: ImageNet EfficientNet-lite0 features + a head trained on
    the benchmark's `teacher_pretrain` RGB split into the MiniLM text space), `open_clip` (any open_clip model;
    the paper's teacher is ViT-g-14 / laion2b_s34b_b88k) or `ensemble` (concatenation of `members`).
    open_clip weights are never downloaded unless `allow_download=True` or `EDGEVL_ALLOW_DOWNLOAD=1`;
    `checkpoint` (a local open_clip_pytorch_model.bin / .safetensors) takes precedence over `pretrained`;
    `model_config` is an open_clip architecture JSON file (its stem = `model`) for architectures open_clip does
    not ship.

    Embedded-teacher knobs: `image_size` (teacher input), `feature_blocks` (EfficientNet-lite0 blocks whose pooled
    outputs, concatenated, feed the head: 0-6 = blocks.N, 7 = conv_head; the last one is the cut point),
    `head_hidden`, `epochs`, `lr`, `weight_decay`, `batch_size`, `hflip` (add mirrored views of the pretrain
    images), `seed`. Same data + knobs -> same head (cached under utils.cache_dir()/teachers/).
    """

    kind: str = "embedded"
    model: str = "ViT-g-14"
    pretrained: str | None = "laion2b_s34b_b88k"
    checkpoint: str | None = None
    model_config: str | None = None
    allow_download: bool = field(default=False, metadata=VOLATILE)
    cache_dir: str | None = field(default=None, metadata=VOLATILE)
    members: tuple["TeacherConfig", ...] = ()
    ensemble_mode: str = "concat"
    templates: tuple[str, ...] = CLIP_TEMPLATES
    device: str | None = field(default=None, metadata=VOLATILE)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig, metadata=DERIVED)
    pretrain_root: str | None = None
    image_size: int = 128
    feature_blocks: tuple[int, ...] = (4, 5, 6)
    head_hidden: int = 512
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    hflip: bool = True
    seed: int = field(default=0, metadata=DERIVED)

    def smoke(self) -> "TeacherConfig":
        return dataclasses.replace(self, benchmark=self.benchmark.smoke(), image_size=64, epochs=2, batch_size=32,
                                   head_hidden=64, hflip=False,
                                   members=tuple(m.smoke() for m in self.members))


# ----------------------------------------------------------------------------------------------
# Curation and stored teacher embeddings (edgevl_lib.curation, edgevl_lib.cache)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurationConfig:
    """Label-free curation (EdgeVL) and the stored teacher embeddings of augmented views (MobileCLIP).

    Attributes:
        mode: `threshold` (paper: keep c_i >= tau), `top_fraction` (released code: keep the ceil(f N)
            most confident images) or `class_top_fraction` (ours: the ceil(f N_k) most confident of each
            pseudo-class k, so no class vanishes).
        tau: confidence threshold for `threshold`.
        top_fraction: f for the two fraction modes.
        scale: logit scale s in softmax(s * cos); None = the teacher's own (CLIP's learned 100; the
            embedded teacher's calibrated scale).
        superset: label superset file (a path, or a file name in edgevl_lib/prompts/).
        templates: prompt templates file (same lookup).
        descriptions: optional JSON {name: description} for LLM-enriched prompts; None = templates only.
        batch_size: images per teacher call when scoring.
        views: K augmented views stored per kept image (view 0 = the full image).
        crop_scale: random-resized-crop area range (fraction of the image).
        crop_ratio: random-resized-crop aspect-ratio range (w / h).
        view_size: side of the view images fed to the teacher; None = the teacher's image_size.
        cache_batch_size: images per teacher call when building the cache.
        seed: seed of the view parameters.
    """

    mode: str = "threshold"
    tau: float = 0.25
    top_fraction: float = 0.5
    scale: float | None = None
    superset: str = "embedded_superset.txt"
    templates: str = "templates.txt"
    descriptions: str | None = None
    batch_size: int = 64
    views: int = 4
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    view_size: int | None = None
    cache_batch_size: int = 64
    seed: int = field(default=0, metadata=DERIVED)

    def __post_init__(self) -> None:
        check(self.mode in ("threshold", "top_fraction", "class_top_fraction"), "mode",
              "must be 'threshold', 'top_fraction' or 'class_top_fraction'", self.mode)
        check(0.0 <= self.tau <= 1.0, "tau", "must be in [0, 1]", self.tau)
        check(0.0 < self.top_fraction <= 1.0, "top_fraction", "must be in (0, 1]", self.top_fraction)
        check(self.views >= 1, "views", "must be >= 1", self.views)
        check(self.batch_size >= 1 and self.cache_batch_size >= 1, "batch_size",
              "and cache_batch_size must be >= 1", (self.batch_size, self.cache_batch_size))
        check(0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0, "crop_scale", "must satisfy 0 < lo <= hi <= 1",
              self.crop_scale)

    def smoke(self) -> "CurationConfig":
        # top_fraction: a 2-epoch teacher on 30 images is too unsure for any tau, and stage 1 needs kept images
        return dataclasses.replace(self, mode="top_fraction", top_fraction=0.5, batch_size=8, views=2,
                                   cache_batch_size=8)


# ----------------------------------------------------------------------------------------------
# Stage 1: dual-modality distillation (edgevl_lib.train)
# ----------------------------------------------------------------------------------------------

from typing import TYPE_CHECKING  # noqa: E402  (imports of this appended section)

from .losses import DistillLossConfig  # noqa: E402  (losses imports only torch)

if TYPE_CHECKING:
    from .data import ModalityEncoding

TRAIN_MODALITIES: tuple[str, ...] = ("dual", "rgb_only", "nonrgb_only")
TEACHER_MODES: tuple[str, ...] = ("cached", "online")


@dataclass(frozen=True)
class Stage1Config:
    """EdgeVL stage 1: one weight-shared student distilled from the teacher's RGB embeddings.

    L_d = d(T(x), S(x)) + Σ_m d(T(x), S(x'_m)),  d = L1 on L2-normalised embeddings (losses.dual_distillation_loss)

    Attributes:
        arch: student architecture for `students.create_student` (default `students.DEFAULT_STUDENT_ARCH`).
        pretrained: start from timm's ImageNet weights (downloads; never for test archs).
        image_size: student input side in pixels (views are cut at this size).
        head: `linear` or `mlp` projection head.
        modalities: the paired modalities the dataset provides, RGB first, e.g. ("rgb", "depth").
        train_modalities: which modalities the loss sees: `dual` (RGB + every non-RGB one: EdgeVL L_d),
            `rgb_only` (d(T(x), S(x)) only) or `nonrgb_only` (Σ_m d(T(x), S(x'_m)) only); the ablation.
        encodings: modality -> data.ModalityEncoding; modalities not listed use data.default_encoding
            (rgb identity, depth / thermal fixed-range replicate).
        losses: loss terms and weights (default {"dual": 1.0}, L1, paper's sum over modalities).
        epochs: passes over the cached images (one random stored view per image per epoch).
        batch_size: images per optimiser step (per process under torchrun).
        lr: peak AdamW learning rate (paper: 1e-4).
        min_lr: end of the per-step cosine decay (paper: 5e-6).
        weight_decay: AdamW decoupled weight decay.
        warmup_epochs: linear warm-up from lr / 100 to lr over this many epochs (may be fractional; 0 = none).
        amp: mixed precision; None = on for CUDA only (bf16 where supported, else fp16 + GradScaler),
            True on CPU = bf16 autocast.
        num_workers: DataLoader workers (0 = load in the training process).
        seed: seeds the student init, the shuffling and the view choice (same seed -> same weights on CPU).
        teacher_mode: `cached` (targets = stored view embeddings; no teacher forward) or `online` (the same
            stored views go through `teacher.encode_image` every step; for the timing comparison).
        checkpoint_dir: folder of the per-epoch checkpoints; None = `<out_dir>/checkpoints`.
        ddp: None = DistributedDataParallel when launched by torchrun (WORLD_SIZE > 1); True = require
            torchrun; False = refuse to run under torchrun.
        device: torch device; None = CUDA (LOCAL_RANK under torchrun) when present, else CPU.

    >>> Stage1Config().smoke().arch
    'conv_tiny_test'
    """

    arch: str = "regnetx_002"  # = students.DEFAULT_STUDENT_ARCH (not imported: it would pull in timm)
    pretrained: bool = False
    image_size: int = 64
    head: str = "linear"
    modalities: tuple[str, ...] = ("rgb", "depth")
    train_modalities: str = "dual"
    encodings: dict[str, ModalityEncoding] = field(default_factory=dict)
    losses: DistillLossConfig = field(default_factory=DistillLossConfig)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    min_lr: float = 5e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    amp: bool | None = None
    num_workers: int = field(default=2, metadata=VOLATILE)
    seed: int = field(default=0, metadata=DERIVED)
    teacher_mode: str = "cached"
    checkpoint_dir: str | None = field(default=None, metadata=VOLATILE)
    ddp: bool | None = None
    device: str | None = field(default=None, metadata=VOLATILE)

    def __post_init__(self) -> None:
        if self.train_modalities not in TRAIN_MODALITIES:
            raise ValueError(f"train_modalities={self.train_modalities!r}; use one of {TRAIN_MODALITIES}")
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher_mode={self.teacher_mode!r}; use one of {TEACHER_MODES}")
        if not self.modalities or self.modalities[0] != "rgb":
            raise ValueError(f"modalities={self.modalities!r} must start with 'rgb' (the teacher's modality)")
        if self.train_modalities != "rgb_only" and len(self.modalities) < 2:
            raise ValueError(f"train_modalities={self.train_modalities!r} needs a non-RGB modality in "
                             f"modalities={self.modalities!r}")
        check(self.epochs >= 1, "epochs", "must be >= 1", self.epochs)
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        check(self.lr > 0, "lr", "must be > 0", self.lr)
        check(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]", self.min_lr)
        check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0", self.warmup_epochs)
        check(self.image_size >= 16, "image_size", "must be >= 16 pixels", self.image_size)

    def smoke(self, arch: str = "conv_tiny_test") -> "Stage1Config":
        """Tiny settings for tests. The notebooks' smoke runs pass arch="vit_tiny_test": converting a QAT
        conv + batch-norm graph (stage 2) costs ~20 s of torchao pattern tracing, a ViT a second."""
        return dataclasses.replace(self, arch=arch, pretrained=False, image_size=32, epochs=2,
                                   batch_size=8, warmup_epochs=0.0, num_workers=0)


# ----------------------------------------------------------------------------------------------
# Quantization and stage 2: quantization-aware contrastive learning (edgevl_lib.quantize, edgevl_lib.train)
# ----------------------------------------------------------------------------------------------

QUANTIZERS: tuple[str, ...] = ("x86_inductor",)
"""PT2E quantizer backends edgevl_lib.quantize knows (the int8 student is benchmarked on x86 CPUs first)."""


@dataclass(frozen=True)
class QuantConfig:
    """How the student is quantized to int8 (torchao PT2E, see edgevl_lib.quantize).

    Attributes:
        quantizer: PT2E quantizer backend; only "x86_inductor" (oneDNN int8 kernels through Inductor).
        calibration_batches: batches `quantize.calibrate` feeds through a PTQ-prepared model.
        is_qat: fake-quant modules with trainable weights (QAT) instead of observers (PTQ).
        per_channel: per-output-channel weight scales; the x86 quantizer supports only True.
        reduce_range: 7-bit activations for CPUs without VNNI (avoids int16 overflow in u8*s8 dot products).
        dynamic_batch: export with a symbolic batch dimension so one artifact serves every batch size.
        weight_bits: b, a research knob: weights are rounded to the signed b-bit grid
            [-2^(b-1), 2^(b-1) - 1] (stored as int8; b = 8 is the deployable default). b = 4 is the W4A8 setting
            that gives int8-style damage something to recover (the study's headroom configuration).
    """

    quantizer: str = "x86_inductor"
    calibration_batches: int = 8
    is_qat: bool = False
    per_channel: bool = True
    reduce_range: bool = False
    dynamic_batch: bool = True
    weight_bits: int = 8

    def __post_init__(self) -> None:
        check(2 <= self.weight_bits <= 8, "weight_bits", "must be in [2, 8]", self.weight_bits)
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; known: {QUANTIZERS}")
        if not self.per_channel:
            raise ValueError("X86InductorQuantizer quantizes weights per channel only (per_channel=True)")

        check(self.calibration_batches >= 1, "calibration_batches", "must be >= 1", self.calibration_batches)

    def smoke(self) -> "QuantConfig":
        return dataclasses.replace(self, calibration_batches=min(self.calibration_batches, 2))


@dataclass(frozen=True)
class Stage2Config:
    """EdgeVL stage 2: quantization-aware training of the stage-1 student with a contrastive term.

    L = w_d L_d + λ L_c,   L_d = the stage-1 distillation loss (`distill`, on fake-quantized features),
                           L_c = Σ_m triplet loss on semi-hard triplets mined on S(x) with teacher pseudo-labels
                                 (edgevl_lib.mining.cross_modal_triplet_loss; margin m, at most J negatives)

    λ = `contrastive_weight`; λ = 0 is plain QAT (the ablation's "QAT int8" row). The released code's stage 2
    is `distill_weight=0, mining="bank", negatives="random"` (triplets only, mined over the training set).

    Attributes:
        modalities: the paired modalities trained on, RGB first (as in stage 1).
        encodings: modality -> data.ModalityEncoding (default: data.default_encoding), as in stage 1.
        distill: the distillation terms (default EdgeVL's dual L1).
        contrastive_weight: λ.
        margin: m of the semi-hard band and the triplet loss (paper: 0.3).
        max_negatives: J, semi-hard negatives per anchor (paper: 3).
        mine_on: the modality whose (detached) features define the triplets, applied to every modality.
        mining: "batch" (mine within each batch) or "bank" (the released code: anchors of the batch against a
            bank of every training image's features, one bank per modality, refreshed at the start of each
            epoch from the stored first view in eval mode and updated with the batch's features every step;
            positives and negatives are bank rows, without gradient; `mining.bank_semi_hard_triplets`).
        negatives: "nearest" (the J nearest semi-hard negatives) or "random" (the released code: J drawn at
            random from the semi-hard band, seeded by `seed` and the epoch).
        distill_weight: w_d; 0 trains with the triplet loss only (the released code's stage 2; the plain-QAT
            and fp32_ld rows of `stage2.build_int8_variants` keep w_d = 1 then).
        grad_ratio_batches: per epoch, the first batches on which ||∇_θ L_c|| / ||∇_θ L_d|| is measured (when
            both terms are on; history `grad_ratio`); 0 measures nothing.
        balance: "none" (λ as given) or "grad_norm": each step weighs L_c by λ_t = λ w_d / r̄_t, r̄_t the mean
            ||∇L_c|| / ||∇L_d|| of the epoch's measured batches so far (the first `grad_ratio_batches`, the
            current one included), so ||λ_t ∇L_c|| / ||w_d ∇L_d|| = λ on them: λ becomes the ratio of the two
            terms' gradient norms, and neither swamps the other at λ = 1 (history `lambda_eff`, the epoch's
            last λ_t).
        holdout_fraction: share of the curated images held out of training (a seeded random slice); the epoch
            with the highest held-out agreement (mean cosine of student and stored teacher embeddings) is kept.
            0 keeps the last epoch.
        epochs: passes over the curated images (one stored view per image per epoch).
        batch_size: images per step (triplets are mined within the batch: it needs several images per class).
        lr: AdamW learning rate (paper: 1e-6).
        min_lr: end of a per-step cosine decay; None = constant `lr`.
        weight_decay: AdamW decoupled weight decay.
        quant: the quantization settings (`is_qat` is forced for training; `calibration_batches` is the PTQ row).
        fake_quant: False runs the same loop on the float student, without fake quantization: the ablation's
            control rows (same extra training, no quantization), not a deployment setting.
        num_workers: DataLoader workers.
        seed: seeds shuffling, views and the QAT run.
        checkpoint_dir: per-epoch checkpoints; None = `<out_dir>/checkpoints`.
        device: torch device; None = CUDA when present, else CPU.

    >>> Stage2Config().smoke().epochs
    1
    """

    modalities: tuple[str, ...] = ("rgb", "depth")
    encodings: dict[str, ModalityEncoding] = field(default_factory=dict)
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)
    contrastive_weight: float = 1.0
    margin: float = 0.3
    max_negatives: int = 3
    mine_on: str = "rgb"
    mining: str = "batch"
    negatives: str = "nearest"
    distill_weight: float = 1.0
    grad_ratio_batches: int = 2
    balance: str = "none"
    holdout_fraction: float = 0.0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-6
    min_lr: float | None = None
    weight_decay: float = 0.0
    quant: QuantConfig = field(default_factory=QuantConfig)
    fake_quant: bool = True
    num_workers: int = field(default=0, metadata=VOLATILE)
    seed: int = field(default=0, metadata=DERIVED)
    checkpoint_dir: str | None = field(default=None, metadata=VOLATILE)
    device: str | None = field(default=None, metadata=VOLATILE)

    def __post_init__(self) -> None:
        if not self.modalities or self.modalities[0] != "rgb":
            raise ValueError(f"modalities={self.modalities!r} must start with 'rgb' (the teacher's modality)")
        if self.mine_on not in self.modalities:
            raise ValueError(f"mine_on={self.mine_on!r} is not one of modalities={self.modalities!r}")
        if self.contrastive_weight < 0 or self.margin <= 0 or self.max_negatives < 1:
            raise ValueError("contrastive_weight must be >= 0, margin > 0 and max_negatives >= 1")
        check(self.mining in ("batch", "bank"), "mining", "must be 'batch' or 'bank'", self.mining)
        check(self.negatives in ("nearest", "random"), "negatives", "must be 'nearest' or 'random'", self.negatives)
        check(self.distill_weight >= 0, "distill_weight", "must be >= 0", self.distill_weight)
        check(self.distill_weight > 0 or self.contrastive_weight > 0, "distill_weight",
              "and contrastive_weight cannot both be 0 (no loss)", self.distill_weight)
        check(self.grad_ratio_batches >= 0, "grad_ratio_batches", "must be >= 0", self.grad_ratio_batches)
        check(self.balance in ("none", "grad_norm"), "balance", "must be 'none' or 'grad_norm'", self.balance)
        check(self.balance == "none" or (self.grad_ratio_batches >= 1 and self.distill_weight > 0
                                         and self.contrastive_weight > 0), "balance",
              "'grad_norm' needs grad_ratio_batches >= 1, distill_weight > 0 and contrastive_weight > 0", self.balance)
        check(0 <= self.holdout_fraction < 1, "holdout_fraction", "must be in [0, 1)", self.holdout_fraction)
        check(self.epochs >= 1, "epochs", "must be >= 1", self.epochs)
        check(self.batch_size >= 2, "batch_size", "must be >= 2 (triplets are mined within a batch)", self.batch_size)
        check(self.lr > 0, "lr", "must be > 0", self.lr)
        check(self.min_lr is None or 0 <= self.min_lr <= self.lr, "min_lr", "must be None or in [0, lr]", self.min_lr)

    def smoke(self) -> "Stage2Config":
        return dataclasses.replace(self, epochs=1, batch_size=8, quant=self.quant.smoke())


# ----------------------------------------------------------------------------------------------
# The recipe's other sections: data, analysis (notebook 04), edge benchmark (notebook 05)
# ----------------------------------------------------------------------------------------------

DATASETS: tuple[str, ...] = ("embedded", "paired_folder", "scannet", "nyuv2", "sunrgbd", "eurosat")


@dataclass(frozen=True)
class DataConfig:
    """Which data a run adapts and evaluates on (`loaders.load_dataset`).

    Attributes:
        dataset: `embedded` (the procedural benchmark, rendered on first use) or a real-format loader.
        root: the dataset's folder (or the NYUv2 .mat file); None for `embedded`.
        eval_root: a second dataset of the same loader family evaluated instead of `root`'s eval split
            (cross-dataset runs, e.g. ScanNet -> NYUv2); None = `root`'s own eval split.
        eval_dataset: loader of `eval_root` (None = `dataset`).
        classes: the evaluated class list (None = all the data's classes); for `embedded` the rendered classes.
        options: extra keyword arguments of the loader (e.g. a depth scale or a band order).
        benchmark: the embedded benchmark's configuration (also the embedded teacher's pretraining data).
    """

    dataset: str = "embedded"
    root: str | None = None
    eval_root: str | None = None
    eval_dataset: str | None = None
    classes: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def __post_init__(self) -> None:
        check(self.dataset in DATASETS, "dataset", f"must be one of {DATASETS}", self.dataset)
        check(self.eval_dataset is None or self.eval_dataset in DATASETS, "eval_dataset",
              f"must be None or one of {DATASETS}", self.eval_dataset)
        check(self.dataset == "embedded" or bool(self.root), "root", f"is needed for dataset {self.dataset!r}",
              self.root)
        check(self.classes is None or len(self.classes) >= 2, "classes", "needs at least 2 names (or null)",
              self.classes)

    def smoke(self) -> "DataConfig":
        return dataclasses.replace(self, benchmark=self.benchmark.smoke())


@dataclass(frozen=True)
class AnalysisConfig:
    """Notebook 04: representation consistency (Li et al.) and the shared UMAP.

    Attributes:
        k: neighbours of M_neigh.
        umap_neighbors, umap_min_dist: umap-learn's n_neighbors / min_dist of the shared UMAP fit.
    """

    k: int = 10
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1

    def __post_init__(self) -> None:
        check(self.k >= 1, "k", "must be >= 1", self.k)
        check(self.umap_neighbors >= 2, "umap_neighbors", "must be >= 2", self.umap_neighbors)
        check(0.0 <= self.umap_min_dist <= 1.0, "umap_min_dist", "must be in [0, 1]", self.umap_min_dist)

    def smoke(self) -> "AnalysisConfig":
        return dataclasses.replace(self, k=3, umap_neighbors=5)


@dataclass(frozen=True)
class EdgeBenchmarkConfig:
    """Notebook 05: latency, size and agreement of the int8 student against CLIP-B.

    Attributes:
        threads: intra-op threads of every engine (torch and ONNX Runtime), fixed and reported.
        runs: timed batch-1 calls per engine; baseline_runs those of the slow fp32 torch engines.
        warmup: untimed calls first (slow fp32 torch engines: at most 5).
        throughput_batch, throughput_runs: the throughput measurement.
        project_throughput_batch, project_throughput_runs: that of the project's student (64 px: a larger batch).
        variant_runs: timed batch-1 calls per file in the table of int8 variants of the paper-scale student.
        paper_arch, paper_embed_dim, paper_image_size: the paper-scale student (random weights, PTQ).
        calibration_batches: PTQ batches (8 random images each) of the paper-scale student.
        clip_model: EdgeVL's CLIP-B (open_clip architecture, random weights: timing only).
        teacher_nominal: the paper's teacher, for its nominal fp32 size.
        compile_int8: also time `quantize.compile_int8` (Inductor + oneDNN int8).
        gpu_runs: timed calls per GPU engine (only where CUDA is present).
    """

    threads: int = 1
    runs: int = 200
    baseline_runs: int = 200
    warmup: int = 20
    throughput_batch: int = 8
    throughput_runs: int = 6
    project_throughput_batch: int = 32
    project_throughput_runs: int = 10
    variant_runs: int = 30
    paper_arch: str = "vit_small_patch16_224"
    paper_embed_dim: int = 512
    paper_image_size: int = 224
    calibration_batches: int = 2
    clip_model: str = "ViT-B-16"
    teacher_nominal: str = "ViT-g-14"
    compile_int8: bool = False
    gpu_runs: int = 200

    def __post_init__(self) -> None:
        for name in ("threads", "runs", "baseline_runs", "throughput_batch", "throughput_runs", "paper_embed_dim",
                     "calibration_batches", "gpu_runs", "project_throughput_batch", "project_throughput_runs",
                     "variant_runs"):
            check(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        check(self.warmup >= 0, "warmup", "must be >= 0", self.warmup)

    def smoke(self) -> "EdgeBenchmarkConfig":
        return dataclasses.replace(self, paper_arch="vit_tiny_test", paper_embed_dim=16, paper_image_size=32,
                                   calibration_batches=1, runs=10, baseline_runs=3, warmup=2, throughput_batch=4,
                                   throughput_runs=2, gpu_runs=10, clip_model="ViT-S-32", project_throughput_batch=4,
                                   project_throughput_runs=2, variant_runs=3)
