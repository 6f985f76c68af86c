"""UMAP maps (umap-learn): one shared 2-D map of several embedding sets, cached on disk.

One `umap.UMAP` (umap-learn) is fitted on the union of several embedding sets (e.g. the fp32 and int8 image
embeddings of every modality plus the C class text embeddings) so that all panels share one 2-D map, starting from
the exact cosine k-nearest-neighbour graph (umap's `precomputed_knn`); the coordinates are cached under
`utils.cache_dir() / "analysis"` (safetensors, keyed by sha256 of the input bytes and the parameters). `import umap`
costs seconds (numba), so it happens inside `umap_coordinates`, the only place; with the embeddings cached too
(`store.cached_embeddings`) a re-run of the notebook skips both the encoders and the fit. This module is named
`umap_map`, not `umap`, so that `import umap` is always umap-learn.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import utils
from .metrics import ArrayLike
from .store import analysis_cache_dir

log = logging.getLogger(__name__)

TEXT_SET = "text"
"""Name of the class text embeddings among the UMAP sets (`umap_sets`)."""


def set_name(variant: str, modality: str) -> str:
    """Name of one variant's image embeddings of one modality among the UMAP sets, e.g. "stage2/depth"."""
    return f"{variant}/{modality}"


def umap_sets(emb: Mapping[str, Mapping[str, ArrayLike]], text_emb: ArrayLike | None = None,
              variants: Sequence[str] | None = None, modalities: Sequence[str] | None = None) -> dict[str, ArrayLike]:
    """The embedding sets one UMAP is fitted on: {"<variant>/<modality>": N x D, ..., "text": C x D}.

    Args:
        emb: {variant: {modality: N x D}}.
        text_emb: C x D class text embeddings (added as the set "text"), or None.
        variants: which variants (default all in `emb`), e.g. ("fp32", "stage2") for fp32 vs int8.
        modalities: which modalities (default all of each variant).

    >>> list(umap_sets({"fp32": {"rgb": torch.eye(2)}, "ptq": {"rgb": torch.eye(2)}}, torch.eye(2), ["fp32"]))
    ['fp32/rgb', 'text']
    """
    sets: dict[str, ArrayLike] = {}
    for v in variants or list(emb):
        if v not in emb:
            raise ValueError(f"no embeddings for variant {v!r}; have {sorted(emb)}")
        for m in modalities or list(emb[v]):
            sets[set_name(v, m)] = emb[v][m]
    if text_emb is not None:
        sets[TEXT_SET] = text_emb
    return sets


def _umap_key(arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for name, a in arrays.items():
        h.update(f"\0{name}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def exact_cosine_knn(x: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine distance 1 - n(x_i).n(x_j), each row's own index first (distance 0).

    The layout umap-learn's `precomputed_knn` expects (its own search includes the point itself). Computed in
    row blocks of `block` x N similarities (torch), so N = 9000 needs about 75 MB.

    Returns:
        (N x k int32 indices, N x k float32 distances), neighbours sorted by distance.

    >>> exact_cosine_knn(np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), 2)[0].tolist()
    [[0, 1], [1, 0], [2, 1]]
    """
    xt = F.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32)), dim=-1)
    indices, dists = [], []
    for start in range(0, len(xt), block):
        sim = xt[start:start + block] @ xt.T
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = 2.0  # above any cosine: self first even among duplicates
        val, idx = sim.topk(k, dim=1)
        indices.append(idx.to(torch.int32))
        dists.append((1.0 - val).clamp_min(0.0))
    return torch.cat(indices).numpy(), torch.cat(dists).numpy()


def umap_coordinates(sets: Mapping[str, ArrayLike], n_neighbors: int = 15, min_dist: float = 0.1,
                     metric: str = "cosine", n_epochs: int | None = None, seed: int = 0, neighbours: str = "exact",
                     cache: bool = True, cache_root: str | os.PathLike | None = None,
                     **umap_kwargs: Any) -> dict[str, np.ndarray]:
    """Fit ONE seeded umap.UMAP on the union of the sets; return each set's 2-D coordinates (shared map).

    The rows of all sets are stacked in the given order, `umap.UMAP(n_components=2, n_neighbors, min_dist,
    metric, n_epochs, random_state=seed, n_jobs=1, **umap_kwargs).fit_transform` maps them, and the result is
    split back. A seed makes umap-learn single-threaded and deterministic (same inputs, same coordinates on the
    same machine). With `neighbours="exact"` (metric "cosine" only) the k-nearest-neighbour graph UMAP starts
    from is computed exactly here (`exact_cosine_knn`) and passed as umap's `precomputed_knn`: exact, and about
    4x faster on 9000 points than umap's approximate NN-descent search with its numba compilation (measured
    on a 2-core CPU: ~20 s vs ~80 s for a first fit); "umap" lets umap-learn search (exact below 4096 points,
    NN-descent above). The coordinates are cached as `umap-<key>.safetensors` under `cache_root` (default
    `utils.cache_dir() / "analysis"`), key = sha256 of the set names, shapes, float32 bytes and the parameters
    (including umap's version): a second call with the same inputs reads the file and does not refit.

    Args:
        sets: {name: n_i x D} (e.g. `umap_sets(...)`), all of the same D.
        n_neighbors, min_dist, metric, n_epochs: umap.UMAP's (n_epochs None = umap's default: 200 for large
            data, 500 for small).
        seed: umap's random_state.
        neighbours: "exact" (cosine kNN computed here) or "umap" (umap-learn's own search).
        cache: read / write the on-disk cache.
        cache_root: cache folder.
        **umap_kwargs: other umap.UMAP arguments (JSON-serialisable; part of the key), e.g. init="random".

    Returns:
        {name: n_i x 2 float32}, in the order of `sets`.

    >>> xy = umap_coordinates({"a": np.random.rand(30, 8), "b": np.random.rand(5, 8)}, n_neighbors=5,
    ...                       cache_root=getfixture("tmp_path"))   # doctest: +SKIP
    >>> xy["a"].shape, xy["b"].shape                                  # doctest: +SKIP
    ((30, 2), (5, 2))
    """
    if not sets:
        raise ValueError("no embedding sets to map")
    arrays = {}
    for name, x in sets.items():
        a = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x),
                                 dtype=np.float32)
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"set {name!r} must be a non-empty n x D matrix, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"set {name!r} holds NaN or inf values; UMAP needs finite embeddings")
        arrays[name] = a
    dims = {a.shape[1] for a in arrays.values()}
    if len(dims) != 1:
        raise ValueError(f"all sets must have the same dimension, got {{name: D}} = "
                         f"{ {n: a.shape[1] for n, a in arrays.items()} }")
    total = sum(len(a) for a in arrays.values())
    if not 2 <= n_neighbors < total:
        raise ValueError(f"n_neighbors must be in [2, {total - 1}] for {total} points, got {n_neighbors}")
    from importlib.metadata import version

    if neighbours not in ("exact", "umap"):
        raise ValueError(f"neighbours must be 'exact' or 'umap', got {neighbours!r}")
    exact = neighbours == "exact" and metric == "cosine"
    params = {"n_neighbors": n_neighbors, "min_dist": min_dist, "metric": metric, "n_epochs": n_epochs,
              "seed": seed, "exact_knn": exact, "umap": version("umap-learn"), **umap_kwargs}
    try:
        key = _umap_key(arrays, params)
    except TypeError as exc:
        raise ValueError(f"umap_kwargs must be JSON-serialisable to key the cache: {exc}") from exc
    path = analysis_cache_dir(cache_root) / f"umap-{key}.safetensors"
    if cache and path.is_file():
        coords = _read_umap_cache(path, arrays)
        if coords is not None:
            log.info("UMAP coordinates of %d points read from %s", total, path)
            return coords

    import umap  # lazy: the first import compiles numba code (seconds)

    start = time.perf_counter()
    data = np.concatenate(list(arrays.values()))
    if exact:
        umap_kwargs = {**umap_kwargs, "precomputed_knn": (*exact_cosine_knn(data, n_neighbors), None)}
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                        n_epochs=n_epochs, random_state=seed, n_jobs=1, **umap_kwargs)
    with warnings.catch_warnings():  # no search index kept: umap warns that .transform is unavailable (unused)
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        flat = reducer.fit_transform(data)
    seconds = time.perf_counter() - start
    log.info("UMAP fitted on %d points (%d-d) in %.1f s", total, next(iter(dims)), seconds)
    coords, offset = {}, 0
    for name, a in arrays.items():
        coords[name] = np.ascontiguousarray(flat[offset:offset + len(a)], dtype=np.float32)
        offset += len(a)
    if cache:
        from safetensors.numpy import save_file

        meta = {"params": json.dumps(params, sort_keys=True), "names": json.dumps(list(arrays)),
                "fit_seconds": f"{seconds:.3f}"}
        with utils.atomic_path(path, suffix=".safetensors") as tmp:
            save_file(coords, str(tmp), metadata=meta)
    return coords


def _read_umap_cache(path: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    from safetensors.numpy import load_file

    try:
        stored = load_file(str(path))
    except Exception as exc:
        log.warning("UMAP cache %s is unreadable (%s); refitting", path, exc)
        return None
    if set(stored) != set(arrays) or any(stored[n].shape != (len(a), 2) for n, a in arrays.items()):
        log.warning("UMAP cache %s does not match the sets; refitting", path)
        return None
    return {n: stored[n] for n in arrays}
