"""The one cache-key rule: a stage's key is the digest of the recipe sections it depends on.

Every artifact folder a run reuses (curated set, stage-1 students, int8 variants, analysis embeddings) is named by
`stage_key(recipe, stage)`. A stage's key covers the sections listed in `STAGE_SECTIONS[stage]`, i.e. its own section
and everything upstream of it, so

    changing curation.tau     -> new keys for curation, stage1, stage2, analysis, benchmark
    changing stage2.lr        -> new keys for stage2, analysis, benchmark (curation and stage 1 are reused)
    changing stage1.num_workers / device -> no new key at all

Settings that do not change results (worker counts, devices, folders, download policy) are declared once, where the
field is defined, with `field(..., metadata=VOLATILE)`; `stable_fields` drops them, recursively. Resume checks
(`train`) and the embedded benchmark's folder name (`render.config_hash`) use the same two functions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

VOLATILE: dict[str, bool] = {"volatile": True}
"""Field metadata of a setting that cannot change a result (workers, device, paths, progress)."""

DERIVED: dict[str, bool] = {"derived": True}
"""Field metadata of a setting a Recipe fills in from another section (e.g. every section's seed from
`Recipe.seed`); not written to recipe YAML, still part of the key through the section that sets it."""

STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("seed", "data"),
    "teacher": ("seed", "data", "teacher"),
    "curation": ("seed", "data", "teacher", "curation"),
    "stage1": ("seed", "data", "teacher", "curation", "stage1"),
    "stage2": ("seed", "data", "teacher", "curation", "stage1", "stage2"),
    "analysis": ("seed", "data", "teacher", "curation", "stage1", "stage2", "analysis"),
    "benchmark": ("seed", "data", "teacher", "curation", "stage1", "stage2", "benchmark"),
}
"""Stage -> the recipe sections its results depend on (its own and every upstream one)."""


def plain(obj: Any, drop: str) -> Any:
    """A JSON / YAML-ready copy of a config (dataclass, dict, tuple ...) without the fields whose metadata
    carries `drop` ("volatile" or "derived"), recursively; tuples become lists, other objects strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name), drop) for f in dataclasses.fields(obj) if not f.metadata.get(drop)}
    if isinstance(obj, dict):
        return {str(k): plain(v, drop) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, drop) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def stable_fields(obj: Any) -> Any:
    """`plain(obj)` without its VOLATILE fields: everything that can change a result.

    >>> from edgevl_lib.config import Stage1Config
    >>> "num_workers" in stable_fields(Stage1Config()), "epochs" in stable_fields(Stage1Config())
    (False, True)
    """
    return plain(obj, "volatile")


def digest(obj: Any, length: int = 16) -> str:
    """sha256 (first `length` hex digits) of `stable_fields(obj)` as canonical JSON (sorted keys).

    >>> digest({"b": 1, "a": (2, 3)}) == digest({"a": [2, 3], "b": 1})
    True
    """
    text = json.dumps(stable_fields(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def stage_key(recipe: Any, stage: str, **inputs: Any) -> str:
    """The key of `stage` for `recipe`: `digest` of the sections in `STAGE_SECTIONS[stage]`, plus `inputs`.

    Args:
        recipe: a `recipe.Recipe` (any object with the section attributes).
        stage: one of `STAGE_SECTIONS`.
        inputs: content fingerprints the recipe cannot know (e.g. the ids of a real dataset's files, the
            stored-embedding cache's content key), keyed by name.

    >>> from edgevl_lib.recipe import Recipe
    >>> stage_key(Recipe(), "stage1") == stage_key(Recipe(), "stage1")
    True
    """
    if stage not in STAGE_SECTIONS:
        raise ValueError(f"unknown stage {stage!r}; stages: {list(STAGE_SECTIONS)}")
    parts = {name: getattr(recipe, name) for name in STAGE_SECTIONS[stage]}
    return digest({"stage": stage, "sections": parts, "inputs": inputs})
