"""Label-free dataset curation: keep the unlabeled images the teacher is confident about.

EdgeVL (Cai et al., ECCV 2024, "automatic dataset curation") scores every unlabeled RGB image against a
label superset with the CLIP teacher and keeps the confident ones; the pseudo-label is the teacher's
zero-shot prediction. With L2-normalised image embeddings v_i and class text embeddings t_k (mean of
the class's prompt embeddings, re-normalised, as in CLIP prompt ensembling):

    p_ik = softmax_k(s * cos(v_i, t_k)),     s = 100 (CLIP's logit scale)
    c_i  = max_k p_ik,                       pseudo_i = argmax_k p_ik

Two selection rules:

* `threshold` (the paper): keep {i : c_i >= tau}, tau = 0.25 by default.
* `top_fraction` (the released code): keep the ceil(f * N) most confident images, ties broken by the
  lower index.

Ground-truth labels are never used to select images: `curation_report` uses them only to evaluate the
selection (pseudo-label accuracy of the kept and of the discarded images), and `check_requirements` compares that
evaluation with the stated requirements of a default curation (`REQUIREMENTS`), which the curation study uses to
admit settings (adapt split only, never eval).

Prompt files live in `edgevl_lib/prompts/` (see `prompt_path`): templates with `{}` for the class name,
label supersets (one name per line) and optional LLM-written descriptions (JSON {name: description})
that add the prompt "a photo of a {name}. {description}" per class (Li et al., ICCV 2023).

>>> img = torch.tensor([[1.0, 0.0]]); txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> confidence(img, txt, scale=1.0)[1]
tensor([0])
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import numpy as np
import torch

from . import data, utils
from .teachers import Teacher, prompt_ensemble

if TYPE_CHECKING:
    from .config import CurationConfig

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
"""Folder of the shipped prompt files (templates, label supersets, descriptions)."""

MODES = ("threshold", "top_fraction", "class_top_fraction")
DESCRIPTION_TEMPLATE = "a photo of a {name}. {description}"


# ----------------------------------------------------------------------------------------------
# Label supersets and prompts
# ----------------------------------------------------------------------------------------------


def prompt_path(name: str | os.PathLike) -> Path:
    """Resolve a prompt file: an existing path as given, else a file name inside `edgevl_lib/prompts/`.

    >>> prompt_path("templates.txt").name
    'templates.txt'
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = PROMPTS_DIR / path
    if shipped.is_file():
        return shipped
    available = sorted(p.name for p in PROMPTS_DIR.iterdir() if p.is_file())
    raise data.DataError(f"{path}: prompt file not found (also not in {PROMPTS_DIR}). Pass an existing path or "
                         f"one of the shipped files {available}.")


def load_label_superset(path: str | os.PathLike) -> list[str]:
    """Read a label superset: one class name per line, `#` comments and blank lines skipped.

    Same rules as `data.read_class_names`: a missing, non-UTF-8 or empty file, or a repeated name, raises
    DataError naming the file (a repeated name would split one class's probability between two rows).
    """
    return data.read_class_names(prompt_path(path))


def load_templates(path: str | os.PathLike) -> list[str]:
    """Read prompt templates, one per line, each holding `{}` where the class name goes.

    Raises:
        DataError: naming the file when it is empty or a line lacks `{}`.
    """
    path = prompt_path(path)
    text = data.read_text_file(path, "template file", "Write one template per line, e.g. `a photo of a {}.`")
    lines = [(no, ln.strip()) for no, ln in enumerate(text.lstrip("\ufeff").splitlines(), start=1)]
    lines = [(no, ln) for no, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise data.DataError(f"{path}: no templates. Write one template per line, e.g. `a photo of a {{}}.`")
    bad = [no for no, ln in lines if "{}" not in ln]
    if bad:
        raise data.DataError(f"{path}: line(s) {bad} lack the `{{}}` placeholder for the class name. "
                             f"Write e.g. `a photo of a {{}}.`")
    return [ln for _, ln in lines]


def load_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """Read LLM-written class descriptions: a JSON object {class name: short visual description}.

    Raises:
        DataError: naming the file when it is not valid JSON or not a {str: str} object.
    """
    path = prompt_path(path)
    try:
        obj = json.loads(data.read_text_file(path, "descriptions file", 'Write {"class name": "description"}.'))
    except json.JSONDecodeError as exc:
        raise data.DataError(f"{path}: not valid JSON ({exc}). Write {{\"class name\": \"description\"}}.") from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise data.DataError(f"{path}: expected a JSON object of strings {{\"class name\": \"description\"}}.")
    return obj


def build_prompts(names: Sequence[str], templates: Sequence[str],
                  descriptions: Mapping[str, str] | None = None) -> list[list[str]]:
    """Prompts per class: every template filled with the name, plus one description prompt when given.

    With descriptions, class k also gets "a photo of a {name}. {description}" (Li et al., ICCV 2023),
    so the text embedding t_k averages the plain and the LLM-enriched prompts.

    Args:
        names: class names of the superset.
        templates: strings holding `{}`.
        descriptions: optional {name: description}; must cover every name.

    Returns:
        One list of prompts per name, in the order of `names`.

    Raises:
        ValueError: when `descriptions` misses some names (mixing enriched and plain classes biases the scores).

    >>> build_prompts(["mug"], ["a photo of a {}."], {"mug": "a small cup."})
    [['a photo of a mug.', 'a photo of a mug. a small cup.']]
    """
    if descriptions is not None:
        missing = [n for n in names if n not in descriptions]
        if missing:
            raise ValueError(f"descriptions miss {missing}. Add them to the descriptions file or pass "
                             f"descriptions=None.")
    prompts = []
    for name in names:
        per_class = [t.replace("{}", name) for t in templates]
        if descriptions is not None:
            per_class.append(DESCRIPTION_TEMPLATE.format(name=name, description=descriptions[name]))
        prompts.append(per_class)
    return prompts


# ----------------------------------------------------------------------------------------------
# Confidence and selection
# ----------------------------------------------------------------------------------------------


def confidence(img_emb: torch.Tensor, text_emb: torch.Tensor,
               scale: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot confidence and pseudo-label of each image over the superset.

    p_ik = softmax_k(scale * cos(v_i, t_k)); c_i = max_k p_ik; pseudo_i = argmax_k p_ik.
    Inputs are L2-normalised here, so raw embeddings give cosines too.

    Args:
        img_emb: NxD image embeddings.
        text_emb: KxD class text embeddings.
        scale: logit scale s (CLIP: 100).

    Returns:
        (conf, pseudo): N float32 confidences in [1/K, 1] and N int64 superset indices.
    """
    v = torch.nn.functional.normalize(img_emb.float(), dim=-1)
    t = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    probs = torch.softmax(scale * v @ t.T, dim=-1)
    conf, pseudo = probs.max(dim=-1)
    return conf, pseudo


@dataclass
class CurationResult:
    """The outcome of curation, saved as JSON next to the stage's outputs.

    Attributes:
        kept: indices (into the scored dataset) of the kept images, ascending.
        ids: sample ids of the kept images (order of `kept`).
        pseudo_labels: superset indices of the kept images' pseudo-labels (order of `kept`).
        pseudo_names: superset names of the kept images' pseudo-labels (order of `kept`).
        confidences: c_i of ALL N scored images (dataset order).
        all_pseudo_labels: superset indices of ALL N images' pseudo-labels (dataset order).
        superset: the label superset the pseudo-labels index.
        mode: one of MODES (`threshold`, `top_fraction`, `class_top_fraction`).
        threshold: tau in `threshold` mode; in the fraction modes the lowest kept confidence (the
            effective threshold), or 1.0 when nothing is kept.
        top_fraction: f in the fraction modes, else None.
        num_kept: len(kept).
        total: N, the number of scored images.
    """

    kept: list[int]
    ids: list[str]
    pseudo_labels: list[int]
    pseudo_names: list[str]
    confidences: list[float]
    all_pseudo_labels: list[int]
    superset: list[str]
    mode: str
    threshold: float
    top_fraction: float | None = None
    num_kept: int = field(init=False)
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_kept = len(self.kept)
        self.total = len(self.confidences)

    @property
    def kept_fraction(self) -> float:
        """num_kept / total."""
        return self.num_kept / max(self.total, 1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON atomically (utils.write_json)."""
        return utils.write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CurationResult":
        """Read a result written by `save`; DataError naming the file when it is missing or malformed."""
        path = Path(path)
        if not path.is_file():
            raise data.DataError(f"{path}: curation result not found. Run curation first (curate_dataset or "
                                 f"notebook 01_curation).")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            obj.pop("num_kept", None)
            obj.pop("total", None)
            return cls(**obj)
        except (json.JSONDecodeError, TypeError) as exc:
            raise data.DataError(f"{path}: not a curation result ({exc}). Delete it and rerun curation.") from exc


def curate_by_confidence(conf: torch.Tensor | np.ndarray | Sequence[float],
                         pseudo: torch.Tensor | np.ndarray | Sequence[int], ids: Sequence[str],
                         superset: Sequence[str], mode: str = "threshold", tau: float = 0.25,
                         top_fraction: float = 0.5) -> CurationResult:
    """Select confident images (no ground truth involved).

    * `threshold`: kept = {i : c_i >= tau} (EdgeVL paper, tau = 0.25).
    * `top_fraction`: kept = the ceil(f * N) largest c_i, ties broken by the lower index (released code).
      f * N is rounded to 9 decimals before the ceiling so 0.3 * 10 keeps 3, not 4.
    * `class_top_fraction`: the same within each pseudo-class: with S_k = {i : p_i = k},
      kept = U_k (the ceil(f |S_k|) largest c_i of S_k), so no pseudo-class that occurs vanishes (ours; neither
      the paper nor its code has it). `threshold` is then the lowest kept confidence.

    Args:
        conf: N confidences c_i (from `confidence`).
        pseudo: N superset indices (from `confidence`).
        ids: N sample ids, dataset order.
        superset: the label superset `pseudo` indexes.
        mode: one of MODES.
        tau: threshold in [0, 1] for `threshold`.
        top_fraction: f in (0, 1] for `top_fraction` and `class_top_fraction`.

    Returns:
        CurationResult with kept indices ascending.

    >>> curate_by_confidence([0.9, 0.2, 0.5], [0, 1, 0], ["a", "b", "c"], ["x", "y"], tau=0.5).kept
    [0, 2]
    """
    c = np.asarray(conf.detach().cpu() if isinstance(conf, torch.Tensor) else conf, dtype=np.float64)
    p = np.asarray(pseudo.detach().cpu() if isinstance(pseudo, torch.Tensor) else pseudo, dtype=np.int64)
    if not (c.ndim == 1 and c.shape == p.shape and len(ids) == len(c)):
        raise ValueError(f"conf {c.shape}, pseudo {p.shape} and ids ({len(ids)}) must be 1-D of one length")
    if len(p) and (p.min() < 0 or p.max() >= len(superset)):
        raise ValueError(f"pseudo-labels must index the superset of {len(superset)} names")
    if mode == "threshold":
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        kept = np.flatnonzero(c >= tau)
        threshold, fraction = float(tau), None
    elif mode == "top_fraction":
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        n_keep = math.ceil(round(top_fraction * len(c), 9))
        order = np.lexsort((np.arange(len(c)), -c))  # by -c, then by index
        kept = np.sort(order[:n_keep])
        threshold = float(c[kept].min()) if len(kept) else 1.0
        fraction = float(top_fraction)
    elif mode == "class_top_fraction":
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        chosen = []
        for k in np.unique(p):
            members = np.flatnonzero(p == k)
            order = members[np.lexsort((members, -c[members]))]  # by -c, then by index
            chosen.append(order[:math.ceil(round(top_fraction * len(members), 9))])
        kept = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
        threshold = float(c[kept].min()) if len(kept) else 1.0
        fraction = float(top_fraction)
    else:
        raise ValueError(f"unknown curation mode {mode!r}; use one of {MODES}")
    kept_list = [int(i) for i in kept]
    return CurationResult(
        kept=kept_list, ids=[ids[i] for i in kept_list], pseudo_labels=[int(p[i]) for i in kept_list],
        pseudo_names=[superset[p[i]] for i in kept_list], confidences=[float(x) for x in c],
        all_pseudo_labels=[int(x) for x in p], superset=list(superset), mode=mode, threshold=threshold,
        top_fraction=fraction)


@torch.no_grad()
def score_dataset(teacher: Teacher, dataset: torch.utils.data.Dataset, superset: Sequence[str],
                  templates: Sequence[str], batch_size: int = 64, scale: float | None = None,
                  descriptions: Mapping[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the teacher over the dataset's RGB images and score them against the superset.

    Args:
        teacher: the CLIP teacher.
        dataset: a PairedDataset (or Subset of one) whose Samples hold `rgb`.
        superset: label superset names.
        templates: prompt templates (`{}` = name).
        batch_size: images per teacher call.
        scale: logit scale s; None = the teacher's own `logit_scale` (CLIP: 100), else 100.
        descriptions: optional {name: description} for LLM-enriched prompts.

    Returns:
        (conf, pseudo, image_emb): N confidences, N superset indices, NxD float32 image embeddings.
    """
    text = prompt_ensemble(teacher, build_prompts(superset, templates, descriptions))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=data.collate_samples)
    embs = []
    for batch in utils.progress(loader, desc="curation: teacher", total=len(loader)):
        if data.RGB not in batch:
            raise data.DataError(f"dataset samples have no `{data.RGB}` image (modalities: "
                                 f"{[k for k in batch if k not in ('label', 'id')]}); curation scores RGB.")
        embs.append(teacher.encode_image(batch[data.RGB]).float().cpu())
    image_emb = torch.cat(embs) if embs else torch.zeros(0, teacher.embed_dim)
    conf, pseudo = confidence(image_emb, text, teacher_logit_scale(teacher) if scale is None else scale)
    return conf, pseudo, image_emb


def teacher_logit_scale(teacher: Teacher) -> float:
    """The teacher's zero-shot logit scale s (`teacher.logit_scale`), or CLIP's 100 when it has none."""
    return float(getattr(teacher, "logit_scale", 100.0))


def superset_text(teacher: Teacher, cfg: "CurationConfig") -> torch.Tensor:
    """The teacher's prompt-ensembled text embeddings of `cfg`'s superset (what the pseudo-labels index), as
    `score_dataset` builds them: the superset, templates and optional descriptions files of `cfg`."""
    descriptions = load_descriptions(cfg.descriptions) if cfg.descriptions else None
    return prompt_ensemble(teacher, build_prompts(load_label_superset(cfg.superset), load_templates(cfg.templates),
                                                  descriptions))


def curate_dataset(teacher: Teacher, dataset: data.PairedDataset, cfg: "CurationConfig") -> CurationResult:
    """Score `dataset` with the teacher and select by `cfg` (files, mode, tau / fraction, scale).

    The one call notebooks use; `score_dataset` + `curate_by_confidence` are the parts.
    """
    superset = load_label_superset(cfg.superset)
    uncovered = superset_gaps(dataset.class_names, superset)
    if uncovered:
        log.warning("%s: %d of the dataset's %d class names are not in the label superset: %s. Their images can "
                    "never get a correct pseudo-label; add them to the superset file", cfg.superset, len(uncovered),
                    len(dataset.class_names), uncovered[:10])
    templates = load_templates(cfg.templates)
    descriptions = load_descriptions(cfg.descriptions) if cfg.descriptions else None
    conf, pseudo, _ = score_dataset(teacher, dataset, superset, templates, cfg.batch_size, cfg.scale, descriptions)
    result = curate_by_confidence(conf, pseudo, list(dataset.ids), superset, cfg.mode, cfg.tau, cfg.top_fraction)
    log.info("curation (%s, threshold %.3f): kept %d / %d images", result.mode, result.threshold,
             result.num_kept, result.total)
    for line in curation_warnings(result, dataset.class_names):
        log.warning(line)
    return result


def curation_warnings(result: CurationResult, class_names: Sequence[str]) -> list[str]:
    """Label-free signs that a curation looks wrong: keeping < 20 % or > 95 % of the images, or a dataset class
    that no kept image has as its pseudo-label."""
    out = []
    if result.total and result.kept_fraction < 0.2:
        out.append(f"curation keeps only {result.num_kept} / {result.total} images ({result.kept_fraction:.0%}): "
                   f"stage 1 may lack data; lower curation.tau or raise curation.top_fraction")
    if result.total and result.kept_fraction > 0.95:
        out.append(f"curation keeps {result.num_kept} / {result.total} images ({result.kept_fraction:.0%}): it "
                   f"removes almost nothing; raise curation.tau or use curation.mode top_fraction")
    kept = {_norm_name(n) for n in result.pseudo_names}
    missing = [c for c in class_names if _norm_name(c) not in kept]
    if missing and result.num_kept:
        out.append(f"no kept image has the pseudo-label of {len(missing)} class(es) {missing[:8]}: try "
                   f"curation.mode class_top_fraction (keeps the top share of every pseudo-class)")
    return out


def superset_gaps(class_names: Sequence[str], superset: Sequence[str]) -> list[str]:
    """The class names that the superset lacks (compared lower-case, underscores as spaces)."""
    have = {_norm_name(n) for n in superset}
    return [c for c in class_names if _norm_name(c) not in have]


def known_uninformative(dataset: Any) -> list[str]:
    """Ids the dataset marks as uninformative (the embedded benchmark's adapt meta.json); [] for other data."""
    return list((getattr(dataset, "meta", None) or {}).get("uninformative", {}))


def _norm_name(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def pseudo_label_correct(result: CurationResult, true_labels: Sequence[int | None],
                         dataset_class_names: Sequence[str], superset_names: Sequence[str]) -> list[bool]:
    """Per scored image (dataset order): its pseudo-label's superset name equals its true class name (compared
    lower-case, underscores as spaces); False for unknown labels (None or -1). Ground truth, for reports only."""
    if len(true_labels) != result.total:
        raise ValueError(f"{len(true_labels)} true labels for {result.total} scored images")
    pseudo_names = [_norm_name(superset_names[k]) for k in result.all_pseudo_labels]
    return [y is not None and y >= 0 and pseudo_names[i] == _norm_name(dataset_class_names[y])
            for i, y in enumerate(true_labels)]


def curation_report(result: CurationResult, true_labels: Sequence[int | None],
                    dataset_class_names: Sequence[str], superset_names: Sequence[str],
                    uninformative: Collection[str] = ()) -> dict[str, Any]:
    """Evaluate a curation with ground truth (used here only, never for selection).

    A pseudo-label is correct when its superset NAME equals the true class NAME (compared lower-case,
    underscores as spaces), so a superset larger than the dataset's classes is handled. Images with an
    unknown label (None or -1) are left out of the accuracies.

        kept_pseudo_acc      = mean_{i kept, y_i known} [name(pseudo_i) == name(y_i)]
        discarded_pseudo_acc = the same over the discarded images (None when there are none)
        classes_kept         = |{y_i : i kept, y_i known}|, of classes_total = the dataset's classes
        pseudo_classes_kept  = |{name(pseudo_i) : i kept} & dataset classes| (label-free coverage)
        uninformative        = {total: |U|, discarded: |U - kept|} for the ids U of frames known to be
                               uninformative (the embedded benchmark lists them; otherwise empty)

    Args:
        result: the curation to evaluate.
        true_labels: N ground-truth indices into `dataset_class_names`, dataset order (None / -1 unknown).
        dataset_class_names: the dataset's class names.
        superset_names: the superset the pseudo-labels index (normally `result.superset`).
        uninformative: ids of the scored images known to be uninformative (e.g. PairedFolder.meta's).

    Returns:
        {kept, total, kept_fraction, threshold, mode, kept_pseudo_acc, discarded_pseudo_acc,
        all_pseudo_acc, mean_conf_kept, mean_conf_discarded, classes_kept, classes_total, pseudo_classes_kept,
        uninformative, kept_per_pseudo_class}.
    """
    known = np.array([y is not None and y >= 0 for y in true_labels])
    correct = np.array(pseudo_label_correct(result, true_labels, dataset_class_names, superset_names))
    kept_mask = np.zeros(result.total, dtype=bool)
    kept_mask[result.kept] = True
    conf = np.asarray(result.confidences, dtype=np.float64)

    def mean_or_none(values: np.ndarray) -> float | None:
        return float(values.mean()) if len(values) else None

    per_class: dict[str, int] = {}
    for name in result.pseudo_names:
        per_class[name] = per_class.get(name, 0) + 1
    dataset_names = {_norm_name(n) for n in dataset_class_names}
    unin = set(uninformative)
    return {
        "kept": result.num_kept, "total": result.total, "kept_fraction": result.kept_fraction,
        "threshold": result.threshold, "mode": result.mode,
        "kept_pseudo_acc": mean_or_none(correct[kept_mask & known]),
        "discarded_pseudo_acc": mean_or_none(correct[~kept_mask & known]),
        "all_pseudo_acc": mean_or_none(correct[known]),
        "mean_conf_kept": mean_or_none(conf[kept_mask]),
        "mean_conf_discarded": mean_or_none(conf[~kept_mask]),
        "classes_kept": len({true_labels[i] for i in result.kept if known[i]}),
        "classes_total": len(dataset_class_names),
        "pseudo_classes_kept": len({_norm_name(n) for n in result.pseudo_names} & dataset_names),
        "uninformative": {"total": len(unin), "discarded": len(unin - set(result.ids))},
        "kept_per_pseudo_class": dict(sorted(per_class.items())),
    }


REQUIREMENTS: dict[str, tuple[str, float]] = {
    "removed_fraction": (">=", 0.15),
    "kept_pseudo_acc": (">=", 0.95),
    "classes_missing": ("<=", 0),
    "uninformative_discarded": (">=", 0.80),
}
"""What a default curation must do on a benchmark with uninformative frames, each as (operator, bound) on a value
of `requirement_values`: remove at least 15 % of adapt, keep pseudo-label accuracy >= 0.95 and every class, discard
at least 80 % of the uninformative frames. Measured with the adapt split's labels and the benchmark's list of
uninformative frames, never with eval."""


def requirement_values(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The values `REQUIREMENTS` bound, from a `curation_report` (None when the data cannot measure one):

        removed_fraction        = (total - kept) / total
        kept_pseudo_acc         = the report's (None without labels)
        classes_missing         = classes_total - classes_kept   (None when no image has a label)
        uninformative_discarded = |U discarded| / |U|   (None when no frame is known to be uninformative)
    """
    unin = report["uninformative"]
    return {"removed_fraction": (report["total"] - report["kept"]) / report["total"],
            "kept_pseudo_acc": report["kept_pseudo_acc"],
            "classes_missing": (None if report["all_pseudo_acc"] is None
                                else float(report["classes_total"] - report["classes_kept"])),
            "uninformative_discarded": unin["discarded"] / unin["total"] if unin["total"] else None}


def check_requirements(report: Mapping[str, Any],
                       requirements: Mapping[str, tuple[str, float]] = REQUIREMENTS) -> dict[str, dict[str, Any]]:
    """Each requirement against a `curation_report`: {name: {value, op, bound, met}}, `met` None when the data
    cannot measure the value (no labels, no known uninformative frames). `meets_requirements` reads it."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}
    values = requirement_values(report)
    out = {}
    for name, (op, bound) in requirements.items():
        if name not in values or op not in ops:
            raise ValueError(f"unknown requirement {name!r} {op!r}: names {list(values)}, operators {list(ops)}")
        v = values[name]
        out[name] = {"value": v, "op": op, "bound": bound, "met": None if v is None else bool(ops[op](v, bound))}
    return out


def meets_requirements(checks: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when no requirement of `check_requirements` fails (an unmeasurable one does not fail)."""
    return all(c["met"] is not False for c in checks.values())


def describe_requirements(checks: Mapping[str, Mapping[str, Any]]) -> str:
    """One line of `check_requirements`: `name value op bound: met / NOT met / not measurable; ...`."""
    verdicts = {True: "met", False: "NOT met", None: "not measurable"}
    return "; ".join(f"{name} {'n/a' if c['value'] is None else format(c['value'], '.3f')} {c['op']} "
                     f"{c['bound']:g}: {verdicts[c['met']]}" for name, c in checks.items())


def tau_sweep(result: CurationResult, ids: Sequence[str], true_labels: Sequence[int | None],
              dataset_class_names: Sequence[str], taus: Sequence[float],
              mode: str = "threshold", uninformative: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """The paper's curation ablation on the same scores: `curate_by_confidence` at each tau (threshold mode) or
    fraction (`top_fraction`, `class_top_fraction`), each evaluated with `curation_report`.

    Returns:
        {f"{tau:.2f}": {kept, kept_fraction, kept_pseudo_acc, kept_pseudo_acc_ci (95 % bootstrap over the kept
        images with a known label), discarded_pseudo_acc, classes_kept, uninformative_discarded (share of the
        uninformative frames discarded, None without any)}}.
    """
    from .stats import bootstrap_ci

    correct = np.array(pseudo_label_correct(result, true_labels, dataset_class_names, result.superset))
    known = np.array([y is not None and y >= 0 for y in true_labels])
    sweep = {}
    for tau in taus:
        kwargs = {"tau": tau} if mode == "threshold" else {"top_fraction": tau}
        r = curate_by_confidence(result.confidences, result.all_pseudo_labels, list(ids), result.superset, mode,
                                 **kwargs)
        rep = curation_report(r, true_labels, dataset_class_names, result.superset, uninformative)
        kept = np.zeros(r.total, dtype=bool)
        kept[r.kept] = True
        ci = bootstrap_ci(correct[kept & known]) if (kept & known).any() else None
        sweep[f"{tau:.2f}"] = {"kept": r.num_kept, "kept_fraction": r.num_kept / r.total,
                               "kept_pseudo_acc": rep["kept_pseudo_acc"],
                               "kept_pseudo_acc_ci": [ci["lo"], ci["hi"]] if ci else None,
                               "discarded_pseudo_acc": rep["discarded_pseudo_acc"],
                               "classes_kept": rep["classes_kept"],
                               "uninformative_discarded": (rep["uninformative"]["discarded"]
                                                           / rep["uninformative"]["total"]
                                                           if rep["uninformative"]["total"] else None)}
    return sweep


def extreme_examples(result: CurationResult, n: int = 8) -> dict[str, list[int]]:
    """Indices (dataset order) of the `n` most confident kept images and the `n` least confident discarded ones."""
    order = sorted(range(result.total), key=lambda i: -float(result.confidences[i]))
    kept = set(result.kept)
    return {"kept": [i for i in order if i in kept][:n], "discarded": [i for i in reversed(order) if i not in kept][:n]}
