"""A Recipe: the one description of a whole run, read from and written to YAML.

    recipe = load_recipe("embedded_cpu", overrides=["stage1.epochs=3"], smoke=False)
    recipe.stage1.epochs, recipe.hash          # 3, '1f0c...'

A recipe has one section per pipeline stage, each a frozen config dataclass of `edgevl_lib.config`:

| section     | class                 | used by                         |
|-------------|-----------------------|---------------------------------|
| `data`      | `DataConfig`          | every notebook (01 builds it)   |
| `teacher`   | `TeacherConfig`       | 01 (02-05 reuse)                |
| `curation`  | `CurationConfig`      | 01 (02-05 reuse)                |
| `stage1`    | `Stage1Config`        | 02 (03-05 reuse)                |
| `stage2`    | `Stage2Config`        | 03 (04-05 reuse)                |
| `analysis`  | `AnalysisConfig`      | 04                              |
| `benchmark` | `EdgeBenchmarkConfig` | 05                              |

A YAML file holds only what differs from the defaults. The top-level `seed` seeds every section (the sections'
own `seed` fields are filled from it), and `teacher.benchmark` is `data.benchmark`. Unknown keys, wrong types and
impossible values are refused before anything runs, naming the key and the file (`RecipeError`).

Shipped recipes live in `edgevl_lib/recipes/<name>.yaml`; each file's header holds the command that runs it and
the result to expect. `recipe.hash` covers every setting that can change a result (`keys.stable_fields`), so the
five notebooks of one run record the same hash.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from . import keys
from .config import (AnalysisConfig, CurationConfig, DataConfig, EdgeBenchmarkConfig, Stage1Config, Stage2Config,
                     TeacherConfig)

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
"""Shipped recipes: `<name>.yaml`."""

DEFAULT_RECIPE = "embedded_cpu"

SECTIONS: tuple[str, ...] = ("data", "teacher", "curation", "stage1", "stage2", "analysis", "benchmark")


class RecipeError(ValueError):
    """A recipe that cannot run: unknown key, wrong type or impossible value (the message names key and file)."""


@dataclass(frozen=True)
class Recipe:
    """One run, end to end (see the module docstring for the sections).

    Attributes:
        name: a label recorded with the results (not part of `hash`).
        seed: seeds every section.
        train_seed: when set, seeds stage 1 and stage 2 instead (data, teacher and curation keep `seed`): what the
            seed study (`edgevl_lib.study`) varies. Equal to `seed` means unset.
        smoke: True for the tiny configuration of `smoke_version()` (set by it; the sections carry the change).
    """

    name: str = field(default=DEFAULT_RECIPE, metadata=keys.VOLATILE)
    seed: int = 0
    train_seed: int | None = None
    smoke: bool = field(default=False, metadata={**keys.VOLATILE, **keys.DERIVED})
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    benchmark: EdgeBenchmarkConfig = field(default_factory=EdgeBenchmarkConfig)

    def __post_init__(self) -> None:
        seed = self.seed
        bench = dataclasses.replace(self.data.benchmark, seed=seed)
        if self.data.dataset == "embedded" and self.data.classes:  # render (and pretrain the teacher on) them
            bench = dataclasses.replace(bench, classes=tuple(self.data.classes))
        object.__setattr__(self, "data", dataclasses.replace(self.data, benchmark=bench))
        object.__setattr__(self, "teacher", dataclasses.replace(self.teacher, benchmark=bench, seed=seed))
        if self.train_seed == seed:
            object.__setattr__(self, "train_seed", None)
        train_seed = seed if self.train_seed is None else self.train_seed
        for name, value in (("curation", seed), ("stage1", train_seed), ("stage2", train_seed)):
            object.__setattr__(self, name, dataclasses.replace(getattr(self, name), seed=value))
        extra = [m for m in self.stage2.modalities if m not in self.stage1.modalities]
        if extra:
            raise ValueError(f"stage2.modalities {list(self.stage2.modalities)} includes {extra}, which stage 1 "
                              f"never trained on (stage1.modalities {list(self.stage1.modalities)})")

    def smoke_version(self) -> "Recipe":
        """The tiny configuration: every section's `smoke()`; ViT students (a QAT conv + batch-norm graph costs
        ~20 s of torchao pattern tracing to convert, a ViT a second)."""
        if self.smoke:
            return self
        return dataclasses.replace(
            self, smoke=True, data=self.data.smoke(), teacher=self.teacher.smoke(), curation=self.curation.smoke(),
            stage1=self.stage1.smoke(arch="vit_tiny_test"), stage2=self.stage2.smoke(),
            analysis=self.analysis.smoke(), benchmark=self.benchmark.smoke())

    @property
    def hash(self) -> str:
        """Digest of every result-changing setting (`keys.digest`): equal hashes, equal runs."""
        return keys.digest(self)

    def key(self, stage: str, **inputs: Any) -> str:
        """`keys.stage_key(self, stage, **inputs)`: the artifact key of one stage."""
        return keys.stage_key(self, stage, **inputs)

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data, without the DERIVED fields (what `to_yaml` writes)."""
        return keys.plain(self, "derived")

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The recipe as YAML (all settings); written to `path` atomically when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)
        if path is not None:
            from .utils import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
        return text

    def record(self) -> dict[str, Any]:
        """What every notebook's metrics.json stores under `recipe`: name, hash, smoke and the resolved settings."""
        return {"name": self.name, "hash": self.hash, "smoke": self.smoke, "resolved": self.to_dict()}


# ----------------------------------------------------------------------------------------------
# Loading: a name or a path, overrides, seed, smoke
# ----------------------------------------------------------------------------------------------


def shipped_recipes() -> list[str]:
    """Names of the recipes in `edgevl_lib/recipes/`."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped recipe's file for a bare name, else the path itself (must exist)."""
    text = str(name_or_path)
    if not text.endswith((".yaml", ".yml")) and os.sep not in text and (RECIPE_DIR / f"{text}.yaml").is_file():
        return RECIPE_DIR / f"{text}.yaml"
    path = Path(text).expanduser()
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found; give a YAML file or one of the shipped recipes "
                          f"{shipped_recipes()}")
    return path


def load_recipe(recipe: str | os.PathLike | Recipe | None = None, overrides: Sequence[str] | str | None = None,
                seed: int | None = None, smoke: bool = False) -> Recipe:
    """The Recipe a notebook or the runner runs.

    Args:
        recipe: a shipped recipe's name, a YAML path, a Recipe, or None (`DEFAULT_RECIPE`).
        overrides: dotted `key=value` settings applied on top (`stage1.epochs=10`, `data.classes=[chair, stool]`;
            values are YAML), as a list or one string separated by `;` or newlines.
        seed: replaces the recipe's seed when given.
        smoke: return `smoke_version()`; `overrides` are applied after it, so they win.

    Raises:
        RecipeError: unknown key, wrong type, impossible value or a missing file (the message names them).
    """
    if isinstance(recipe, Recipe):
        base, source, tree = recipe, "recipe", {}
    else:
        path = recipe_path(recipe or DEFAULT_RECIPE)
        source = str(path)
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: not a valid YAML recipe ({exc})") from None
        if not isinstance(tree, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
        tree.setdefault("name", path.stem)
        base = Recipe()
    if seed is not None:
        tree["seed"] = seed
    built = build(Recipe, tree, base, source)
    if smoke:
        built = built.smoke_version()
    changes: dict[str, Any] = {}
    for item in _override_items(overrides):  # last, so that an override also wins over the smoke settings
        _set_dotted(changes, item, source)
    return build(Recipe, changes, built, f"{source} + overrides") if changes else built


def _override_items(overrides: Sequence[str] | str | None) -> list[str]:
    if not overrides:
        return []
    if isinstance(overrides, str):
        overrides = overrides.replace("\n", ";").split(";")
    return [o.strip() for o in overrides if o and o.strip()]


def _set_dotted(tree: dict[str, Any], item: str, source: str) -> None:
    if "=" not in item:
        raise RecipeError(f"override {item!r} (on {source}): write key=value, e.g. stage1.epochs=10")
    dotted, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {item!r} (on {source}): the value is not YAML ({exc})") from None
    parts = dotted.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {item!r} (on {source}): {part} is not a section")
    node[parts[-1]] = value


# ----------------------------------------------------------------------------------------------
# Typed construction from plain data
# ----------------------------------------------------------------------------------------------


def build(cls: type, tree: Mapping[str, Any], base: Any, source: str, where: str = "") -> Any:
    """`base` (an instance of dataclass `cls`) with the values of `tree` converted to the fields' types.

    Raises:
        RecipeError: `<source>: <where.key>: ...` for an unknown key, a wrong type or an impossible value.
    """
    if not isinstance(tree, Mapping):
        raise RecipeError(f"{source}: {where or 'recipe'} must be a mapping, got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    changes = {}
    for name, value in tree.items():
        key = f"{where}{name}"
        if name not in fields:
            allowed = [n for n, f in fields.items() if not f.metadata.get("derived")]
            raise RecipeError(f"{source}: unknown key {key!r}; {where.rstrip('.') or 'the recipe'} has {allowed}")
        if fields[name].metadata.get("derived"):
            raise RecipeError(f"{source}: {key} is set by the recipe itself ({_DERIVED_FROM.get(name, 'seed')}); "
                              f"remove it")
        changes[name] = _convert(value, hints[name], getattr(base, name), source, key)
    try:
        return dataclasses.replace(base, **changes)
    except RecipeError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{source}: {where}{exc}") from None


_DERIVED_FROM = {"seed": "the top-level seed", "benchmark": "data.benchmark"}


def _hints(cls: type) -> dict[str, Any]:
    from .data import ModalityEncoding
    from .losses import DistillLossConfig

    import sys
    namespace = {**vars(sys.modules[cls.__module__]), "ModalityEncoding": ModalityEncoding,
                 "DistillLossConfig": DistillLossConfig}
    return typing.get_type_hints(cls, globalns=namespace)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, current: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, current if isinstance(current, _runtime(option)) else None, source,
                                key)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(f"{source}: {key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, current if isinstance(current, tp) else tp(), source, f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: {key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], None, source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{source}: {key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, None, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{source}: {key} must be a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_convert(k, kt, None, source, f"{key} key"): _convert(v, vt, None, source, f"{key}.{k}")
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{source}: {key} must be a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise RecipeError(f"{source}: {key} must be null, got {value!r}")
        return None
    raise RecipeError(f"{source}: {key}: unsupported type {tp}")


_EXPONENT_FLOAT = re.compile(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+")


def _runtime(tp: Any) -> type | tuple[type, ...]:
    origin = typing.get_origin(tp)
    return origin if isinstance(origin, type) else tp if isinstance(tp, type) else object


def describe(recipes: Iterable[str] | None = None) -> list[dict[str, str]]:
    """The first comment line (title) of each shipped recipe, for the README's table and `--list`."""
    rows = []
    for name in recipes or shipped_recipes():
        lines = recipe_path(name).read_text(encoding="utf-8").splitlines()
        title = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), "")
        rows.append({"name": name, "title": title})
    return rows
