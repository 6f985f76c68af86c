"""Stored teacher embeddings: views, keys and invalidation, resume, memmap layout, torchrun sharding.

Uses a fake teacher (fixed random conv + linear, L2-normalised) and a tiny procedural dataset whose
depth map is derived from the same pixel blocks as its RGB image, so nothing depends on edgevl_lib.teachers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevl_lib import data
from edgevl_lib.cache import (CacheMismatchError, EmbeddingCache, ViewParams, apply_view, build_embedding_cache,
                              cache_request, sample_view)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
BLOCK = 4  # pixels per side of a constant-colour block


class FakeTeacher:
    """Fixed random conv + linear, L2-normalised; counts calls and can fail at the n-th call."""

    def __init__(self, id: str = "fake-teacher", embed_dim: int = 16, image_size: int = 24, seed: int = 0,
                 fail_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.id, self.embed_dim, self.image_size, self.fail_at, self.calls = id, embed_dim, image_size, fail_at, 0
        self.weight = torch.randn(8, 3, 3, 3, generator=g) * 0.5
        self.proj = torch.randn(8 * 4 * 4, embed_dim, generator=g)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError(f"fake teacher failure at call {self.calls}")
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False)
        h = F.adaptive_avg_pool2d(torch.relu(F.conv2d(x, self.weight, stride=2)), 4).flatten(1)
        return F.normalize(h @ self.proj, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:  # unused by the cache
        raise NotImplementedError


class ToyDataset(data.PairedDataset):
    """RGB made of BLOCK x BLOCK constant blocks of random colour; depth = a distinct value per block."""

    modalities = ("rgb", "depth")
    class_names = ["a", "b"]
    name = "toy"

    def __init__(self, n: int = 10, hw: tuple[int, int] = (20, 28), seed: int = 0, bump: int | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        bh, bw = hw[0] // BLOCK, hw[1] // BLOCK
        self.items = []
        for i in range(n):
            colours = torch.rand(3, bh, bw, generator=g)
            depth = 0.5 + torch.arange(bh * bw, dtype=torch.float32).reshape(1, bh, bw) * 0.1 + i
            rgb = colours.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)
            if bump == i:
                rgb = rgb.clone()
                rgb[0, 0, 0] = 1.0 - rgb[0, 0, 0]
            self.items.append({"rgb": rgb, "depth": depth.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)})
            self.ids.append(f"s{i:03d}")
            self.labels.append(i % 2)

    def load(self, index: int) -> data.Sample:
        return data.Sample(images=dict(self.items[index]), label=self.labels[index], id=self.ids[index])


def build(tmp: Path, teacher: FakeTeacher | None = None, dataset: ToyDataset | None = None, views: int = 3,
          batch_size: int = 4) -> EmbeddingCache:
    return build_embedding_cache(teacher or FakeTeacher(), dataset or ToyDataset(), list(range(10)), views=views,
                                 seed=7, out_root=tmp, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------


def test_sample_view_is_deterministic_identity_first_and_in_range():
    assert sample_view(3, "x", 0, (20, 28)) == ViewParams.identity(20, 28)
    assert sample_view(3, "x", 1, (20, 28)) == sample_view(3, "x", 1, (20, 28))
    params = [sample_view(3, f"id{i}", k, (60, 80)) for i in range(50) for k in range(1, 5)]
    assert len(set(params)) > 190  # depends on id and view index
    for p in params:
        assert 0 <= p.top and p.top + p.height <= 60 and 0 <= p.left and p.left + p.width <= 80
        assert 0.55 <= p.height * p.width / (60 * 80) <= 1.0
        assert 0.7 <= p.width / p.height <= 1.4
    assert 0.35 < np.mean([p.flip for p in params]) < 0.65
    assert ViewParams.from_array(params[0].to_array()) == params[0]


@pytest.mark.parametrize("out_size", [16, 40])
def test_apply_view_keeps_rgb_and_depth_pixel_aligned(out_size):
    sample = ToyDataset(n=1)[0]
    rgb, depth = sample.images["rgb"], sample.images["depth"]
    colours = rgb[:, ::BLOCK, ::BLOCK].reshape(3, -1).T  # one colour per block
    block_depth = depth[0, ::BLOCK, ::BLOCK].reshape(-1)
    for k in range(6):
        p = sample_view(1, "s000", k, (20, 28))
        view = apply_view({"rgb": rgb, "depth": depth}, p, out_size)
        assert view["rgb"].shape == (3, out_size, out_size) and view["depth"].shape == (1, out_size, out_size)
        assert set(view["depth"].unique().tolist()) <= set(block_depth.tolist())  # values never mixed
        # wherever the bilinear RGB pixel is a pure block colour, depth holds that very block's value
        dist = (view["rgb"].reshape(3, -1).T[:, None, :] - colours[None]).abs().amax(-1)
        pure, block = dist.min(-1)
        pure = pure < 1e-5
        assert pure.float().mean() > 0.3
        assert torch.equal(view["depth"].reshape(-1)[pure], block_depth[block[pure]])
        assert torch.equal(apply_view(depth, p, out_size, modality="depth"), view["depth"])


def test_apply_view_rejects_boxes_outside_the_image_and_mixed_grids():
    with pytest.raises(ValueError, match="does not fit"):
        apply_view(torch.zeros(1, 10, 10), ViewParams(5, 0, 8, 8, False), 4, modality="depth")
    with pytest.raises(ValueError, match="common `size`"):
        apply_view({"rgb": torch.zeros(3, 10, 10), "depth": torch.zeros(1, 5, 5)}, ViewParams(0, 0, 5, 5, False), 4)


# ----------------------------------------------------------------------------------------------
# Building, layout, reproduction
# ----------------------------------------------------------------------------------------------


def test_cache_layout_is_float16_memmap_and_views_reproduce_embeddings(tmp_path):
    teacher = FakeTeacher()
    cache = build(tmp_path, teacher)
    assert isinstance(cache.embeddings, np.memmap) and cache.embeddings.dtype == np.float16
    assert cache.embeddings.shape == (10, 3, 16) and cache.views.shape == (10, 3, 5) and cache.views.dtype == np.int32
    assert len(cache) == 10 and cache.ids == ToyDataset().ids and cache.complete
    assert cache.meta["teacher_id"] == "fake-teacher" and cache.meta["out_size"] == 24
    np.testing.assert_allclose(np.linalg.norm(cache.embeddings.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    ds = ToyDataset()
    for row in (0, 5, 9):
        assert cache.view_params(row, 0) == ViewParams.identity(20, 28)
        for k in range(3):
            p = cache.view_params(row, k)
            assert p == sample_view(7, ds.ids[row], k, (20, 28))
            again = teacher.encode_image(apply_view(ds[row].images["rgb"], p, 24)[None])[0]
            np.testing.assert_allclose(cache.embeddings[row, k].astype(np.float32), again.numpy(), atol=1e-3)


def test_torch_dataset_serves_aligned_views_and_stored_targets(tmp_path):
    cache = build(tmp_path)
    ds = ToyDataset()
    views_ds = cache.torch_dataset(ds, out_size=16, seed=1)
    sample, target = views_ds[3]
    k = views_ds.view_index(3)
    expected = apply_view(ds[3].images, cache.view_params(3, k), 16)
    assert sample.label is None and sample.id == "s003"
    assert torch.equal(sample.images["depth"], expected["depth"]) and torch.equal(sample.images["rgb"], expected["rgb"])
    assert torch.equal(target, torch.from_numpy(cache.embeddings[3, k].astype(np.float32)))
    batch, targets = views_ds.collate([views_ds[i] for i in range(4)])
    assert batch["rgb"].shape == (4, 3, 16, 16) and targets.shape == (4, 16)
    chosen = {views_ds.view_index(i) for i in range(10)}
    assert len(chosen) > 1


# ----------------------------------------------------------------------------------------------
# Invalidation and resume
# ----------------------------------------------------------------------------------------------


def test_cache_is_reused_and_invalidated_by_teacher_id_or_data(tmp_path):
    first = build(tmp_path)
    again_teacher = FakeTeacher()
    again = build(tmp_path, again_teacher)
    assert again.path == first.path and again_teacher.calls == 0  # hit: teacher never runs

    renamed = FakeTeacher(id="fake-teacher-v2")
    other = build(tmp_path, renamed)
    assert other.path != first.path and renamed.calls > 0 and other.meta["teacher_id"] == "fake-teacher-v2"

    changed_teacher = FakeTeacher()
    changed = build(tmp_path, changed_teacher, ToyDataset(bump=4))
    assert changed.path != first.path and changed_teacher.calls > 0
    assert changed.meta["data_sha256"] != first.meta["data_sha256"]

    with pytest.raises(CacheMismatchError, match="teacher_id"):
        EmbeddingCache.open(first.path, cache_request(renamed, ToyDataset(), range(10), views=3, seed=7))
    with pytest.raises(CacheMismatchError, match="data_sha256"):
        EmbeddingCache.open(first.path, cache_request(FakeTeacher(), ToyDataset(bump=4), range(10), views=3, seed=7))
    assert EmbeddingCache.open(first.path, cache_request(FakeTeacher(), ToyDataset(), range(10), 3, 7)).complete


def test_interrupted_build_resumes_to_the_clean_result(tmp_path):
    clean = build(tmp_path / "clean")
    failing = FakeTeacher(fail_at=4)  # 3 views per chunk: chunk 0 (rows 0-3) finishes, call 4 dies
    with pytest.raises(RuntimeError, match="fake teacher failure"):
        build(tmp_path / "resumed", failing)
    (folder,) = [p for p in (tmp_path / "resumed").iterdir() if not p.name.startswith(".")]
    with pytest.raises(CacheMismatchError, match="4 / 10 rows"):
        EmbeddingCache.open(folder)
    partial = EmbeddingCache.open(folder, require_complete=False)
    assert partial.done.tolist() == [1] * 4 + [0] * 6

    resumer = FakeTeacher()
    resumed = build(tmp_path / "resumed", resumer)
    assert resumed.path == folder and resumer.calls == 2 * 3  # only chunks 1 and 2, 3 views each
    assert np.array_equal(resumed.embeddings, clean.embeddings)
    assert np.array_equal(resumed.views, clean.views) and resumed.meta["key"] == clean.meta["key"]


# ----------------------------------------------------------------------------------------------
# torchrun sharding
# ----------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from test_cache import FakeTeacher, ToyDataset
from edgevl_lib.cache import build_embedding_cache

teacher = FakeTeacher()
cache = build_embedding_cache(teacher, ToyDataset(), list(range(10)), views=3, seed=7, out_root=sys.argv[1],
                              batch_size=2)
rank = os.environ["RANK"]
with open(os.path.join(sys.argv[2], f"rank{{rank}}.json"), "w") as fh:
    json.dump({{"calls": teacher.calls, "path": str(cache.path), "world": os.environ["WORLD_SIZE"]}}, fh)
"""


@pytest.mark.slow
def test_torchrun_two_ranks_shard_rows_and_match_single_process(tmp_path):
    script = tmp_path / "ddp_build.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).resolve().parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path / "ddp"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == ["2", "2"]
    assert [r["calls"] for r in ranks] == [3 * 3, 3 * 3]  # 5 rows each = 3 chunks of <= 2, x 3 views
    single = build(tmp_path / "single", batch_size=2)
    sharded = EmbeddingCache.open(ranks[0]["path"])
    assert Path(ranks[1]["path"]) == sharded.path and sharded.path.name == single.path.name
    assert np.array_equal(sharded.views, single.views) and sharded.ids == single.ids
    np.testing.assert_array_equal(sharded.embeddings, single.embeddings)


def test_select_serves_a_subset_of_rows_with_its_own_key(tmp_path):
    cache = build(tmp_path)
    ids = [cache.ids[7], cache.ids[2]]
    sub = cache.select(ids)
    assert sub.ids == ids and len(sub) == 2 and sub.meta["num_images"] == 2 and sub.complete
    np.testing.assert_array_equal(sub.embeddings[0], cache.embeddings[7])
    np.testing.assert_array_equal(sub.views[1], cache.views[2])
    assert sub.meta["key"] != cache.meta["key"] and sub.meta["key"].startswith(str(cache.meta["key"]))
    assert cache.select(ids).meta["key"] == sub.meta["key"]
    ds = ToyDataset()
    sample, target = sub.torch_dataset(ds, out_size=16)[0]
    assert sample.id == cache.ids[7]
    with pytest.raises(KeyError, match="not in this cache"):
        cache.select(["nope"])
