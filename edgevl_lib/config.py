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
    workers: int = 2

    def smoke(self) -> "BenchmarkConfig":
        return dataclasses.replace(self, image_size=32, classes=self.classes[:5],
                                   per_class={"teacher_pretrain": 6, "adapt": 6, "eval": 4}, workers=1)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of any config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)
