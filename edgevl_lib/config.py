"""One dataclass per stage, each with a `.smoke()` variant for tests and quick runs.

Notebooks take plain papermill parameters, build the stage's config from them, and call
`cfg.smoke()` when `smoke=True`. Configs are plain data: `dataclasses.asdict(cfg)` is what a
result records next to its metrics.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
    `shape_jitter` (within-class geometry variation).
    """

    seed: int = 0
    image_size: int = 64
    classes: tuple[str, ...] = BENCHMARK_CLASSES
    per_class: dict[str, int] = field(default_factory=lambda: {"teacher_pretrain": 120, "adapt": 160, "eval": 50})
    random_appearance: float = 0.2
    max_distractors: int = 3
    occlusion_prob: float = 0.3
    camera_jitter: float = 1.0
    light_jitter: float = 1.0
    shape_jitter: float = 1.0
    depth_noise: float = 1.0
    thermal_noise: float = 1.0
    rgb_noise: float = 0.01
    depth_range: tuple[float, float] = (0.4, 8.0)
    workers: int = 2

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
    `checkpoint` (a local open_clip_pytorch_model.bin / .safetensors) takes precedence over `pretrained`.

    Embedded-teacher knobs: `image_size` (teacher input), `cut_block` (the EfficientNet-lite0 block whose pooled
    output feeds the head: 0-6 = blocks.N, 7 = conv_head, the full backbone), `head_hidden`, `epochs`, `lr`,
    `weight_decay`, `batch_size`, `hflip` (add mirrored views of the pretrain images), `seed`.
    """

    kind: str = "embedded"
    model: str = "ViT-g-14"
    pretrained: str | None = "laion2b_s34b_b88k"
    checkpoint: str | None = None
    allow_download: bool = False
    cache_dir: str | None = None
    members: tuple["TeacherConfig", ...] = ()
    ensemble_mode: str = "concat"
    templates: tuple[str, ...] = CLIP_TEMPLATES
    device: str | None = None
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    pretrain_root: str | None = None
    image_size: int = 128
    cut_block: int = 4
    head_hidden: int = 512
    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 128
    hflip: bool = True
    seed: int = 0

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
        mode: `threshold` (paper: keep c_i >= tau) or `top_fraction` (released code: keep the ceil(f N)
            most confident images).
        tau: confidence threshold for `threshold`.
        top_fraction: f for `top_fraction`.
        scale: logit scale s in softmax(s * cos); 100 is CLIP's.
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
    scale: float = 100.0
    superset: str = "embedded_superset.txt"
    templates: str = "templates.txt"
    descriptions: str | None = None
    batch_size: int = 64
    views: int = 8
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    view_size: int | None = None
    cache_batch_size: int = 64
    seed: int = 0

    def smoke(self) -> "CurationConfig":
        return dataclasses.replace(self, batch_size=8, views=2, cache_batch_size=8)
