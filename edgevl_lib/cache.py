"""Stored teacher embeddings of augmented views ("dataset reinforcement", MobileCLIP, Vasu et al. CVPR 2024).

For each kept RGB image x_i we store, once, the teacher embeddings of K augmented views together with the
parameters that reproduce each view:

    e_ik = T(view(x_i; a_ik)),    a_ik = (top, left, height, width, flip),   k = 0..K-1

a_i0 is the identity (full image, no flip); a_ik for k > 0 is a random-resized crop (area fraction in
`crop_scale`, aspect ratio in `crop_ratio`, as torchvision's RandomResizedCrop) plus a horizontal flip with
probability 1/2, drawn from a generator seeded by sha256(seed, image id, k), so the parameters depend on
nothing else. Stage 1 then trains without running the teacher: it draws k, applies a_ik to the RGB image
AND to the paired non-RGB image with `apply_view` (same crop, same flip, so pixels stay aligned), and uses
e_ik as the target.

On disk (one folder per cache key, under `utils.cache_dir() / "embeddings"` by default)::

    meta.json          the request (teacher id, K, crop ranges, view size, seed, data hash, N) + key + ids
    embeddings.npy     N x K x D float16   (numpy memmap)
    views.npy          N x K x 5 int32     (top, left, height, width, flip) in source-image pixels
    done.npy           N uint8             1 = row i is complete on disk

The key is sha256 of the request. The data part is a content hash: sha256 over the selected samples, in
order, of (id, RGB shape, RGB float32 bytes as the loader returns them). Hashing decoded tensors rather
than files works for every PairedDataset (files, procedural renders, HDF5) and catches a changed crop,
resize or colour conversion in a loader, at the cost of one read pass over the selected images (cheap next
to K teacher passes). A changed teacher id, view setting or data gives a new key, hence a new folder that is
built from scratch; `EmbeddingCache.open(path, expected=...)` refuses a folder whose meta differs.

Resumable: rows are processed in chunks; after a chunk the embeddings memmap is flushed (msync) and only
then the chunk's bytes in `done.npy` are set and flushed, so a row marked done is always complete on disk.
A build that dies (exception, SIGKILL) and is called again skips finished chunks and ends identical to an
uninterrupted build. The folder itself is created in a temporary folder and renamed into place.

Under `torchrun` (torch.distributed initialised, or RANK / WORLD_SIZE set: a gloo group is started) rank r
fills rows r::world_size of the same memmaps: rank 0 hashes the data and creates the files, a barrier,
then every rank opens them r+.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import data, utils
from .teachers import Teacher

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VIEW_FIELDS = ("top", "left", "height", "width", "flip")
ImagesT = TypeVar("ImagesT", torch.Tensor, dict)


class CacheMismatchError(ValueError):
    """An embedding cache on disk does not match the request (teacher, views, data) or is damaged."""


# ----------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewParams:
    """One augmented view: a crop box in source-image pixels, then a horizontal flip.

    Stored as the int32 row (top, left, height, width, flip).
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool

    @classmethod
    def identity(cls, height: int, width: int) -> "ViewParams":
        """The full image, not flipped (view 0)."""
        return cls(0, 0, height, width, False)

    def to_array(self) -> np.ndarray:
        return np.array([self.top, self.left, self.height, self.width, int(self.flip)], dtype=np.int32)

    @classmethod
    def from_array(cls, row: np.ndarray | Sequence[int]) -> "ViewParams":
        top, left, height, width, flip = (int(v) for v in row)
        return cls(top, left, height, width, bool(flip))


def sample_view(seed: int, image_id: str, view_index: int, image_hw: tuple[int, int],
                crop_scale: tuple[float, float] = (0.6, 1.0),
                crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> ViewParams:
    """Deterministic view parameters a_ik from (seed, image id, view index) alone.

    View 0 is the identity. Otherwise torchvision's RandomResizedCrop rule: up to 10 draws of an area
    A ~ U(crop_scale) * H * W and a ratio r = exp(U(log crop_ratio)), w = round(sqrt(A r)),
    h = round(sqrt(A / r)), accepted when the box fits, at a uniform position; else a centre crop with
    the ratio clamped into range. Then flip ~ Bernoulli(1/2).

    >>> sample_view(0, "img7", 0, (48, 64))
    ViewParams(top=0, left=0, height=48, width=64, flip=False)
    """
    height, width = image_hw
    if view_index == 0:
        return ViewParams.identity(height, width)
    digest = hashlib.sha256(f"{seed}\0{image_id}\0{view_index}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))
    area = height * width
    log_ratio = (math.log(crop_ratio[0]), math.log(crop_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:  # centre crop with the ratio clamped into range
        in_ratio = width / height
        if in_ratio < crop_ratio[0]:
            w, h = width, int(round(width / crop_ratio[0]))
        elif in_ratio > crop_ratio[1]:
            h, w = height, int(round(height * crop_ratio[1]))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return ViewParams(top, left, h, w, bool(rng.random() < 0.5))


def _view_one(x: torch.Tensor, params: ViewParams, out_hw: tuple[int, int], modality: str) -> torch.Tensor:
    batched = x.dim() == 4
    xb = x if batched else x.unsqueeze(0)
    height, width = xb.shape[-2:]
    if params.top < 0 or params.left < 0 or params.top + params.height > height or params.left + params.width > width:
        raise ValueError(f"view box {params} does not fit the {modality} image of size {height}x{width}; view "
                         f"parameters are in pixels of the RGB image they were sampled on, and every modality "
                         f"must share that pixel grid (load the dataset with one `size` for all modalities).")
    crop = xb[..., params.top:params.top + params.height, params.left:params.left + params.width].float()
    if modality == data.RGB:
        out = F.interpolate(crop, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
    else:  # nearest-exact samples the pixel nearest to each output centre: values are never mixed
        out = F.interpolate(crop, size=out_hw, mode="nearest-exact")
    if params.flip:
        out = out.flip(-1)
    return out if batched else out[0]


def apply_view(images: ImagesT, params: ViewParams, out_size: int | tuple[int, int],
               modality: str = data.RGB) -> ImagesT:
    """Crop, resize and flip every modality identically.

    RGB is resized bilinearly (antialiased); every other modality with `nearest-exact`, so depth or
    thermal values are never averaged across an edge and stay aligned with the RGB pixels (the sampled
    source pixel is always one of the pixels the bilinear RGB value is made of).

    Args:
        images: {modality: CxHxW or BxCxHxW} or one tensor (then `modality` says how to resize it).
        params: the view; its box is in pixels of the source image, shared by all modalities.
        out_size: output side (square) or (H, W).
        modality: name of a single-tensor input (`rgb` -> bilinear, else nearest).

    Returns:
        The same structure with every image cropped to the box, resized to out_size and flipped if set.

    >>> apply_view(torch.zeros(1, 8, 8), ViewParams(2, 2, 4, 4, True), 2, modality="depth").shape
    torch.Size([1, 2, 2])
    """
    out_hw = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    if isinstance(images, torch.Tensor):
        return _view_one(images, params, out_hw, modality)
    sizes = {m: tuple(x.shape[-2:]) for m, x in images.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"modalities have different sizes {sizes}; views need one pixel grid. Load the dataset "
                         f"with a common `size` so every modality is resized alike.")
    return {m: _view_one(x, params, out_hw, m) for m, x in images.items()}


# ----------------------------------------------------------------------------------------------
# Requests, keys and the cache folder
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fingerprint:
    sha256: str
    ids: list[str]
    sizes: list[tuple[int, int]]


def _fingerprint(dataset: torch.utils.data.Dataset, indices: Sequence[int]) -> _Fingerprint:
    """sha256 over (id, RGB shape, RGB float32 bytes) of the selected samples, in order."""
    h = hashlib.sha256()
    ids, sizes = [], []
    for i in utils.progress(indices, desc="cache: hashing data", total=len(indices)):
        sample = dataset[int(i)]
        if data.RGB not in sample.images:
            raise data.DataError(f"sample {sample.id!r} has no `{data.RGB}` image; the teacher embeds RGB views.")
        rgb = sample.images[data.RGB].detach().float().contiguous().cpu()
        h.update(sample.id.encode("utf-8") + b"\0" + repr(tuple(rgb.shape)).encode() + b"\0")
        h.update(rgb.numpy().tobytes())
        ids.append(sample.id)
        sizes.append((int(rgb.shape[-2]), int(rgb.shape[-1])))
    if len(set(ids)) != len(ids):
        raise data.DataError("the selected samples repeat an id; pass each dataset index once.")
    return _Fingerprint(h.hexdigest(), ids, sizes)


def _request(teacher: Teacher, fingerprint: _Fingerprint, views: int, seed: int, out_size: int | None,
             crop_scale: tuple[float, float], crop_ratio: tuple[float, float]) -> dict[str, Any]:
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    return {"format": FORMAT_VERSION, "teacher_id": teacher.id, "embed_dim": int(teacher.embed_dim),
            "views": int(views), "crop_scale": [float(v) for v in crop_scale],
            "crop_ratio": [float(v) for v in crop_ratio], "out_size": int(out_size or teacher.image_size),
            "seed": int(seed), "data_sha256": fingerprint.sha256, "num_images": len(fingerprint.ids)}


def cache_key(request: Mapping[str, Any]) -> str:
    """sha256 of the request (teacher id, view config, seed, data hash) as canonical JSON."""
    return hashlib.sha256(json.dumps(dict(request), sort_keys=True).encode()).hexdigest()


def cache_request(teacher: Teacher, dataset: torch.utils.data.Dataset, indices: Sequence[int], views: int,
                  seed: int, out_size: int | None = None, crop_scale: tuple[float, float] = (0.6, 1.0),
                  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> dict[str, Any]:
    """The request a cache must match (hashes the selected RGB images); pass it to `EmbeddingCache.open`."""
    return _request(teacher, _fingerprint(dataset, indices), views, seed, out_size, crop_scale, crop_ratio)


def _folder_name(teacher_id: str, key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", teacher_id).strip("_")[:40]
    return f"{slug}-{key[:16]}"


def _create(path: Path, request: Mapping[str, Any], fingerprint: _Fingerprint) -> None:
    """Write a new, empty cache folder atomically (temporary folder renamed into place)."""
    n, k, d = request["num_images"], request["views"], request["embed_dim"]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float16, shape=(n, k, d)).flush()
        views = np.lib.format.open_memmap(tmp / "views.npy", mode="w+", dtype=np.int32, shape=(n, k, 5))
        for i, (sid, hw) in enumerate(zip(fingerprint.ids, fingerprint.sizes)):
            for j in range(k):
                views[i, j] = sample_view(request["seed"], sid, j, hw, tuple(request["crop_scale"]),
                                          tuple(request["crop_ratio"])).to_array()
        views.flush()
        del views
        np.lib.format.open_memmap(tmp / "done.npy", mode="w+", dtype=np.uint8, shape=(n,)).flush()
        utils.write_json(tmp / "meta.json", {**request, "key": cache_key(request), "ids": fingerprint.ids})
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "meta.json").is_file():  # not a concurrent build that won the rename
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------


class EmbeddingCache:
    """A built (or partially built) cache folder, read through numpy memmaps.

    Attributes:
        path: the folder.
        meta: meta.json (request, key, ids).
        ids: sample ids of the N rows.
        embeddings: N x K x D float16 memmap, e_ik.
        views: N x K x 5 int32 memmap, a_ik as (top, left, height, width, flip).
        done: N uint8 memmap, 1 where row i is complete.
    """

    def __init__(self, path: Path, meta: dict[str, Any], mode: str = "r") -> None:
        self.path = path
        self.meta = meta
        self.ids: list[str] = list(meta["ids"])
        for name in ("embeddings", "views", "done"):
            file = path / f"{name}.npy"
            try:  # never pickle: a .npy holding Python objects is refused
                setattr(self, name, np.load(file, mmap_mode=mode, allow_pickle=False))
            except (OSError, ValueError) as err:
                raise CacheMismatchError(f"{file}: cannot be read ({err}). The cache folder is damaged; delete "
                                         f"{path} and call build_embedding_cache again.") from err
        n, k, d = meta["num_images"], meta["views"], meta["embed_dim"]
        expected = {"embeddings": ((n, k, d), np.float16), "views": ((n, k, 5), np.int32), "done": ((n,), np.uint8)}
        for name, (shape, dtype) in expected.items():
            arr = getattr(self, name)
            if arr.shape != shape or arr.dtype != dtype:
                raise CacheMismatchError(f"{path / (name + '.npy')}: {arr.dtype}{arr.shape}, meta.json says "
                                         f"{np.dtype(dtype)}{shape}. The folder is damaged; delete it and rebuild.")

    @classmethod
    def open(cls, path: str | os.PathLike, expected: Mapping[str, Any] | None = None,
             require_complete: bool = True) -> "EmbeddingCache":
        """Open a cache folder read-only, checking it against a request.

        Args:
            path: the cache folder (holding meta.json).
            expected: a request from `cache_request` (or any subset of meta fields); every field must match.
            require_complete: raise when some rows are not done yet.

        Raises:
            CacheMismatchError: naming the folder and each differing field, when meta differs, files are
                damaged, or the build is incomplete.
        """
        return cls._open(Path(path), expected, require_complete, mode="r")

    @classmethod
    def _open(cls, path: Path, expected: Mapping[str, Any] | None, require_complete: bool,
              mode: str) -> "EmbeddingCache":
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise CacheMismatchError(f"{meta_path}: not found; {path} is not an embedding cache. Build one with "
                                     f"cache.build_embedding_cache(...).")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            missing = {"ids", "num_images", "views", "embed_dim"} - meta.keys()
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            meta, missing = None, {f"valid JSON ({err})"}
        if missing:
            raise CacheMismatchError(f"{meta_path}: not an embedding-cache meta file (missing {sorted(missing)}). The "
                                     f"folder is damaged; delete {path} and call build_embedding_cache again.")
        diff = {k: (meta.get(k), v) for k, v in (expected or {}).items() if meta.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: cache has {a!r}, requested {b!r}" for k, (a, b) in sorted(diff.items()))
            raise CacheMismatchError(f"{path}: embedding cache does not match the request ({lines}). Call "
                                     f"build_embedding_cache with the same arguments to get (or build) the "
                                     f"matching cache.")
        cache = cls(path, meta, mode)
        if require_complete and not cache.complete:
            raise CacheMismatchError(f"{path}: only {int(cache.done.sum())} / {len(cache)} rows are built. Call "
                                     f"build_embedding_cache again to resume.")
        return cache

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def complete(self) -> bool:
        return bool(np.all(self.done == 1))

    def select(self, ids: Sequence[str]) -> "EmbeddingCache":
        """The rows of `ids` (in that order) as an in-memory cache of the same teacher and views: a curated subset
        of a cache built over more images. Its `meta["key"]` is the parent's key plus the digest of `ids`."""
        from .keys import digest

        position = {sid: i for i, sid in enumerate(self.ids)}
        missing = [sid for sid in ids if sid not in position]
        if missing:
            raise KeyError(f"{self.path}: {len(missing)} ids are not in this cache (e.g. {missing[0]!r})")
        rows = np.asarray([position[sid] for sid in ids], dtype=np.int64)
        sub = object.__new__(EmbeddingCache)
        sub.path = self.path
        sub.meta = {**self.meta, "ids": list(ids), "num_images": len(ids),
                    "key": f"{self.meta.get('key')}-{digest(list(ids), length=12)}"}
        sub.ids = list(ids)
        sub.embeddings, sub.views, sub.done = (np.asarray(a[rows]) for a in (self.embeddings, self.views, self.done))
        return sub

    def view_params(self, row: int, view: int) -> ViewParams:
        """a_ik of row `row`, view `view`."""
        return ViewParams.from_array(self.views[row, view])

    def torch_dataset(self, dataset: data.PairedDataset, out_size: int | tuple[int, int] | None = None,
                      seed: int = 0) -> "CachedViewDataset":
        """A torch Dataset of (Sample after a random stored view k, e_ik) for stage 1; see CachedViewDataset."""
        return CachedViewDataset(self, dataset, out_size or self.meta["out_size"], seed)


class CachedViewDataset(torch.utils.data.Dataset):
    """Stage-1 training pairs without the teacher: item j -> (view k of sample j, e_jk as float32 D).

    k is drawn from sha256(seed, epoch, j), so it is deterministic and the same in every DataLoader worker;
    call `set_epoch` each epoch for fresh views. Every modality of the sample gets the same view
    (`apply_view`). The Sample's label is None: stage 1 is label-free. Use `CachedViewDataset.collate` as
    the DataLoader's collate_fn: it returns (data.collate_samples(...), BxD targets).
    """

    def __init__(self, cache: EmbeddingCache, dataset: data.PairedDataset, out_size: int | tuple[int, int],
                 seed: int = 0) -> None:
        self.cache, self.dataset, self.out_size, self.seed, self.epoch = cache, dataset, out_size, seed, 0
        position = {sid: i for i, sid in enumerate(dataset.ids)}
        missing = [sid for sid in cache.ids if sid not in position]
        if missing:
            raise data.DataError(f"{cache.path}: {len(missing)} cached ids (e.g. {missing[0]!r}) are not in the "
                                 f"dataset {getattr(dataset, 'name', type(dataset).__name__)}. Pass the dataset the "
                                 f"cache was built from.")
        self.rows = [position[sid] for sid in cache.ids]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def view_index(self, row: int) -> int:
        digest = hashlib.sha256(f"{self.seed}\0{self.epoch}\0{row}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % self.cache.meta["views"]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> tuple[data.Sample, torch.Tensor]:
        k = self.view_index(row)
        sample = self.dataset[self.rows[row]]
        images = apply_view(sample.images, self.cache.view_params(row, k), self.out_size)
        target = torch.from_numpy(np.asarray(self.cache.embeddings[row, k], dtype=np.float32))
        return data.Sample(images=images, label=None, id=sample.id), target

    @staticmethod
    def collate(batch: Sequence[tuple[data.Sample, torch.Tensor]]) -> tuple[dict[str, Any], torch.Tensor]:
        samples, targets = zip(*batch)
        return data.collate_samples(samples), torch.stack(targets)


# ----------------------------------------------------------------------------------------------
# Building (single process or torchrun)
# ----------------------------------------------------------------------------------------------


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts a gloo group when torchrun's env is set and none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def build_embedding_cache(teacher: Teacher, dataset: torch.utils.data.Dataset, indices: Sequence[int], views: int,
                          seed: int, out_root: str | os.PathLike | None = None, batch_size: int = 64,
                          out_size: int | None = None, crop_scale: tuple[float, float] = (0.6, 1.0),
                          crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> EmbeddingCache:
    """Get the cache of e_ik = T(view(x_i; a_ik)) for the selected images, building or resuming it as needed.

    Args:
        teacher: the teacher (only `id`, `embed_dim`, `image_size`, `encode_image` are used).
        dataset: a PairedDataset (or Subset); its Samples must hold `rgb`.
        indices: dataset indices of the images to store (e.g. `CurationResult.kept`), in row order.
        views: K views per image (view 0 = the full image).
        seed: seed of the view parameters.
        out_root: parent folder; default `utils.cache_dir() / "embeddings"`.
        batch_size: images per teacher call (one call per view k and chunk).
        out_size: side of the view images given to the teacher; default `teacher.image_size`.
        crop_scale: area range of the random-resized crop.
        crop_ratio: aspect-ratio range of the random-resized crop.

    Returns:
        The complete cache, opened read-only. Under torchrun every rank gets it after a final barrier.
    """
    rank, world = _distributed()
    fingerprint = [_fingerprint(dataset, indices) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(fingerprint, src=0)
    request = _request(teacher, fingerprint[0], views, seed, out_size, crop_scale, crop_ratio)
    key = cache_key(request)
    path = Path(out_root) if out_root is not None else utils.cache_dir() / "embeddings"
    path = path / _folder_name(teacher.id, key)
    if rank == 0 and not (path / "meta.json").is_file():
        log.info("building embedding cache %s (%d images x %d views)", path, request["num_images"], views)
        _create(path, request, fingerprint[0])
    if world > 1:
        dist.barrier()
    cache = EmbeddingCache._open(path, request, require_complete=False, mode="r+")
    if cache.complete:
        log.info("embedding cache hit: %s", path)
    else:
        _fill(teacher, dataset, indices, cache, batch_size, rank, world)
    del cache
    if world > 1:
        dist.barrier()
    return EmbeddingCache.open(path, request)


def _fill(teacher: Teacher, dataset: torch.utils.data.Dataset, indices: Sequence[int], cache: EmbeddingCache,
          batch_size: int, rank: int, world: int) -> None:
    """Compute this rank's unfinished chunks of rows rank::world; flush embeddings, then mark done."""
    rows = np.arange(rank, len(cache), world)
    chunks = [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]
    todo = [c for c in chunks if not np.all(cache.done[c] == 1)]
    if len(todo) < len(chunks):
        log.info("resuming embedding cache %s: %d / %d chunks of rank %d already done", cache.path,
                 len(chunks) - len(todo), len(chunks), rank)
    out_size = cache.meta["out_size"]
    for chunk in utils.progress(todo, desc=f"cache: teacher views (rank {rank})", total=len(todo)):
        rgbs = []
        for row in chunk:
            sample = dataset[int(indices[row])]
            if sample.id != cache.ids[row]:
                raise data.DataError(f"dataset index {indices[row]} now holds id {sample.id!r}, the cache expects "
                                     f"{cache.ids[row]!r}; the dataset changed during the build. Rerun the build.")
            rgbs.append(sample.images[data.RGB])
        for k in range(cache.meta["views"]):
            batch = torch.stack([apply_view(x, cache.view_params(int(r), k), out_size) for x, r in zip(rgbs, chunk)])
            emb = teacher.encode_image(batch).detach().float().cpu()
            if emb.shape != (len(chunk), cache.meta["embed_dim"]):
                raise CacheMismatchError(
                    f"{cache.path}: teacher {teacher.id} returned embeddings of shape {tuple(emb.shape)} for "
                    f"{len(chunk)} images, but it declares embed_dim={cache.meta['embed_dim']} (the cache's width). "
                    f"Fix the teacher's embed_dim and rerun the build (this chunk was not marked done).")
            if not torch.isfinite(emb).all():
                bad = [cache.ids[int(r)] for r, ok in zip(chunk, torch.isfinite(emb).all(dim=1)) if not ok]
                raise CacheMismatchError(
                    f"{cache.path}: teacher {teacher.id} returned NaN / inf embeddings for samples {bad[:5]} "
                    f"(view {k}). Check those images (data.check_finite) and the teacher (this chunk was not "
                    f"marked done).")
            cache.embeddings[chunk, k] = emb.numpy().astype(np.float16)
        cache.embeddings.flush()
        cache.done[chunk] = 1
        cache.done.flush()
