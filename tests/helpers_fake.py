"""Tiny fakes shared by tests: a random-weight teacher, a 16-image paired folder, and its embedding cache.

    teacher = FakeTeacher()
    dataset = make_paired_folder(tmp_path / "data")          # 16 samples, 16x16, rgb + depth, 4 classes
    cache = make_fake_cache(tmp_path / "cache", dataset, teacher)

Nothing here downloads or needs teachers.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgevl_lib import data
from edgevl_lib.cache import EmbeddingCache, build_embedding_cache

FAKE_CLASSES: tuple[str, ...] = ("chair", "lamp", "mug", "sofa")


class FakeTeacher:
    """Implements the Teacher protocol with a fixed random conv + linear (images) and hashed vectors (texts).

    f(x) = normalise(W · pool4(relu(conv3x3(resize(x))))),  g(t) = normalise(z_t), z_t ~ N(0, I) seeded by sha256(t).
    `calls` counts encode_image calls.
    """

    def __init__(self, id: str = "fake-teacher", embed_dim: int = 16, image_size: int = 24, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.id, self.embed_dim, self.image_size, self.calls = id, embed_dim, image_size, 0
        self.logit_scale = 100.0
        self.weight = torch.randn(8, 3, 3, 3, generator=g) * 0.5
        self.proj = torch.randn(8 * 4 * 4, embed_dim, generator=g)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = F.interpolate(images.float().cpu(), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False)
        h = F.adaptive_avg_pool2d(torch.relu(F.conv2d(x, self.weight, stride=2)), 4).flatten(1)
        return F.normalize(h @ self.proj, dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=-1)


def fake_samples(n: int = 16, size: int = 16, seed: int = 0) -> list[data.Sample]:
    """n random RGB images with a depth map derived from them (metres in [0.5, 6]); label i % 4."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        rgb = torch.rand(3, size, size, generator=g)
        depth = 0.5 + 5.5 * rgb.mean(dim=0, keepdim=True)
        samples.append(data.Sample(images={"rgb": rgb, "depth": depth}, label=i % len(FAKE_CLASSES), id=f"s{i:02d}"))
    return samples


def make_paired_folder(root: str | Path, n: int = 16, size: int = 16, seed: int = 0) -> data.PairedFolder:
    """Write `fake_samples` as a generic paired folder (data.write_paired_folder) and open it."""
    data.write_paired_folder(root, fake_samples(n, size, seed), list(FAKE_CLASSES))
    return data.PairedFolder(root)


def make_fake_cache(out_root: str | Path, dataset: data.PairedDataset, teacher: FakeTeacher | None = None,
                    views: int = 2, seed: int = 0) -> EmbeddingCache:
    """The embedding cache of every image of `dataset` under `teacher` (default FakeTeacher()), K = `views`."""
    return build_embedding_cache(teacher or FakeTeacher(), dataset, list(range(len(dataset))), views=views,
                                 seed=seed, out_root=out_root, batch_size=8)


# ----------------------------------------------------------------------------------------------
# Slowed-down fakes for the SIGKILL tests (test_hardening.py): a child process runs long enough to be killed
# mid-epoch / mid-build, and leaves a tick per unit of work so the parent knows where it is.
# ----------------------------------------------------------------------------------------------


def _tick(tick_file: Path | None) -> None:
    if tick_file is not None:
        with open(tick_file, "ab") as fh:  # one byte per unit of work; the parent reads the file size
            fh.write(b".")


class SlowPairedFolder(data.PairedFolder):
    """A PairedFolder that sleeps `delay` seconds per sample read and appends one byte to `tick_file` after each."""

    def __init__(self, root: str | Path, delay: float = 0.0, tick_file: str | Path | None = None) -> None:
        super().__init__(root)
        self.delay, self.tick_file = delay, Path(tick_file) if tick_file else None

    def load(self, index: int) -> data.Sample:
        time.sleep(self.delay)
        sample = super().load(index)
        _tick(self.tick_file)
        return sample


class SlowFakeTeacher(FakeTeacher):
    """FakeTeacher (same id, same embeddings) that sleeps `delay` seconds per encode_image call and ticks."""

    def __init__(self, delay: float = 0.0, tick_file: str | Path | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay, self.tick_file = delay, Path(tick_file) if tick_file else None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        out = super().encode_image(images)
        _tick(self.tick_file)
        return out
