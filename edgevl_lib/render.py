"""The embedded benchmark: a procedural, ray-cast RGB / depth / thermal renderer of indoor objects.

No network, no real data set: the offline default data is rendered here. One scene = one labelled
object (a parametric assembly of primitives) on a floor in front of a wall, with distractors, an
optional occluder, a directional light and one pinhole camera. The three modalities come from the
same rays, so they are pixel-aligned by construction:

* depth: real geometry. Analytic ray-primitive intersections (boxes by the slab method in the part's
  local frame, frustums = cylinders / cones, ellipsoids = spheres, planes), vectorised with numpy over
  all pixels and all parts of a kind at once. Rays have unit forward component, so the ray parameter
  `t` *is* the z-depth along the optical axis in metres. A Kinect-like sensor model adds
  sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 m noise and invalid (0) pixels at discontinuities, grazing
  angles and out of range.
* rgb: Lambert + Blinn-Phong shading with shadows, class palettes and textures (wood grain, fabric,
  striped cones, glowing screens); a share `random_appearance` of scenes uses random looks instead.
* thermal: from materials, not colours: a room at ~20-22 C with a vertical gradient, per-material
  temperature offsets (hot screens, bulbs, coffee; cold bottles), emissivity mixing with the reflected
  room, slight heating by the light, then optics blur and sensor noise.

Layout on disk (`build_benchmark`)::

    <cache>/benchmark/embedded-<hash>/
      benchmark.json        config, classes, storage scales, suggested encoding ranges, timing
      teacher_pretrain/     rgb + label (builds the default teacher only)
      adapt/                rgb / depth / thermal (labels only to evaluate curation), then a share
                            `uninformative` of unlabelled frames no class can be read from: bare wall or floor,
                            covered lens, motion blur, over- / under-exposure (ids and kinds in its meta.json)
      eval/                 rgb / depth / thermal + label

Each split is a generic paired folder (`edgevl_lib.data.PairedFolder`). Every sample's random stream
derives from (cfg.seed, split, index), so the output is byte-identical for any number of workers.

>>> from edgevl_lib.config import BenchmarkConfig
>>> s = render_sample(BenchmarkConfig().smoke(), "eval", 0)
>>> s.images["depth"].shape
torch.Size([1, 32, 32])
"""
from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import keys, utils
from .config import BenchmarkConfig, to_dict
from .data import DEFAULT_RANGES, DEFAULT_SCALES, RGB, PairedDataset, PairedFolder, Sample, write_paired_folder

log = logging.getLogger(__name__)

RENDERER_VERSION = 1
"""Bump when the renderer's output changes, so cached benchmarks are rebuilt."""

SPLITS: tuple[str, ...] = ("teacher_pretrain", "adapt", "eval")
SPLIT_MODALITIES: dict[str, tuple[str, ...]] = {
    "teacher_pretrain": (RGB,),
    "adapt": (RGB, "depth", "thermal"),
    "eval": (RGB, "depth", "thermal"),
}
_EPS = 1e-6

# ----------------------------------------------------------------------------------------------
# Geometry: camera, parts, analytic ray-primitive intersections
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """A pinhole camera.

    Attributes:
        position: camera centre (x, y, z) in metres; world y is up, the floor is y = 0.
        target: the point the optical axis passes through.
        fov_deg: vertical (= horizontal, square images) field of view in degrees.
    """

    position: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float = 55.0

    def rays(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Ray origin (3,) and directions (size*size, 3), row-major from the top-left pixel.

        Directions have unit component along the optical axis, so a hit at ray parameter t lies at
        z-depth t.
        """
        pos = np.asarray(self.position, np.float64)
        fwd = np.asarray(self.target, np.float64) - pos
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        focal = 0.5 * size / np.tan(np.radians(self.fov_deg) / 2)
        px = (np.arange(size) + 0.5 - size / 2) / focal
        x, y = np.meshgrid(px, -px)
        dirs = fwd + x.reshape(-1, 1) * right + y.reshape(-1, 1) * up
        return pos, dirs


@dataclass
class Material:
    """Surface appearance and thermal behaviour of a part.

    Attributes:
        kind: physical material (wood, fabric, metal, plastic, ceramic, glass, screen, bulb, ...).
        color: base albedo, RGB in [0, 1].
        color2: second colour used by `bands` / `spines` textures.
        texture: plain, grain, fabric, bands, spines, screen, tiles, planks or noise.
        tex_scale: texture frequency multiplier.
        specular: Blinn-Phong specular strength; shininess: its exponent.
        emission: emitted RGB radiance (screens, bulbs).
        temp_offset: surface temperature above the local room temperature, degrees C.
        emissivity: thermal emissivity in [0, 1]; low for bare metal (reads the reflected room).
    """

    kind: str
    color: np.ndarray
    color2: np.ndarray = field(default_factory=lambda: np.ones(3))
    texture: str = "plain"
    tex_scale: float = 1.0
    specular: float = 0.05
    shininess: float = 16.0
    emission: np.ndarray = field(default_factory=lambda: np.zeros(3))
    temp_offset: float = 0.0
    emissivity: float = 0.92


@dataclass
class Part:
    """One primitive in world space.

    Attributes:
        kind: `box` (size = half extents), `frustum` (size = (bottom radius, top radius, half height),
            axis = local y; a cylinder when the radii match, a cone when the top radius is ~0),
            `ellipsoid` (size = radii) or `plane` (local y = normal, infinite).
        center: (3,) world position of the part's local origin (its centre).
        rot: (3, 3) world-from-local rotation.
        size: (3,) kind-specific size, metres.
        material: surface material.
        instance: 0 = floor / wall / support, 1 = the labelled object, 2.. = distractors.
    """

    kind: str
    center: np.ndarray
    rot: np.ndarray
    size: np.ndarray
    material: Material
    instance: int = 1


@dataclass
class Light:
    """A directional light plus hemispheric ambient light."""

    direction: np.ndarray
    intensity: float = 1.0
    color: np.ndarray = field(default_factory=lambda: np.ones(3))
    ambient: float = 0.35


@dataclass
class Scene:
    """Parts, light and the room's thermal state (ambient temperature, gradient, reflected temperature)."""

    parts: list[Part]
    light: Light
    ambient_c: float = 21.0
    gradient_c_per_m: float = 0.6
    reflected_c: float = 20.0


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """World-from-local rotation: roll about z, then pitch about x, then yaw about the vertical y axis."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def _stack(parts: list[Part]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.stack([p.center for p in parts]), np.stack([p.rot for p in parts]),
            np.stack([p.size for p in parts]))


def _to_local(o: np.ndarray, d: np.ndarray, parts: list[Part]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray origins / directions in every part's local frame: (P, N|1, 3) each, plus sizes (P, 3)."""
    c, r, s = _stack(parts)
    o = o.reshape(-1, 3)
    return (o[None] - c[:, None]) @ r, d[None] @ r, s


def _hit_boxes(o: np.ndarray, d: np.ndarray, parts: list[Part]) -> np.ndarray:
    """Slab method in each box's local frame; returns t (P, N), inf where missed."""
    ol, dl, h = _to_local(o, d, parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1 = (-h[:, None] - ol) * inv
        t2 = (h[:, None] - ol) * inv
    tnear = np.fmin(t1, t2).max(axis=2)
    tfar = np.fmax(t1, t2).min(axis=2)
    return np.where((tnear <= tfar) & (tnear > _EPS), tnear, np.inf)


def _hit_frustums(o: np.ndarray, d: np.ndarray, parts: list[Part]) -> np.ndarray:
    """Truncated cones about local y: side x^2 + z^2 = (a + b y)^2 for |y| <= h, plus the two caps."""
    ol, dl, s = _to_local(o, d, parts)
    r0, r1, hh = (s[:, i, None] for i in range(3))
    a, b = (r0 + r1) / 2, (r1 - r0) / (2 * hh)
    ox, oy, oz = ol[..., 0], ol[..., 1], ol[..., 2]
    dx, dy, dz = dl[..., 0], dl[..., 1], dl[..., 2]
    ry = a + b * oy
    qa = dx * dx + dz * dz - b * b * dy * dy
    qb = 2 * (ox * dx + oz * dz - ry * b * dy)
    qc = ox * ox + oz * oz - ry * ry
    disc = qb * qb - 4 * qa * qc
    best = np.full(np.broadcast(qa, qc).shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        for sign in (-1.0, 1.0):
            t = (-qb + sign * sq) / (2 * qa)
            y = oy + t * dy
            ok = (t > _EPS) & (np.abs(y) <= hh) & (a + b * y >= 0)
            best = np.where(ok & (t < best), t, best)
        for yc, rc in ((-hh, r0), (hh, r1)):
            t = (yc - oy) / dy
            x, z = ox + t * dx, oz + t * dz
            ok = (t > _EPS) & (x * x + z * z <= rc * rc)
            best = np.where(ok & (t < best), t, best)
    return best


def _hit_ellipsoids(o: np.ndarray, d: np.ndarray, parts: list[Part]) -> np.ndarray:
    """Ellipsoids: scale the local frame to a unit sphere, then solve the quadratic (nearest root)."""
    ol, dl, s = _to_local(o, d, parts)
    ol, dl = ol / s[:, None], dl / s[:, None]
    qa = (dl * dl).sum(-1)
    qb = 2 * (ol * dl).sum(-1)
    qc = (ol * ol).sum(-1) - 1
    disc = qb * qb - 4 * qa * qc
    with np.errstate(invalid="ignore"):
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        t0, t1 = (-qb - sq) / (2 * qa), (-qb + sq) / (2 * qa)
    t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
    return np.where(np.isnan(t), np.inf, t)


def _hit_planes(o: np.ndarray, d: np.ndarray, parts: list[Part]) -> np.ndarray:
    """Infinite one-sided planes (local y = normal): hit only from the front."""
    c, r, _ = _stack(parts)
    n = r[:, :, 1]
    dn = d @ n.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (((c * n).sum(-1))[None] - o.reshape(-1, 3) @ n.T) / dn
    return np.where((dn < 0) & (t > _EPS), t, np.inf).T


_HIT: dict[str, Callable[[np.ndarray, np.ndarray, list[Part]], np.ndarray]] = {
    "box": _hit_boxes, "frustum": _hit_frustums, "ellipsoid": _hit_ellipsoids, "plane": _hit_planes,
}


def cast_rays(o: np.ndarray, d: np.ndarray, parts: list[Part]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of every ray: t (N,) (inf = miss) and the index of the part hit (N,) (-1 = miss)."""
    n = d.shape[0]
    t_best, idx = np.full(n, np.inf), np.full(n, -1)
    for kind, hit in _HIT.items():
        members = [i for i, p in enumerate(parts) if p.kind == kind]
        if not members:
            continue
        t = hit(o, d, [parts[i] for i in members])
        k = t.argmin(axis=0)
        tk = t[k, np.arange(n)]
        closer = tk < t_best
        t_best = np.where(closer, tk, t_best)
        idx = np.where(closer, np.asarray(members)[k], idx)
    return t_best, idx


def _local_normal(part: Part, q: np.ndarray) -> np.ndarray:
    """Outward normals (M, 3) in the part's local frame at local surface points q (M, 3)."""
    s = part.size
    if part.kind == "box":
        axis = np.abs(q / s).argmax(axis=1)
        n = np.zeros_like(q)
        n[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
        return n
    if part.kind == "frustum":
        r0, r1, hh = s
        b = (r1 - r0) / (2 * hh)
        side = np.stack([q[:, 0], -b * ((r0 + r1) / 2 + b * q[:, 1]), q[:, 2]], axis=1)
        cap = np.abs(q[:, 1]) >= hh * (1 - 1e-6)
        side[cap] = np.stack([np.zeros(cap.sum()), np.sign(q[cap, 1]), np.zeros(cap.sum())], axis=1)
        return side
    if part.kind == "ellipsoid":
        return q / s**2
    return np.tile([0.0, 1.0, 0.0], (len(q), 1))


# ----------------------------------------------------------------------------------------------
# Materials and classes: palettes and parametric assemblies
# ----------------------------------------------------------------------------------------------

_PALETTES: dict[str, list[tuple[float, float, float]]] = {
    "wood": [(0.72, 0.53, 0.33), (0.45, 0.28, 0.16), (0.83, 0.70, 0.50), (0.58, 0.38, 0.22), (0.30, 0.19, 0.12)],
    "fabric": [(0.55, 0.55, 0.58), (0.80, 0.74, 0.62), (0.22, 0.30, 0.50), (0.30, 0.45, 0.32), (0.55, 0.20, 0.18),
               (0.35, 0.30, 0.28), (0.85, 0.85, 0.82)],
    "metal": [(0.62, 0.64, 0.66), (0.35, 0.37, 0.40), (0.15, 0.15, 0.16), (0.80, 0.80, 0.78)],
    "plastic": [(0.90, 0.90, 0.88), (0.12, 0.12, 0.13), (0.20, 0.45, 0.75), (0.25, 0.60, 0.30), (0.85, 0.25, 0.20)],
    "ceramic": [(0.95, 0.95, 0.93), (0.95, 0.95, 0.93), (0.20, 0.40, 0.70), (0.80, 0.25, 0.25), (0.95, 0.80, 0.30),
                (0.15, 0.15, 0.15)],
    "glass": [(0.15, 0.45, 0.20), (0.40, 0.22, 0.08), (0.75, 0.85, 0.85)],
    "paper": [(0.70, 0.15, 0.15), (0.15, 0.30, 0.60), (0.90, 0.85, 0.70), (0.20, 0.50, 0.30), (0.85, 0.60, 0.20)],
    "bezel": [(0.05, 0.05, 0.06), (0.12, 0.12, 0.13), (0.75, 0.75, 0.76)],
    "shade": [(0.95, 0.92, 0.82), (0.90, 0.85, 0.70), (0.85, 0.85, 0.85), (0.25, 0.25, 0.27)],
    "cone": [(0.95, 0.40, 0.05), (1.00, 0.50, 0.10)],
    "bedding": [(0.92, 0.92, 0.90), (0.75, 0.82, 0.92), (0.90, 0.80, 0.80), (0.85, 0.85, 0.75)],
}
# class -> {material kind -> colours}: each class's own look, overriding the generic palettes above
_CLASS_PALETTES: dict[str, dict[str, list[tuple[float, float, float]]]] = {
    "chair": {"wood": [(0.58, 0.38, 0.22), (0.40, 0.26, 0.15)], "fabric": [(0.55, 0.20, 0.18), (0.22, 0.30, 0.50)]},
    "stool": {"wood": [(0.83, 0.70, 0.50), (0.72, 0.53, 0.33)], "metal": [(0.80, 0.80, 0.78)]},
    "table": {"wood": [(0.83, 0.70, 0.50), (0.72, 0.53, 0.33), (0.90, 0.85, 0.75)]},
    "desk": {"wood": [(0.92, 0.92, 0.90), (0.15, 0.15, 0.16), (0.60, 0.60, 0.62), (0.78, 0.65, 0.45)]},
    "bench": {"wood": [(0.45, 0.28, 0.16), (0.20, 0.35, 0.20), (0.30, 0.19, 0.12)], "metal": [(0.15, 0.15, 0.16)]},
    "sofa": {"fabric": [(0.55, 0.20, 0.18), (0.22, 0.30, 0.50), (0.30, 0.45, 0.32), (0.45, 0.35, 0.30)]},
    "bookshelf": {"wood": [(0.30, 0.19, 0.12), (0.45, 0.28, 0.16), (0.90, 0.90, 0.88)]},
    "cabinet": {"metal": [(0.62, 0.64, 0.66), (0.35, 0.37, 0.40)], "wood": [(0.90, 0.90, 0.88)]},
    "trash can": {"metal": [(0.80, 0.80, 0.78), (0.62, 0.64, 0.66)],
                  "plastic": [(0.20, 0.45, 0.75), (0.25, 0.60, 0.30), (0.12, 0.12, 0.13)]},
}
# kind -> (texture, specular, shininess, emissivity)
_SURFACE: dict[str, tuple[str, float, float, float]] = {
    "wood": ("grain", 0.08, 12.0, 0.90), "fabric": ("fabric", 0.0, 4.0, 0.95), "metal": ("plain", 0.45, 40.0, 0.25),
    "plastic": ("plain", 0.20, 24.0, 0.92), "ceramic": ("plain", 0.35, 48.0, 0.92),
    "glass": ("plain", 0.70, 80.0, 0.90), "paper": ("spines", 0.02, 6.0, 0.93), "bezel": ("plain", 0.25, 32.0, 0.92),
    "screen": ("screen", 0.30, 64.0, 0.95), "bulb": ("plain", 0.10, 8.0, 0.90), "shade": ("fabric", 0.0, 4.0, 0.92),
    "cone": ("bands", 0.15, 16.0, 0.93), "bedding": ("fabric", 0.0, 4.0, 0.95), "liquid": ("plain", 0.5, 60.0, 0.96),
}
_RANDOM_TEXTURES = ("plain", "plain", "grain", "fabric", "noise", "bands")
# probability that an active-IR depth sensor returns no depth (transparent, dark glossy, specular surfaces)
_IR_DROPOUT: dict[str, float] = {"glass": 0.6, "screen": 0.4, "liquid": 0.3, "bezel": 0.1, "metal": 0.08}


def make_material(kind: str, rng: np.random.Generator, random_look: bool = False, temp_offset: float | None = None,
                  palette: list[tuple[float, float, float]] | None = None) -> Material:
    """A material of a physical `kind` with a colour from `palette` or the kind's palette (or a random look).

    `random_look` replaces colour and texture with random ones but keeps the thermal behaviour, so
    only the RGB appearance stops following the class.
    """
    texture, specular, shininess, emissivity = _SURFACE[kind]
    pal = palette or _PALETTES.get(kind, [(0.5, 0.5, 0.5)])
    color = np.asarray(pal[rng.integers(len(pal))], np.float64) * rng.uniform(0.85, 1.1)
    color2 = np.array([0.95, 0.95, 0.95]) if kind == "cone" else np.asarray(pal[rng.integers(len(pal))]) * 0.9
    emission = np.zeros(3)
    offset = 0.0
    if kind == "screen":
        color = np.array([0.02, 0.02, 0.03])
        emission = rng.uniform(0.25, 0.7) * np.array(rng.choice([[0.6, 0.8, 1.0], [1.0, 1.0, 1.0], [0.9, 0.9, 0.7]]))
        color2 = rng.uniform(0.2, 1.0, 3)
        offset = rng.uniform(10.0, 20.0)
    elif kind == "bulb":
        color = np.array([1.0, 0.95, 0.8])
        emission = np.array([1.0, 0.9, 0.65]) * rng.uniform(0.6, 1.0)
        offset = rng.uniform(40.0, 70.0)
    elif kind == "shade":
        emission = color * rng.uniform(0.1, 0.35)
        offset = rng.uniform(6.0, 18.0)
    elif kind == "bezel":
        offset = rng.uniform(3.0, 8.0)
    elif kind == "glass" and rng.random() < 0.15:
        color = np.array([0.80, 0.88, 0.90])
    if random_look and kind not in ("screen", "bulb"):
        color, color2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
        texture = _RANDOM_TEXTURES[rng.integers(len(_RANDOM_TEXTURES))]
        specular = rng.uniform(0.0, 0.5)
    offset += rng.normal(0.0, 0.4)  # thermal mass: furniture lags the room air a little
    return Material(kind=kind, color=np.clip(color, 0, 1), color2=np.clip(color2, 0, 1), texture=texture,
                    tex_scale=rng.uniform(0.7, 1.4), specular=specular, shininess=shininess, emission=emission,
                    temp_offset=offset if temp_offset is None else temp_offset, emissivity=emissivity)


class Assembly:
    """Parts of one object in its local frame (base on y = 0, centred on x = z = 0, front towards +z).

    Args:
        rng: the sample's random generator.
        jitter: `shape_jitter`; `j(x, rel)` draws x * (1 + jitter * rel * U(-1, 1)).
        random_look: use random appearances (see `make_material`).
        palettes: the class's colours per material kind (overrides the generic palettes).
    """

    def __init__(self, rng: np.random.Generator, jitter: float, random_look: bool,
                 palettes: dict[str, list[tuple[float, float, float]]] | None = None) -> None:
        self.rng, self.jitter, self.random_look, self.palettes = rng, jitter, random_look, palettes or {}
        self.parts: list[Part] = []

    def j(self, x: float, rel: float = 0.15) -> float:
        """x scaled by a random within-class factor."""
        return float(x * (1 + self.jitter * rel * self.rng.uniform(-1, 1)))

    def u(self, lo: float, hi: float) -> float:
        """A uniform draw (not scaled by the jitter): discrete-ish layout choices."""
        return float(self.rng.uniform(lo, hi))

    def p(self, prob: float) -> bool:
        """True with probability `prob`."""
        return bool(self.rng.random() < prob)

    def mat(self, kind: str, temp_offset: float | None = None) -> Material:
        """A material of `kind` from the class palette (or a random look)."""
        return make_material(kind, self.rng, self.random_look, temp_offset, self.palettes.get(kind))

    def box(self, c: tuple[float, float, float], half: tuple[float, float, float], m: Material,
            rot: np.ndarray | None = None) -> None:
        """Add a box centred at `c` with half extents `half`."""
        self._add("box", c, half, m, rot)

    def cyl(self, c: tuple[float, float, float], r: float, hh: float, m: Material, r_top: float | None = None,
            rot: np.ndarray | None = None) -> None:
        """Add a vertical cylinder (or a frustum / cone when `r_top` differs) centred at `c`."""
        self._add("frustum", c, (r, r if r_top is None else r_top, hh), m, rot)

    def ell(self, c: tuple[float, float, float], radii: tuple[float, float, float], m: Material) -> None:
        """Add an ellipsoid (a sphere when the radii match)."""
        self._add("ellipsoid", c, radii, m, None)

    def _add(self, kind: str, c: Any, size: Any, m: Material, rot: np.ndarray | None) -> None:
        self.parts.append(Part(kind, np.asarray(c, np.float64), np.eye(3) if rot is None else rot,
                               np.asarray(size, np.float64), m))


def _legs(a: Assembly, w: float, d: float, h: float, t: float, m: Material, round_: bool, inset: float = 0.0) -> None:
    for sx in (-1, 1):
        for sz in (-1, 1):
            c = (sx * (w / 2 - t / 2 - inset), h / 2, sz * (d / 2 - t / 2 - inset))
            if round_:
                a.cyl(c, t / 2, h / 2, m)
            else:
                a.box(c, (t / 2, h / 2, t / 2), m)


def _chair(a: Assembly) -> None:
    w, d, h, th = a.j(0.46), a.j(0.44), a.j(0.46, 0.1), a.j(0.04, 0.3)
    frame = a.mat("wood") if a.p(0.75) else a.mat("metal")
    _legs(a, w, d, h - th, a.j(0.035, 0.3), frame, a.p(0.4))
    a.box((0, h - th / 2, 0), (w / 2, th / 2, d / 2), frame if a.p(0.6) else a.mat("fabric"))
    bh, bt = a.j(0.42, 0.25), 0.025
    if a.p(0.5):  # solid back panel
        a.box((0, h + bh / 2, -d / 2 + bt), (w / 2, bh / 2, bt), frame, rotation(pitch=-a.u(0.0, 0.15)))
    else:  # two posts and rails
        for sx in (-1, 1):
            a.box((sx * (w / 2 - 0.02), h + bh / 2, -d / 2 + 0.02), (0.02, bh / 2, 0.02), frame)
        for k in range(a.rng.integers(1, 4)):
            a.box((0, h + bh * (1 - 0.3 * k) - 0.04, -d / 2 + 0.02), (w / 2, 0.04, 0.015), frame)


def _stool(a: Assembly) -> None:
    h, th, r = a.j(0.62, 0.3), a.j(0.04, 0.3), a.j(0.18, 0.2)
    m = a.mat("wood") if a.p(0.7) else a.mat("metal")
    if a.p(0.7):
        a.cyl((0, h - th / 2, 0), r, th / 2, m if a.p(0.7) else a.mat("fabric"))
    else:
        a.box((0, h - th / 2, 0), (r * 0.9, th / 2, r * 0.9), m)
    n = 3 if a.p(0.4) else 4
    for k in range(n):
        ang = 2 * np.pi * k / n + np.pi / 4
        x, z = 0.75 * r * np.cos(ang), 0.75 * r * np.sin(ang)
        a.cyl((x, (h - th) / 2, z), a.j(0.018, 0.3), (h - th) / 2, m)
    if a.p(0.6):  # footrest bars
        fy = (h - th) * a.u(0.25, 0.4)
        a.box((0, fy, 0.53 * r), (0.53 * r, 0.01, 0.01), m)
        a.box((0, fy, -0.53 * r), (0.53 * r, 0.01, 0.01), m)


def _table(a: Assembly) -> None:
    h, th = a.j(0.74, 0.08), a.j(0.04, 0.3)
    top = a.mat("wood")
    if a.p(0.3):  # round pedestal table
        r = a.j(0.5, 0.25)
        a.cyl((0, h - th / 2, 0), r, th / 2, top)
        a.cyl((0, (h - th) / 2, 0), a.j(0.05, 0.3), (h - th) / 2, top)
        a.cyl((0, 0.02, 0), r * a.u(0.4, 0.6), 0.02, top)
        return
    w, d = a.j(1.2, 0.25), a.j(0.8, 0.2)
    legs = top if a.p(0.7) else a.mat("metal")
    a.box((0, h - th / 2, 0), (w / 2, th / 2, d / 2), top)
    _legs(a, w, d, h - th, a.j(0.06, 0.3), legs, a.p(0.3), inset=a.u(0.0, 0.08))
    if a.p(0.5):  # apron
        a.box((0, h - th - 0.05, 0), (w / 2 - 0.08, 0.05, d / 2 - 0.08), top)


def _desk(a: Assembly) -> None:
    w, d, h, th = a.j(1.3, 0.15), a.j(0.65, 0.1), a.j(0.74, 0.05), a.j(0.035, 0.3)
    top, body = a.mat("wood"), a.mat("wood") if a.p(0.6) else a.mat("metal")
    a.box((0, h - th / 2, 0), (w / 2, th / 2, d / 2), top)
    side = 1 if a.p(0.5) else -1
    pw = a.j(0.42, 0.15)
    px = side * (w / 2 - pw / 2)
    a.box((px, (h - th) / 2, 0), (pw / 2, (h - th) / 2, d / 2 - 0.01), body)
    handle = a.mat("metal")
    n_drawers = int(a.rng.integers(2, 5))
    for k in range(n_drawers):
        y = (h - th) * (k + 0.5) / n_drawers
        a.box((px, y, d / 2), (pw * 0.2, 0.008, 0.012), handle)
    if a.p(0.5):  # panel leg on the other side
        a.box((-side * (w / 2 - 0.02), (h - th) / 2, 0), (0.02, (h - th) / 2, d / 2 - 0.01), body)
    else:
        for sz in (-1, 1):
            a.box((-side * (w / 2 - 0.03), (h - th) / 2, sz * (d / 2 - 0.03)), (0.025, (h - th) / 2, 0.025), body)
    if a.p(0.7):  # modesty panel
        ph = a.j(0.35, 0.3)
        a.box((0, h - th - ph / 2, -d / 2 + 0.03), (w / 2 - 0.03, ph / 2, 0.01), body)


def _bench(a: Assembly) -> None:
    w, d, h, th = a.j(1.4, 0.25), a.j(0.38, 0.15), a.j(0.45, 0.1), a.j(0.04, 0.3)
    m = a.mat("wood") if a.p(0.8) else a.mat("metal")
    if a.p(0.5):  # slats
        n = int(a.rng.integers(3, 5))
        for k in range(n):
            z = -d / 2 + d * (k + 0.5) / n
            a.box((0, h - th / 2, z), (w / 2, th / 2, d / (2 * n) * 0.8), m)
    else:
        a.box((0, h - th / 2, 0), (w / 2, th / 2, d / 2), m)
    legs = m if a.p(0.7) else a.mat("metal")
    if a.p(0.5):  # end panels
        for sx in (-1, 1):
            a.box((sx * (w / 2 - 0.1), (h - th) / 2, 0), (0.025, (h - th) / 2, d / 2 - 0.02), legs)
    else:
        _legs(a, w, d, h - th, a.j(0.045, 0.3), legs, a.p(0.3), inset=0.05)
    if a.p(0.35):  # park-bench back
        for sx in (-1, 1):
            a.box((sx * (w / 2 - 0.1), h + 0.2, -d / 2 + 0.02), (0.025, 0.2, 0.02), legs)
        for k in range(2):
            a.box((0, h + 0.15 + 0.15 * k, -d / 2 + 0.01), (w / 2, 0.05, 0.012), m)


def _bed(a: Assembly) -> None:
    length, w, fh, mh = a.j(2.0, 0.08), a.j(1.5, 0.25), a.j(0.3, 0.3), a.j(0.22, 0.25)
    frame = a.mat("wood") if a.p(0.7) else a.mat("fabric")
    a.box((0, fh / 2, 0), (w / 2, fh / 2, length / 2), frame)
    a.box((0, fh + mh / 2, 0), (w / 2 - 0.02, mh / 2, length / 2 - 0.02), a.mat("bedding"))
    hb = a.j(1.0, 0.25)
    a.box((0, hb / 2, -length / 2 - 0.03), (w / 2 + 0.03, hb / 2, 0.04), frame)
    if a.p(0.4):
        a.box((0, (fh + mh) * 0.6, length / 2 + 0.03), (w / 2 + 0.03, (fh + mh) * 0.6, 0.03), frame)
    top = fh + mh
    n_pillows = 1 if w < 1.2 or a.p(0.3) else 2
    pill = a.mat("bedding")
    for k in range(n_pillows):
        x = 0 if n_pillows == 1 else (k - 0.5) * w / 2
        a.ell((x, top + 0.05, -length / 2 + 0.3), (min(0.3, w / (2 * n_pillows) - 0.05), 0.08, 0.17), pill)
    if a.p(0.8):  # blanket
        a.box((0, top + 0.02, length * 0.12), (w / 2 + 0.01, 0.04, length * 0.37), a.mat("bedding"))


def _sofa(a: Assembly) -> None:
    w, d, sh, bh, ah = a.j(1.9, 0.2), a.j(0.88, 0.1), a.j(0.44, 0.1), a.j(0.85, 0.1), a.j(0.62, 0.1)
    m = a.mat("fabric")
    leg_h = a.u(0.04, 0.12)
    aw = a.j(0.18, 0.3) if a.p(0.85) else 0.0
    a.box((0, leg_h + (sh - 0.12 - leg_h) / 2, 0), (w / 2, (sh - 0.12 - leg_h) / 2, d / 2), m)
    n = int(a.rng.integers(1, 4))
    cw = (w - 2 * aw) / n
    for k in range(n):
        a.box((-w / 2 + aw + cw * (k + 0.5), sh - 0.06, 0.08), (cw / 2 - 0.01, 0.06, d / 2 - 0.08), m)
    a.box((0, (bh + leg_h) / 2, -d / 2 + 0.1), (w / 2, (bh - leg_h) / 2, 0.1), m)
    if aw:
        for sx in (-1, 1):
            a.box((sx * (w / 2 - aw / 2), (ah + leg_h) / 2, 0), (aw / 2, (ah - leg_h) / 2, d / 2), m)
    legs = a.mat("wood")
    for sx in (-1, 1):
        for sz in (-1, 1):
            a.cyl((sx * (w / 2 - 0.06), leg_h / 2, sz * (d / 2 - 0.06)), 0.025, leg_h / 2, legs)


def _bookshelf(a: Assembly) -> None:
    w, h, d, t = a.j(0.8, 0.3), a.j(1.8, 0.25), a.j(0.3, 0.15), a.j(0.02, 0.3)
    m = a.mat("wood") if a.p(0.8) else a.mat("metal")
    for sx in (-1, 1):
        a.box((sx * (w / 2 - t / 2), h / 2, 0), (t / 2, h / 2, d / 2), m)
    a.box((0, h - t / 2, 0), (w / 2, t / 2, d / 2), m)
    a.box((0, h / 2, -d / 2 + 0.005), (w / 2, h / 2, 0.005), m)
    n = int(a.rng.integers(3, 6))
    gap = (h - t) / n
    for k in range(n):
        y0 = k * gap
        a.box((0, y0 + t / 2, 0), (w / 2 - t, t / 2, d / 2), m)
        x = -w / 2 + t
        while x < w / 2 - t - 0.05:  # runs of books of one height, spines as texture
            run = min(a.u(0.1, 0.45), w / 2 - t - x)
            if a.p(0.8):
                bh = gap * a.u(0.55, 0.9)
                a.box((x + run / 2, y0 + t + bh / 2, 0.01), (run / 2, bh / 2, d / 2 - 0.03), a.mat("paper"))
            x += run + a.u(0.0, 0.08)


def _cabinet(a: Assembly) -> None:
    w, h, d = a.j(0.8, 0.3), a.j(1.0, 0.35), a.j(0.45, 0.15)
    m = a.mat("metal") if a.p(0.65) else a.mat("wood")
    base = a.u(0.0, 0.1)
    a.box((0, base + (h - base) / 2, 0), (w / 2, (h - base) / 2, d / 2), m)
    if base > 0:
        _legs(a, w, d, base, 0.04, a.mat("metal"), a.p(0.5), inset=0.03)
    handle = a.mat("metal")
    if a.p(0.5):  # doors
        n = 1 if w < 0.6 else 2
        for k in range(n):
            x0 = -w / 2 + w * k / n
            a.box((x0 + w / (2 * n), base + (h - base) / 2, d / 2 + 0.008), (w / (2 * n) - 0.008, (h - base) / 2 - 0.01,
                                                                            0.008), m)
            hx = x0 + (w / n - 0.05 if k == 0 else 0.05)
            a.box((hx, base + (h - base) * 0.6, d / 2 + 0.025), (0.008, 0.06, 0.01), handle)
    else:  # drawers
        n = int(a.rng.integers(2, 5))
        dh = (h - base) / n
        for k in range(n):
            y = base + dh * (k + 0.5)
            a.box((0, y, d / 2 + 0.008), (w / 2 - 0.01, dh / 2 - 0.008, 0.008), m)
            a.box((0, y + dh * 0.2, d / 2 + 0.025), (w * 0.15, 0.008, 0.01), handle)


def _lamp(a: Assembly) -> None:
    base_m, pole_m = a.mat("metal"), a.mat("metal")
    if a.p(0.55):  # floor lamp
        ph = a.j(1.5, 0.15)
        a.cyl((0, 0.015, 0), a.j(0.15, 0.2), 0.015, base_m)
        a.cyl((0, ph / 2, 0), 0.012, ph / 2, pole_m)
        r0, r1, sh = a.j(0.2, 0.2), a.j(0.13, 0.2), a.j(0.13, 0.2)
        a.cyl((0, ph, 0), r0, sh, a.mat("shade"), r_top=r1)
        a.ell((0, ph - sh - 0.02, 0), (0.04, 0.05, 0.04), a.mat("bulb"))
        return
    a.cyl((0, 0.012, 0), a.j(0.08, 0.2), 0.012, base_m)  # desk lamp: base, two arm links, shade
    l1, l2 = a.j(0.3, 0.2), a.j(0.28, 0.2)
    p1, p2 = a.u(-0.3, 0.3), a.u(0.8, 1.4)
    a.box((0, 0.02 + l1 / 2 * np.cos(p1), l1 / 2 * np.sin(p1)), (0.01, l1 / 2, 0.01), pole_m, rotation(pitch=p1))
    ex, ey = l1 * np.sin(p1), 0.02 + l1 * np.cos(p1)
    a.box((0, ey + l2 / 2 * np.cos(p2), ex + l2 / 2 * np.sin(p2)), (0.01, l2 / 2, 0.01), pole_m, rotation(pitch=p2))
    hz, hy = ex + l2 * np.sin(p2), ey + l2 * np.cos(p2)
    sr = a.j(0.08, 0.2)
    a.cyl((0, hy - 0.05, hz), sr, 0.06, a.mat("shade"), r_top=sr * 0.35, rot=rotation(pitch=a.u(0.0, 0.6)))
    a.ell((0, hy - 0.1, hz), (0.03, 0.03, 0.03), a.mat("bulb"))


def _monitor(a: Assembly) -> None:
    w = a.j(0.55, 0.25)
    h, t, lift = w * a.u(0.55, 0.68), a.j(0.035, 0.3), a.j(0.12, 0.3)
    bezel = a.mat("bezel")
    a.box((0, 0.01, 0), (a.j(0.12, 0.3), 0.01, a.j(0.09, 0.3)), bezel) if a.p(0.6) else \
        a.cyl((0, 0.01, 0), a.j(0.11, 0.3), 0.01, bezel)
    a.box((0, (lift + h / 2) / 2, -0.02), (0.025, (lift + h / 2) / 2, 0.012), bezel)
    tilt = rotation(pitch=-a.u(0.0, 0.15))
    a.box((0, lift + h / 2, 0), (w / 2, h / 2, t / 2), bezel, tilt)
    b = a.j(0.015, 0.5)
    a.box((0, lift + h / 2, t / 2 + 0.002), (w / 2 - b, h / 2 - b, 0.002), a.mat("screen"), tilt)
    if a.p(0.5):  # back housing
        a.box((0, lift + h / 2, -t), (w / 3, h / 3, t / 2), bezel, tilt)


def _mug(a: Assembly) -> None:
    r, h = a.j(0.042, 0.15), a.j(0.1, 0.15)
    hot = a.p(0.6)
    temp = a.u(22.0, 42.0) if hot else 0.0
    m = a.mat("ceramic", temp_offset=temp * 0.8)
    a.cyl((0, h / 2, 0), r, h / 2, m, r_top=r * a.u(1.0, 1.12))
    if a.p(0.8):
        a.cyl((0, h + 0.001, 0), r * 0.88, 0.001, a.mat("liquid", temp_offset=temp))
    hs, ht = a.j(0.035, 0.2), 0.01
    a.box((r + hs / 2, h * 0.78, 0), (hs / 2, ht, ht / 2), m)
    a.box((r + hs / 2, h * 0.22, 0), (hs / 2, ht, ht / 2), m)
    a.box((r + hs - ht / 2, h / 2, 0), (ht / 2, h * 0.28 + ht, ht / 2), m)


def _bottle(a: Assembly) -> None:
    r, bh = a.j(0.035, 0.2), a.j(0.17, 0.25)
    cold = -a.u(8.0, 14.0) if a.p(0.7) else 0.0
    g = a.mat("glass", temp_offset=cold)
    nr, sh, nh = a.j(0.013, 0.2), a.j(0.05, 0.4), a.j(0.06, 0.4)
    a.cyl((0, bh / 2, 0), r, bh / 2, g)
    a.cyl((0, bh + sh / 2, 0), r, sh / 2, g, r_top=nr)
    a.cyl((0, bh + sh + nh / 2, 0), nr, nh / 2, g)
    a.cyl((0, bh + sh + nh + 0.01, 0), nr * 1.15, 0.01, a.mat("metal" if a.p(0.5) else "plastic", temp_offset=cold))


def _traffic_cone(a: Assembly) -> None:
    h, r0, r1, b = a.j(0.55, 0.3), a.j(0.14, 0.2), a.j(0.025, 0.3), a.j(0.19, 0.2)
    m = a.mat("cone")
    a.box((0, 0.015, 0), (b, 0.015, b), a.mat("cone") if a.p(0.7) else a.mat("plastic"))
    a.cyl((0, 0.03 + h / 2, 0), r0, h / 2, m, r_top=r1)


def _trash_can(a: Assembly) -> None:
    r, h = a.j(0.17, 0.25), a.j(0.6, 0.25)
    m = a.mat("metal") if a.p(0.6) else a.mat("plastic")
    a.cyl((0, h / 2, 0), r, h / 2, m, r_top=r * a.u(1.0, 1.2) if a.p(0.6) else r)
    rt = r * 1.05
    if a.p(0.5):  # lid: flat or dome
        if a.p(0.5):
            a.cyl((0, h + 0.015, 0), rt * 1.05, 0.015, m)
        else:
            a.ell((0, h, 0), (rt, rt * a.u(0.3, 0.6), rt), m)
    else:  # open rim, dark bag inside
        a.cyl((0, h + 0.005, 0), rt * 0.95, 0.005, a.mat("plastic"))
    if a.p(0.4):  # pedal
        a.box((0, 0.03, r + 0.03), (0.05, 0.01, 0.04), a.mat("metal"))


CLASS_BUILDERS: dict[str, Callable[[Assembly], None]] = {
    "chair": _chair, "stool": _stool, "table": _table, "desk": _desk, "bench": _bench, "bed": _bed,
    "sofa": _sofa, "bookshelf": _bookshelf, "cabinet": _cabinet, "lamp": _lamp, "monitor": _monitor,
    "mug": _mug, "bottle": _bottle, "traffic cone": _traffic_cone, "trash can": _trash_can,
}
"""Class name -> builder that adds the class's parts to an `Assembly`."""

TABLETOP_CLASSES: frozenset[str] = frozenset({"mug", "bottle", "monitor"})
"""Classes usually seen on a desk / counter: rendered on a support surface most of the time."""


# ----------------------------------------------------------------------------------------------
# Textures, shading and thermal emission
# ----------------------------------------------------------------------------------------------


def _albedo(m: Material, q: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (M, 3) and emission (M, 3) of material `m` at local points q (M, 3) of a part of `size`."""
    base = np.broadcast_to(m.color, q.shape).copy()
    f = m.tex_scale
    if m.texture == "grain":  # rings across the longest axis, wobbling along it
        ax = int(np.argmax(size))
        o1, o2 = (ax + 1) % 3, (ax + 2) % 3
        v = 60 * f * (q[:, o1] + 0.5 * q[:, o2]) + 2.0 * np.sin(7 * f * q[:, ax])
        base *= (0.82 + 0.22 * (0.5 + 0.5 * np.sin(v)) ** 3)[:, None]
    elif m.texture in ("fabric", "noise"):
        k = 180 * f if m.texture == "fabric" else 25 * f
        v = np.sin(k * q[:, 0] + 3 * np.sin(k * 0.37 * q[:, 2])) * np.sin(k * q[:, 1] + 2 * np.sin(k * 0.29 * q[:, 0]))
        base *= (0.9 + (0.08 if m.texture == "fabric" else 0.25) * v)[:, None]
    elif m.texture == "bands":  # traffic-cone reflective bands at fixed heights of the part
        yn = (q[:, 1] / size[2] + 1) / 2 if len(size) == 3 and size[2] > 0 else q[:, 1]
        white = ((yn > 0.35) & (yn < 0.5)) | ((yn > 0.62) & (yn < 0.72))
        base[white] = m.color2
    elif m.texture == "spines":  # a run of book spines: colour changes every few centimetres
        cell = np.floor(q[:, 0] / (0.035 * f) + 100)
        h = np.sin(cell * 12.9898) * 43758.5453
        h -= np.floor(h)
        base = np.where((h < 0.5)[:, None], m.color, m.color2) * (0.7 + 0.5 * h)[:, None]
    emission = np.broadcast_to(m.emission, q.shape).copy()
    if m.texture == "screen":  # screen content: a few soft coloured windows
        g = 0.5 + 0.5 * np.sin(9 * f * q[:, 0] + 2) * np.sin(11 * f * q[:, 1] + 1)
        emission = emission * (0.5 + 0.5 * g)[:, None] + 0.15 * m.color2 * g[:, None]
    return base, emission


def _background_albedo(m: Material, q: np.ndarray) -> np.ndarray:
    """Floor / wall albedo at plane-local points: planks, tiles or the generic textures."""
    base = np.broadcast_to(m.color, q.shape).copy()
    f = m.tex_scale
    if m.texture == "planks":
        row = np.floor(q[:, 2] / (0.18 * f))
        shade = 0.85 + 0.15 * np.sin(row * 7.3) + 0.08 * np.sin(40 * q[:, 0] / f + row)
        gap = np.abs(q[:, 2] / (0.18 * f) - np.round(q[:, 2] / (0.18 * f))) < 0.04
        return base * np.where(gap, 0.55, shade)[:, None]
    if m.texture == "tiles":
        u, v = q[:, 0] / (0.4 * f), q[:, 2] / (0.4 * f)
        chk = (np.floor(u) + np.floor(v)) % 2
        base = np.where(chk[:, None] > 0, m.color, m.color2)
        grout = (np.abs(u - np.round(u)) < 0.03) | (np.abs(v - np.round(v)) < 0.03)
        return np.where(grout[:, None], 0.5 * base, base)
    return _albedo(m, q, np.ones(3))[0]


@dataclass
class RenderOutput:
    """Noise-free render of one scene, all (H, W[, 3]) numpy arrays.

    Attributes:
        rgb: shaded colour in [0, 1].
        depth: z-depth along the optical axis, metres (inf where no surface).
        thermal: apparent (radiometric) temperature in degrees C before sensor effects.
        instance: part instance id (0 background, 1 labelled object, 2.. distractors), -1 = nothing hit.
        cos_view: |cos| of the angle between the surface normal and the viewing ray (grazing -> 0).
        ir_dropout: per-pixel probability that a depth sensor gets no return from the material.
    """

    rgb: np.ndarray
    depth: np.ndarray
    thermal: np.ndarray
    instance: np.ndarray
    cos_view: np.ndarray
    ir_dropout: np.ndarray


def render_scene(scene: Scene, camera: Camera, size: int) -> RenderOutput:
    """Ray-cast a scene: nearest analytic hits, normals, textures, shadows, shading and thermal emission.

    Args:
        scene: parts (planes included), light and room temperature.
        camera: the pinhole camera.
        size: image height = width in pixels.

    Returns:
        The noise-free RenderOutput; its depth is exact geometry (see `add_depth_noise` for the sensor).
    """
    o, d = camera.rays(size)
    n_px = d.shape[0]
    t, idx = cast_rays(o, d, scene.parts)
    hit = idx >= 0
    p = o + d * np.where(hit, t, 0.0)[:, None]
    normal, albedo, emission = np.zeros((n_px, 3)), np.zeros((n_px, 3)), np.zeros((n_px, 3))
    temp_offset, emissivity, instance = np.zeros(n_px), np.ones(n_px), np.full(n_px, -1)
    ir_dropout = np.zeros(n_px)
    for k in np.unique(idx[hit]):
        part = scene.parts[k]
        sel = idx == k
        q = (p[sel] - part.center) @ part.rot
        normal[sel] = _local_normal(part, q) @ part.rot.T
        if part.kind == "plane":
            albedo[sel] = _background_albedo(part.material, q)
        else:
            albedo[sel], emission[sel] = _albedo(part.material, q, part.size)
        temp_offset[sel] = part.material.temp_offset
        emissivity[sel] = part.material.emissivity
        instance[sel] = part.instance
        ir_dropout[sel] = _IR_DROPOUT.get(part.material.kind, 0.0)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    view = -d / np.linalg.norm(d, axis=1, keepdims=True)
    cos_v = (normal * view).sum(1)
    normal = np.where(cos_v[:, None] < 0, -normal, normal)  # shade the side facing the camera
    light = scene.light
    ldir = light.direction / np.linalg.norm(light.direction)
    lambert = np.clip(normal @ ldir, 0, None)
    shadow = np.ones(n_px)
    casters = [pt for pt in scene.parts if pt.kind != "plane"]
    lit = hit & (lambert > 0)
    if casters and lit.any():
        ts, _ = cast_rays(p[lit] + normal[lit] * 1e-4, np.tile(ldir, (int(lit.sum()), 1)), casters)
        shadow[lit] = np.where(np.isfinite(ts), 0.0, 1.0)
    spec_k = np.array([scene.parts[k].material.specular if k >= 0 else 0.0 for k in range(-1, len(scene.parts))])
    shin = np.array([scene.parts[k].material.shininess if k >= 0 else 1.0 for k in range(-1, len(scene.parts))])
    half = ldir + view
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = spec_k[idx + 1] * np.clip((normal * half).sum(1), 0, None) ** shin[idx + 1] * (lambert > 0)
    direct = light.intensity * shadow * lambert
    ambient = light.ambient * (0.75 + 0.25 * normal[:, 1])
    rgb = albedo * (ambient[:, None] + direct[:, None] * light.color) + (spec * light.intensity * shadow)[:, None] \
        * light.color + emission
    rgb = np.where(hit[:, None], rgb, 0.0)
    # thermal: surface at local room temperature + material offset + heating by absorbed light, seen
    # through its emissivity (which drops towards grazing angles); the rest is the reflected room
    absorbed = direct * (1 - albedo.mean(1))
    surface = scene.ambient_c + scene.gradient_c_per_m * p[:, 1] + temp_offset + 1.2 * absorbed
    emissivity = emissivity * (1 - 0.5 * (1 - np.abs(cos_v)) ** 3)
    thermal = emissivity * surface + (1 - emissivity) * scene.reflected_c
    thermal = np.where(hit, thermal, scene.ambient_c)
    shape = (size, size)
    return RenderOutput(rgb=np.clip(rgb, 0, 1).reshape(size, size, 3), depth=np.where(hit, t, np.inf).reshape(shape),
                        thermal=thermal.reshape(shape), instance=instance.reshape(shape),
                        cos_view=np.abs(cos_v).reshape(shape), ir_dropout=ir_dropout.reshape(shape))


# ----------------------------------------------------------------------------------------------
# Sensor models: depth (Kinect-like) and thermal (microbolometer-like)
# ----------------------------------------------------------------------------------------------


def depth_sigma(z: np.ndarray) -> np.ndarray:
    """Kinect-like axial noise standard deviation in metres: 0.0012 + 0.0019 (z - 0.4)^2."""
    return 0.0012 + 0.0019 * (z - 0.4) ** 2


def add_depth_noise(depth: np.ndarray, cos_view: np.ndarray, rng: np.random.Generator, level: float,
                    depth_range: tuple[float, float], ir_dropout: np.ndarray | None = None,
                    focal_px: float | None = None) -> np.ndarray:
    """Sensor depth from exact z-depth: noise, dropouts (discontinuities, grazing angles, hard materials,
    projector shadows), range limits.

    Args:
        depth: exact z-depth (H, W), metres (inf = no surface).
        cos_view: |cos| between normal and viewing ray (H, W).
        ir_dropout: optional per-pixel no-return probability of the material (glass, screens, ...).
        focal_px: focal length in pixels; when given, the structured-light projector (7.5 cm to the right
            of the camera) casts invalid shadow bands left of foreground edges.
        rng: the sample's generator (all draws happen regardless of `level`, for stable streams).
        level: `depth_noise`; 0 gives exact depth (only the range limits apply).
        depth_range: (min, max) valid range in metres; outside reads 0.

    Returns:
        float32 (H, W) depth in metres, 0 = invalid.
    """
    finite = np.isfinite(depth)
    z = np.where(finite, depth, 0.0)
    noisy = z + level * depth_sigma(z) * rng.standard_normal(z.shape)
    # inverse depth is linear in pixel coordinates on any plane, so its second difference is ~0 on
    # smooth surfaces (floor included) and large at occlusion boundaries
    w = np.pad(np.where(finite, 1.0 / np.maximum(z, 1e-6), 0.0), 1, mode="reflect", reflect_type="odd")
    curv = np.maximum(np.abs(2 * w[1:-1, 1:-1] - w[1:-1, :-2] - w[1:-1, 2:]),
                      np.abs(2 * w[1:-1, 1:-1] - w[:-2, 1:-1] - w[2:, 1:-1]))
    edge = curv > 0.02 * w[1:-1, 1:-1]
    u = rng.random(z.shape)
    material = 0.0 if ir_dropout is None else np.clip(level * ir_dropout, 0, 1)
    drop = (edge & (u < 0.35 * level)) | ((cos_view < 0.15) & (u < 0.6 * level)) | (u < 0.002 * level) \
        | (rng.random(z.shape) < material)
    if focal_px and level > 0:  # a pixel is shadowed when a pixel k to its right has disparity > its own + k
        disp = np.where(finite, focal_px * 0.075 / np.maximum(z, 1e-6), 0.0)
        for k in range(1, int(np.ceil(disp.max() - disp.min())) + 1):
            drop[:, :-k] |= disp[:, k:] - disp[:, :-k] > k
    out = np.where(finite & ~drop & (z >= depth_range[0]) & (z <= depth_range[1]), noisy, 0.0)
    return out.astype(np.float32)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, r, mode="edge")
    rows = sum(k[i] * pad[:, i:i + x.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * rows[i:i + x.shape[0]] for i in range(2 * r + 1))


def add_thermal_noise(thermal: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    """Thermal camera model: optics blur, white noise (NETD), column fixed-pattern noise, offset drift.

    Args:
        thermal: apparent temperature (H, W) in degrees C.
        rng: the sample's generator.
        level: `thermal_noise`; 0 returns the input unchanged.

    Returns:
        float32 (H, W) degrees C.
    """
    h, w = thermal.shape
    white, column, drift = rng.standard_normal((h, w)), rng.standard_normal((1, w)), rng.uniform(-1, 1)
    blurred = _gaussian_blur(thermal, level * 0.8 * h / 64)
    return (blurred + level * (0.12 * white + 0.06 * column + 0.5 * drift)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Scene sampling: object, support, distractors, occluder, room, light, camera
# ----------------------------------------------------------------------------------------------


def _place(parts: list[Part], pos: np.ndarray, yaw: float, scale: float, instance: int) -> list[Part]:
    r = rotation(yaw)
    return [dataclasses.replace(pt, center=pos + r @ (scale * pt.center), rot=r @ pt.rot, size=scale * pt.size,
                                instance=instance) for pt in parts]


def _bounds(parts: list[Part]) -> tuple[np.ndarray, np.ndarray]:
    """Conservative world bounding box (lo, hi) of non-plane parts."""
    ext = [np.linalg.norm(pt.size) if pt.kind != "box" else np.abs(pt.rot) @ pt.size for pt in parts]
    lo = np.min([pt.center - e for pt, e in zip(parts, ext)], axis=0)
    hi = np.max([pt.center + e for pt, e in zip(parts, ext)], axis=0)
    return lo, hi


def _distractor(rng: np.random.Generator, x: float, z: float, y0: float, scale: float, instance: int) -> list[Part]:
    """A random primitive (or a small stack of two) standing at (x, y0, z): clutter, never a class."""
    kind = ("box", "frustum", "ellipsoid", "stack")[rng.integers(4)]
    m = make_material(("plastic", "paper", "metal", "fabric", "wood")[rng.integers(5)], rng, random_look=rng.random()
                      < 0.5)
    s = scale * rng.uniform(0.5, 1.5, 3)
    rot = rotation(rng.uniform(0, np.pi))
    if kind == "box":
        return [Part("box", np.array([x, y0 + s[1], z]), rot, s, m, instance)]
    if kind == "frustum":
        size = np.array([s[0], s[0] * rng.uniform(0.0, 1.2), s[1]])
        return [Part("frustum", np.array([x, y0 + s[1], z]), rot, size, m, instance)]
    if kind == "ellipsoid":
        return [Part("ellipsoid", np.array([x, y0 + s[1], z]), rot, s, m, instance)]
    top = s * rng.uniform(0.4, 0.8, 3)
    m2 = make_material("plastic", rng, random_look=True)
    return [Part("box", np.array([x, y0 + s[1], z]), rot, s, m, instance),
            Part("box", np.array([x, y0 + 2 * s[1] + top[1], z]), rotation(rng.uniform(0, np.pi)), top, m2, instance)]


def _room(rng: np.random.Generator, wall_z: float) -> list[Part]:
    """Floor (planks, tiles, carpet or concrete) and a painted back wall, both a little off air temperature."""
    kind = ("planks", "tiles", "fabric", "plain")[rng.integers(4)]
    palette = {"planks": [(0.62, 0.50, 0.38), (0.35, 0.25, 0.18)], "tiles": [(0.85, 0.85, 0.82), (0.4, 0.4, 0.42)],
               "fabric": [(0.45, 0.45, 0.47), (0.30, 0.32, 0.38), (0.6, 0.58, 0.52)],
               "plain": [(0.55, 0.55, 0.53), (0.35, 0.35, 0.35)]}[kind]
    c1 = np.asarray(palette[rng.integers(len(palette))])
    c2 = c1 * rng.uniform(0.75, 0.95)
    floor = Material("floor", c1 * rng.uniform(0.8, 1.1), c2, kind, rng.uniform(0.7, 1.4), specular=0.05,
                     emissivity=0.94, temp_offset=rng.uniform(-1.5, 0.0))
    wall_colors = [(0.90, 0.90, 0.87), (0.85, 0.82, 0.74), (0.70, 0.78, 0.82), (0.75, 0.82, 0.72), (0.6, 0.6, 0.62)]
    wall = Material("wall", np.asarray(wall_colors[rng.integers(len(wall_colors))]) * rng.uniform(0.8, 1.05),
                    texture="noise" if rng.random() < 0.1 else "plain", tex_scale=rng.uniform(0.5, 1.0),
                    specular=0.0, emissivity=0.93, temp_offset=rng.uniform(-2.0, 1.0))
    return [Part("plane", np.zeros(3), np.eye(3), np.ones(3), floor, 0),
            Part("plane", np.array([0.0, 0.0, wall_z]), rotation(pitch=np.pi / 2), np.ones(3), wall, 0)]


def sample_scene(cfg: BenchmarkConfig, rng: np.random.Generator, label: int) -> tuple[Scene, Camera]:
    """Draw one scene of class `cfg.classes[label]` with all nuisances, and its camera.

    Args:
        cfg: benchmark configuration (difficulty knobs).
        rng: the sample's generator.
        label: class index into `cfg.classes`.

    Returns:
        (scene, camera).
    """
    name = cfg.classes[label]
    asm = Assembly(rng, cfg.shape_jitter, rng.random() < cfg.random_appearance, _CLASS_PALETTES.get(name))
    CLASS_BUILDERS[name](asm)
    on_support = name in TABLETOP_CLASSES and rng.random() < 0.8 or (name == "lamp" and _bounds(asm.parts)[1][1] < 1)
    y0 = float(rng.uniform(0.7, 0.9)) if on_support else 0.0
    scale = float(np.exp(0.08 * cfg.shape_jitter * rng.uniform(-1, 1)))
    yaw = float(rng.uniform(-1, 1) * np.pi * min(1.0, 0.6 * cfg.camera_jitter))
    parts = _place(asm.parts, np.array([rng.uniform(-0.1, 0.1), y0, 0.0]), yaw, scale, 1)
    lag = rng.normal(0.0, 1.0)  # the object as a whole lags the room air (thermal mass)
    for m in {id(pt.material): pt.material for pt in parts}.values():
        m.temp_offset += lag
    lo, hi = _bounds(parts)
    extent = float(max(hi[1] - y0, hi[0] - lo[0], hi[2] - lo[2]))
    radius = float(np.linalg.norm(hi[[0, 2]] - lo[[0, 2]])) / 2
    wall_z = float(lo[2] - rng.uniform(0.1, 0.3 + 1.5 * cfg.camera_jitter) * max(1.0, extent))
    scene_parts = _room(rng, wall_z) + parts
    if rng.random() < 0.5:  # a side wall: the object stands near a corner
        side = rng.choice([-1.0, 1.0])
        wall = dataclasses.replace(scene_parts[1], center=np.array([side * (radius + rng.uniform(0.3, 1.5) * extent),
                                                                    0.0, 0.0]), rot=rotation(roll=side * np.pi / 2))
        scene_parts.append(wall)
    if on_support:
        top = make_material("wood" if rng.random() < 0.6 else "plastic", rng, random_look=rng.random() < 0.3)
        sd = rng.uniform(0.5, 0.8)
        scene_parts.append(Part("box", np.array([0.0, y0 / 2, -0.1]), np.eye(3), np.array([3.0, y0 / 2, sd]), top, 0))
    # camera: framing distance from the object's size, elevation and fov jitter
    fov = float(55 + 10 * cfg.camera_jitter * rng.uniform(-1, 1))
    fill = rng.uniform(0.75, 1.05) * (1 + 0.2 * cfg.camera_jitter * rng.uniform(-1, 1))
    dist = float(np.clip(extent / fill / (2 * np.tan(np.radians(fov) / 2)) + radius, 0.6, 7.0))
    elev = float(np.radians(18 + 12 * cfg.camera_jitter * rng.uniform(-1, 1)))
    azim = float(np.radians(12 * cfg.camera_jitter * rng.uniform(-1, 1)))
    target = np.array([0.0, y0 + 0.45 * (hi[1] - y0), 0.0]) + 0.05 * extent * cfg.camera_jitter * rng.uniform(-1, 1, 3)
    cam_pos = target + dist * np.array([np.sin(azim) * np.cos(elev), np.sin(elev), np.cos(azim) * np.cos(elev)])
    cam_pos[1] = max(cam_pos[1], 0.15)
    # distractors beside / behind the object, never the label's class
    for k in range(int(rng.integers(0, cfg.max_distractors + 1))):
        side = rng.choice([-1.0, 1.0])
        x = side * (radius + rng.uniform(-0.1, 0.5) * extent)
        z = rng.uniform(lo[2] - 0.3 * extent, hi[2])
        scene_parts += _distractor(rng, x, z, y0, 0.15 * extent, 2 + k)
    if rng.random() < cfg.occlusion_prob:  # a foreground occluder partly in front of the object
        f = rng.uniform(0.35, 0.6)
        xz = target + f * (cam_pos - target)
        lateral = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.7) * radius * (1 - f)
        right = np.array([np.cos(azim), 0.0, -np.sin(azim)])
        pos = xz + lateral * right
        occ = _distractor(rng, float(pos[0]), float(pos[2]), y0, 0.3 * extent * (1 - f), 2 + cfg.max_distractors)
        scene_parts += [pt for pt in occ if np.linalg.norm(pt.center - cam_pos) > 1.5 * np.linalg.norm(pt.size)]
    lj = cfg.light_jitter
    l_az, l_el = np.radians(60 * lj * rng.uniform(-1, 1)), np.radians(50 + 25 * lj * rng.uniform(-1, 1))
    warmth = rng.uniform(-1, 1) * lj
    light = Light(direction=np.array([np.sin(l_az) * np.cos(l_el), np.sin(l_el), np.cos(l_az) * np.cos(l_el)]),
                  intensity=float(0.9 + 0.35 * lj * rng.uniform(-1, 1)),
                  color=np.array([1.0 + 0.08 * warmth, 1.0, 1.0 - 0.15 * warmth]),
                  ambient=float(0.35 + 0.12 * lj * rng.uniform(-1, 1)))
    ambient_c = float(21.0 + 1.5 * rng.uniform(-1, 1))
    scene = Scene(scene_parts, light, ambient_c=ambient_c, gradient_c_per_m=float(rng.uniform(0.3, 1.0)),
                  reflected_c=ambient_c + float(rng.uniform(-3.0, 1.5)))
    return scene, Camera(tuple(cam_pos), tuple(target), fov)


# ----------------------------------------------------------------------------------------------
# One sample, and the benchmark on disk
# ----------------------------------------------------------------------------------------------


def sample_rng(cfg: BenchmarkConfig, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: a function of (cfg.seed, split, index) only."""
    return np.random.default_rng([cfg.seed, SPLITS.index(split), index, RENDERER_VERSION])


def informative_size(cfg: BenchmarkConfig, split: str) -> int:
    """Number of labelled samples of a split: `per_class[split] * len(classes)`, labels interleaved."""
    return cfg.per_class[split] * len(cfg.classes)


def uninformative_size(cfg: BenchmarkConfig, split: str) -> int:
    """Number of uninformative frames of a split: only `adapt` has them, `u = round(s n / (1 - s))` for the
    share `s = cfg.uninformative` of the split and its `n` labelled samples (so they are the share `s` of it)."""
    if split != "adapt" or cfg.uninformative <= 0:
        return 0
    return int(round(cfg.uninformative * informative_size(cfg, split) / (1 - cfg.uninformative)))


def split_size(cfg: BenchmarkConfig, split: str) -> int:
    """Number of samples of a split: the labelled ones (labels interleaved), then the uninformative frames."""
    return informative_size(cfg, split) + uninformative_size(cfg, split)


def render_sample(cfg: BenchmarkConfig, split: str, index: int) -> Sample:
    """Render sample `index` of `split` (label = index % number of classes).

    Returns:
        Sample with float32 tensors in `edgevl_lib.data` units: rgb 3xHxW in [0, 1], and for adapt / eval
        depth 1xHxW metres (0 = invalid) and thermal 1xHxW degrees C.
    """
    return _sample_from_arrays(_render_arrays(cfg, split, index))


def _render_arrays(cfg: BenchmarkConfig, split: str, index: int) -> tuple[dict[str, np.ndarray], int | None, str]:
    if index >= informative_size(cfg, split):
        arrays, _ = render_uninformative(cfg, index)
        return arrays, None, f"{split}_{index:05d}"
    rng = sample_rng(cfg, split, index)
    label = index % len(cfg.classes)
    scene, camera = sample_scene(cfg, rng, label)
    out = render_scene(scene, camera, cfg.image_size)
    rgb = np.clip(out.rgb + cfg.rgb_noise * rng.standard_normal(out.rgb.shape), 0, 1)
    arrays = {RGB: np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)}
    if "depth" in SPLIT_MODALITIES[split]:
        focal = 0.5 * cfg.image_size / np.tan(np.radians(camera.fov_deg) / 2)
        arrays["depth"] = add_depth_noise(out.depth, out.cos_view, rng, cfg.depth_noise, cfg.depth_range,
                                          out.ir_dropout, focal)[None]
        arrays["thermal"] = add_thermal_noise(out.thermal, rng, cfg.thermal_noise)[None]
    return arrays, label, f"{split}_{index:05d}"


# ----------------------------------------------------------------------------------------------
# Uninformative frames: what an edge camera records between the useful ones
# ----------------------------------------------------------------------------------------------

UNINFORMATIVE_KINDS: tuple[str, ...] = ("bare", "covered", "motion_blur", "overexposed", "underexposed")
"""`bare`: wall and floor, no object of any class; `covered`: a hand or cap over the lens; `motion_blur`: a class
scene smeared by camera motion (all modalities, one kernel); `overexposed` / `underexposed`: a class scene whose RGB
is blown out (sunlight also blinds the depth sensor's infrared) / nearly black (depth and thermal still see)."""


def uninformative_rng(cfg: BenchmarkConfig, index: int) -> np.random.Generator:
    """The random stream of uninformative adapt frame `index` (its own stream: labelled samples are unchanged)."""
    return np.random.default_rng([cfg.seed, SPLITS.index("adapt"), index, RENDERER_VERSION, 1])


def _motion_blur(x: np.ndarray, length: int, angle: float) -> np.ndarray:
    """Mean of `length` copies of x (H, W[, C]) shifted along `angle`: a linear motion-blur kernel, edges replicated."""
    h, w = x.shape[:2]
    pad = length
    xp = np.pad(x, [(pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    acc = np.zeros_like(x, dtype=np.float64)
    for k in range(length):
        f = k - (length - 1) / 2
        dy, dx = int(round(f * np.sin(angle))), int(round(f * np.cos(angle)))
        acc += xp[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return acc / length


def _bare_scene(cfg: BenchmarkConfig, rng: np.random.Generator) -> tuple[Scene, Camera]:
    """Wall and floor only (sometimes a corner): the camera looks at a bare surface, no object of any class."""
    wall_z = -float(rng.uniform(0.5, 3.0))
    parts = _room(rng, wall_z)
    if rng.random() < 0.4:
        side = rng.choice([-1.0, 1.0])
        parts.append(dataclasses.replace(parts[1], center=np.array([side * rng.uniform(0.5, 2.0), 0.0, 0.0]),
                                         rot=rotation(roll=side * np.pi / 2)))
    height = float(rng.uniform(0.4, 1.6))
    pos = np.array([rng.uniform(-0.3, 0.3), height, rng.uniform(0.3, 2.0)])
    if rng.random() < 0.5:  # at the wall
        target = np.array([rng.uniform(-0.5, 0.5), height + rng.uniform(-0.3, 0.3), wall_z])
    else:  # down at the floor
        target = pos + np.array([rng.uniform(-0.3, 0.3), -height, -rng.uniform(0.2, 0.8)])
        target[1] = 0.0
    light = Light(direction=np.array([rng.uniform(-0.5, 0.5), 1.0, rng.uniform(0.2, 1.0)]),
                  intensity=float(rng.uniform(0.6, 1.2)), color=np.ones(3), ambient=float(rng.uniform(0.25, 0.45)))
    ambient_c = float(21.0 + 1.5 * rng.uniform(-1, 1))
    scene = Scene(parts, light, ambient_c=ambient_c, gradient_c_per_m=float(rng.uniform(0.3, 1.0)),
                  reflected_c=ambient_c + float(rng.uniform(-3.0, 1.5)))
    return scene, Camera(tuple(pos), tuple(target), float(rng.uniform(50, 65)))


def render_uninformative(cfg: BenchmarkConfig, index: int) -> tuple[dict[str, np.ndarray], str]:
    """Render uninformative adapt frame `index`, paired across rgb / depth / thermal as one sensor rig records it.

    The kind cycles through `UNINFORMATIVE_KINDS` (index order); everything else comes from `uninformative_rng`.

    Returns:
        (arrays in the units of `render_sample`, kind).
    """
    rng = uninformative_rng(cfg, index)
    kind = UNINFORMATIVE_KINDS[(index - informative_size(cfg, "adapt")) % len(UNINFORMATIVE_KINDS)]
    size = cfg.image_size
    if kind == "covered":  # skin or a cap a few cm from the lens: dark, no depth return, warm and uniform
        tone = np.array([0.45, 0.30, 0.24]) if rng.random() < 0.6 else np.array([0.12, 0.12, 0.13])
        yy, xx = np.mgrid[0:size, 0:size] / size
        shade = rng.uniform(0.03, 0.25) * (0.6 + 0.4 * (np.cos(rng.uniform(0, 2 * np.pi)) * xx + yy))
        rgb = np.clip(tone * shade[..., None] + 0.01 * rng.standard_normal((size, size, 3)), 0, 1)
        # no return through the cover, a few close speckles where infrared leaks in at the rim
        rim = np.minimum(np.minimum(yy, 1 - yy), np.minimum(xx, 1 - xx)) < 0.12
        depth = np.where(rim & (rng.random((size, size)) < 0.08), rng.uniform(0.4, 0.7, (size, size)), 0.0)
        temp = rng.uniform(30.0, 34.0) if tone[0] > 0.3 else rng.uniform(22.0, 26.0)
        thermal = add_thermal_noise(np.full((size, size), temp) + 0.5 * _gaussian_blur(
            rng.standard_normal((size, size)), size / 8), rng, cfg.thermal_noise)
        return _frame_arrays(rgb, depth, thermal), kind
    if kind == "bare":
        scene, camera = _bare_scene(cfg, rng)
    else:
        scene, camera = sample_scene(cfg, rng, int(rng.integers(len(cfg.classes))))
    out = render_scene(scene, camera, size)
    focal = 0.5 * size / np.tan(np.radians(camera.fov_deg) / 2)
    depth = add_depth_noise(out.depth, out.cos_view, rng, cfg.depth_noise, cfg.depth_range, out.ir_dropout, focal)
    thermal = add_thermal_noise(out.thermal, rng, cfg.thermal_noise)
    rgb = out.rgb
    if kind == "motion_blur":
        length, angle = int(rng.integers(size // 4, size // 2 + 1)), float(rng.uniform(0, np.pi))
        rgb = _motion_blur(rgb, length, angle)
        valid = _motion_blur((depth > 0).astype(np.float64), length, angle)
        depth = np.where(valid > 0.5, _motion_blur(depth, length, angle) / np.maximum(valid, 1e-6), 0.0)
        thermal = _motion_blur(thermal, length, angle)
    elif kind == "overexposed":
        rgb = np.clip(rgb * rng.uniform(8.0, 16.0) + rng.uniform(0.3, 0.6), 0, 1)
        depth = np.where(rng.random(depth.shape) < rng.uniform(0.7, 0.95), 0.0, depth)
    elif kind == "underexposed":
        rgb = np.round(np.clip(rgb * rng.uniform(0.02, 0.06), 0, 1) * 255) / 255
    rgb = np.clip(rgb + cfg.rgb_noise * (3 if kind == "underexposed" else 1) * rng.standard_normal(rgb.shape), 0, 1)
    return _frame_arrays(rgb, depth, thermal), kind


def _frame_arrays(rgb: np.ndarray, depth: np.ndarray, thermal: np.ndarray) -> dict[str, np.ndarray]:
    return {RGB: np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32),
            "depth": np.asarray(depth, dtype=np.float32)[None], "thermal": np.asarray(thermal, dtype=np.float32)[None]}


def uninformative_kinds(cfg: BenchmarkConfig, split: str = "adapt") -> dict[str, str]:
    """{sample id: kind} of a split's uninformative frames (what `build_benchmark` writes to its meta.json)."""
    n = informative_size(cfg, split)
    return {f"{split}_{i:05d}": UNINFORMATIVE_KINDS[(i - n) % len(UNINFORMATIVE_KINDS)]
            for i in range(n, split_size(cfg, split))}


def _sample_from_arrays(item: tuple[dict[str, np.ndarray], int | None, str]) -> Sample:
    arrays, label, sid = item
    return Sample(images={m: torch.from_numpy(a) for m, a in arrays.items()}, label=label, id=sid)


def config_hash(cfg: BenchmarkConfig) -> str:
    """`keys.digest` of everything that changes the rendered data (not the VOLATILE `workers`) and RENDERER_VERSION."""
    return keys.digest({"config": cfg, "renderer_version": RENDERER_VERSION}, length=12)


def benchmark_dir(cfg: BenchmarkConfig, root: Path | None = None) -> Path:
    """Where `build_benchmark` writes: `<root or cache_dir()/benchmark>/embedded-<config hash>`."""
    return Path(root or utils.cache_dir() / "benchmark") / f"embedded-{config_hash(cfg)}"


def is_complete(path: Path) -> bool:
    """True when `path` holds benchmark.json and every split folder (benchmark.json is written last)."""
    return (path / "benchmark.json").is_file() and all((path / s / "labels.csv").is_file() for s in SPLITS)


def build_benchmark(cfg: BenchmarkConfig, root: Path | None = None, force: bool = False) -> Path:
    """Render the three splits once and return the benchmark folder (cached by config hash).

    The folder is built under a temporary name and renamed into place, so an interrupted build never
    looks complete. Rendering uses `cfg.workers` forked processes; output does not depend on it.

    Args:
        cfg: benchmark configuration.
        root: parent folder; default `utils.cache_dir() / "benchmark"`.
        force: re-render even when a complete copy exists.

    Returns:
        `<root>/embedded-<hash>` holding benchmark.json and teacher_pretrain/, adapt/, eval/.
    """
    unknown = [c for c in cfg.classes if c not in CLASS_BUILDERS]
    if unknown:
        raise ValueError(f"the embedded benchmark cannot render classes {unknown}; it knows {list(CLASS_BUILDERS)}")
    out = benchmark_dir(cfg, root)
    if is_complete(out) and not force:
        log.info("embedded benchmark found at %s", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    start = time.perf_counter()
    stats: dict[str, list[tuple[float, float]]] = {"depth": [], "thermal": []}
    pool = multiprocessing.get_context("fork").Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        for split in SPLITS:
            n = split_size(cfg, split)
            render = partial(_render_arrays, cfg, split)
            items = pool.imap(render, range(n), chunksize=8) if pool else map(render, range(n))
            samples = (_collect_stats(_sample_from_arrays(it), stats) for it in items)  # labelled frames only
            write_paired_folder(tmp / split, utils.progress(samples, desc=f"render {split}", total=n), cfg.classes,
                                meta={"benchmark": "embedded", "split": split, "config_hash": config_hash(cfg),
                                      "uninformative": uninformative_kinds(cfg, split)})
        seconds = time.perf_counter() - start
        utils.write_json(tmp / "benchmark.json", {
            "config": to_dict(cfg), "config_hash": config_hash(cfg), "renderer_version": RENDERER_VERSION,
            "class_names": list(cfg.classes), "splits": {s: split_size(cfg, s) for s in SPLITS},
            "uninformative": {s: uninformative_size(cfg, s) for s in SPLITS},
            "split_modalities": {s: list(m) for s, m in SPLIT_MODALITIES.items()},
            "storage_scales": DEFAULT_SCALES, "suggested_ranges": _suggest_ranges(stats),
            "default_ranges": DEFAULT_RANGES, "generation_seconds": round(seconds, 2)})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if pool:
            pool.terminate()
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("embedded benchmark: %d samples in %.1f s -> %s", sum(split_size(cfg, s) for s in SPLITS), seconds, out)
    return out


def _collect_stats(sample: Sample, stats: dict[str, list[tuple[float, float]]]) -> Sample:
    if sample.label is None:  # uninformative frames (a covered lens reads 32 C) do not set the ranges
        return sample
    for m, acc in stats.items():
        if m in sample.images:
            x = sample.images[m].numpy()
            x = x[x > 0] if m == "depth" else x.ravel()
            if x.size:
                acc.append((float(np.percentile(x, 1)), float(np.percentile(x, 99))))
    return sample


def _suggest_ranges(stats: dict[str, list[tuple[float, float]]]) -> dict[str, list[float]]:
    """Encoding ranges covering most frames: 2nd percentile of per-frame lows, 98th of per-frame highs."""
    out = {}
    for m, acc in stats.items():
        if acc:
            lows, highs = np.asarray(acc).T
            out[m] = [round(float(np.percentile(lows, 2)), 2), round(float(np.percentile(highs, 98)), 2)]
    return out


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------


def benchmark_grid(data: Path | str | PairedDataset, n_per_class: int = 1) -> Any:
    """A grid of samples: one row per (class, example), one column per modality.

    Depth uses the 'turbo' colormap over a fixed range and thermal 'inferno' over a fixed range (the
    benchmark's suggested ranges when `data` is a benchmark folder, else DEFAULT_RANGES).

    Args:
        data: a benchmark folder (its eval split is shown), a split folder, or a loaded PairedDataset.
        n_per_class: examples per class.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    ranges = {m: tuple(r) for m, r in DEFAULT_RANGES.items()}
    if not isinstance(data, PairedDataset):
        path = Path(data)
        if (path / "benchmark.json").is_file():
            ranges.update({m: tuple(r) for m, r in json.loads((path / "benchmark.json").read_text())
                           .get("suggested_ranges", {}).items()})
            path = path / "eval"
        data = PairedFolder(path)
    rows = [(c, i) for c in range(len(data.class_names))
            for i in [k for k, lab in enumerate(data.labels) if lab == c][:n_per_class]]
    mods = list(data.modalities)
    fig, axes = plt.subplots(len(rows), len(mods), figsize=(1.6 * len(mods) + 1.2, 1.5 * len(rows)), squeeze=False)
    cmaps = {"depth": "turbo", "thermal": "inferno"}
    for r, (c, i) in enumerate(rows):
        sample = data[i]
        for col, m in enumerate(mods):
            ax = axes[r, col]
            x = sample.images[m]
            if x.shape[0] == 3:
                ax.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy())
            else:
                lo, hi = ranges.get(m, (float(x.min()), float(x.max())))
                img = np.ma.masked_equal(x[0].numpy(), 0) if m == "depth" else x[0].numpy()
                ax.imshow(img, cmap=cmaps.get(m, "gray"), vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(m if m not in ranges else f"{m} [{ranges[m][0]:g}, {ranges[m][1]:g}]", fontsize=8)
            if col == 0:
                ax.set_ylabel(data.class_names[c], fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig
