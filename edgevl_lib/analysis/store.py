"""The analysis tensor cache: (nested) dicts of embeddings as safetensors files, never pickle.

`save_embeddings` / `load_embeddings` / `cached_embeddings` store and read them under `analysis_cache_dir()` =
`utils.cache_dir() / "analysis"`, one file per caller key (a slug of the key plus its sha256), so a re-run of the
notebook skips the encoders; nested names are flattened to "<variant>/<modality>" (`_flatten`, `_unflatten`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import utils

log = logging.getLogger(__name__)


def analysis_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder of the analysis caches: `root` if given, else `utils.cache_dir() / "analysis"`; created."""
    path = Path(root) if root is not None else utils.cache_dir() / "analysis"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_file(prefix: str, key: str, root: str | os.PathLike | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:60] or "key"
    return analysis_cache_dir(root) / f"{prefix}-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"


def _flatten(tensors: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"embedding names must be non-empty strings without '/', got {name!r}")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            t = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
            flat[prefix + name] = t.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    return flat


def _unflatten(flat: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def save_embeddings(key: str, tensors: Mapping[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Store a (nested) dict of tensors as one safetensors file named after `key`, atomically.

    Args:
        key: the caller's cache key; it must change whenever the embeddings would (e.g. include the checkpoint
            digests, the dataset and the encodings). Any string; the file name is a slug of it plus its sha256.
        tensors: {name: tensor} or nested {variant: {modality: tensor}} (names without '/').
        root: cache folder (default `utils.cache_dir() / "analysis"`).

    Returns:
        The file written.

    >>> path = save_embeddings("demo", {"fp32": {"rgb": torch.zeros(2, 3)}}, root=getfixture("tmp_path"))
    """
    from safetensors.torch import save_file

    path = _cache_file("emb", key, root)
    with utils.atomic_path(path, suffix=".safetensors") as tmp:
        save_file(_flatten(tensors), str(tmp), metadata={"key": key, "format": "edgevl-embeddings-1"})
    log.info("stored embeddings %r in %s", key, path)
    return path


def load_embeddings(key: str, root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The dict `save_embeddings(key, ...)` stored (same nesting), or None when there is none / it is unreadable.

    >>> _ = save_embeddings("demo", {"fp32": {"rgb": torch.ones(1, 2)}}, root=getfixture("tmp_path"))
    >>> load_embeddings("demo", root=getfixture("tmp_path"))
    {'fp32': {'rgb': tensor([[1., 1.]])}}
    """
    from safetensors import safe_open

    path = _cache_file("emb", key, root)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                log.warning("embedding cache %s was written for another key; ignoring it", path)
                return None
            flat = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # a damaged file is a cache miss, not a failure
        log.warning("embedding cache %s is unreadable (%s); it will be recomputed", path, exc)
        return None
    return _unflatten(flat)


def cached_embeddings(key: str, compute: Callable[[], Mapping[str, Any]],
                      root: str | os.PathLike | None = None) -> dict[str, Any]:
    """`load_embeddings(key)` if stored, else `compute()`, stored with `save_embeddings` and returned.

    Args:
        key: cache key (see `save_embeddings`).
        compute: builds the (nested) dict of tensors, e.g. a lambda that embeds the evaluation set per variant.
        root: cache folder.

    Returns:
        The (nested) dict of CPU tensors; the same values whether computed or loaded.

    >>> cached_embeddings("demo2", lambda: {"rgb": torch.eye(2)}, root=getfixture("tmp_path"))["rgb"].shape
    torch.Size([2, 2])
    """
    found = load_embeddings(key, root)
    if found is not None:
        log.info("embeddings %r read from the cache", key)
        return found
    tensors = compute()
    save_embeddings(key, tensors, root)
    return _unflatten(_flatten(tensors))
