"""Paired multi-modal samples, the generic paired-folder format, and modality encodings.

Every dataset in the workbench (the embedded benchmark, ScanNet, NYUv2, SUN RGB-D, EuroSAT-MS, your own
sensor data) returns the same `Sample`: one tensor per modality in physical units, a label or None, an id.

Raw tensor conventions (what loaders return):

| modality  | shape   | dtype   | unit                                        |
|-----------|---------|---------|---------------------------------------------|
| `rgb`     | 3xHxW   | float32 | [0, 1]                                      |
| `depth`   | 1xHxW   | float32 | metres, 0 = invalid / no return             |
| `thermal` | 1xHxW   | float32 | degrees Celsius                             |
| `swir`    | 3xHxW   | float32 | reflectance composite in [0, 1]             |
| other     | CxHxW   | float32 | [0, 1] for 8-bit files, else file value * scale |

`encode_modality` turns a raw non-RGB tensor into the 3-channel [0, 1] image an encoder takes; the
encoding (and its range) is part of every result's record because it changes results a lot.

Generic paired folder (point the workbench at your own sensor data by writing this)::

    root/
      classes.txt          one class name per line; line i is label i
      labels.csv           header `id,label`; label = a class name from classes.txt, or empty if unknown
      meta.json            optional: {"modalities": {"depth": {"scale": 0.001, "offset": 0.0, "unit": "m"}}}
      rgb/<id>.png         8-bit RGB
      depth/<id>.png       16-bit, millimetres by default (0 = invalid)
      thermal/<id>.png     16-bit, centi-kelvin by default (value * 0.01 - 273.15 = degrees C)
      <modality>/<id>.png  any other sensor: 8-bit (-> [0, 1]) or 16-bit with its scale in meta.json

Two layouts reach a run (`loaders.load_dataset("paired_folder", root, split=...)` detects which):

* **split folders**: `root/adapt/` and `root/eval/`, each a paired folder as above (what `render` writes);
* **one folder**: `root/classes.txt` directly in root; `split="adapt" | "eval"` is a deterministic split of its
  samples by `loaders.split_indices` (options `split_fractions`, default (0.8, 0.2), and `split_seed`, default 0,
  exactly as for the real datasets).

Both present, or neither, raises `DataError`.

Validity rules (every violation raises `DataError` naming the file, the sample id and the fix):

* a modality with a physical scale (depth, thermal, or any with a scale in meta.json) must be a
  single-channel 16-bit PNG: an 8-bit or 3-channel file is a visualisation, not a measurement;
* depth: a pixel of 0 is a sensor hole ("no return") and is legal, in any number; a frame whose pixels are
  ALL 0 carries no measurement and is broken; NaN / inf cannot come from a 16-bit PNG, and float files
  (float TIFF, .npy, .mat) that hold them are broken (store holes as 0);
* any other modality: NaN / inf are broken (`check_finite`);
* classes.txt: UTF-8, not empty, no repeated name; labels.csv: UTF-8, a header with `id`, at least one
  row, unique non-empty ids, labels from classes.txt; every id has a file in every modality folder;
* geometry: every non-RGB frame has its RGB frame's size (W x H, read from the image headers when the folder is
  opened, no decoding). A mismatch is refused unless the loader option `align="resize_to_rgb"` asks to resize
  non-RGB frames to the RGB size (nearest, so depth holes stay 0) when they are loaded.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

RGB = "rgb"

# Default storage scales for 16-bit PNGs: physical = value * scale + offset.
DEFAULT_SCALES: dict[str, dict[str, Any]] = {
    "depth": {"scale": 0.001, "offset": 0.0, "unit": "m"},
    "thermal": {"scale": 0.01, "offset": -273.15, "unit": "C"},
}

# Fixed encoding ranges (physical units) used when turning a 1-channel modality into an encoder image
# (3-channel modalities such as rgb and the swir composite use the identity encoding).
# A fixed range keeps the object's depth structure; per-frame min-max over a frame dominated by
# floor and background squeezes the object into a few grey levels.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "depth": (0.5, 6.0),
    "thermal": (10.0, 45.0),
}


class DataError(ValueError):
    """Bad input data. The message names the offending file and says how to fix it."""


def read_text_file(path: str | os.PathLike, what: str, fix: str) -> str:
    """The UTF-8 text of a small input file (class list, labels, meta); DataError naming the file and the
    `fix` when it is missing or not UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found. {fix}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as "
                        f"UTF-8. {fix}") from exc


def check_finite(x: np.ndarray | torch.Tensor, where: str | os.PathLike, sample_id: str, modality: str) -> None:
    """DataError naming `where` (file, or file[index]) and the sample when `x` holds NaN or inf."""
    bad = ~torch.isfinite(x) if isinstance(x, torch.Tensor) else ~np.isfinite(x)
    if bad.any():
        raise DataError(f"{where}: {modality} holds NaN or inf ({int(bad.sum())} values, sample {sample_id!r}). "
                        f"Store invalid pixels as 0 (depth) or a valid value, re-export the frame, or drop the "
                        f"sample.")


def check_depth(metres: np.ndarray | torch.Tensor, where: str | os.PathLike, sample_id: str) -> None:
    """Reject a broken depth frame; keep sensor holes.

    Rule (every loader): 0 = no reading (a hole), legal in any number; a frame whose pixels are all 0 (no
    valid pixel) or that holds NaN / inf (possible only in float formats: .mat, .npy, float TIFF) is broken.

    Raises:
        DataError: naming `where` (the file, or `file[index]` for containers) and the sample id.
    """
    check_finite(metres, where, sample_id, "depth")
    if not (metres > 0).any():
        raise DataError(f"{where}: depth is all zeros (sample {sample_id!r}: no valid pixel; 0 means no "
                        f"reading). Re-export the frame, or drop the sample.")


@dataclass
class Sample:
    """One paired observation.

    Attributes:
        images: modality name -> float32 CxHxW tensor in the units of the module docstring's table.
        label: class index into the dataset's `class_names`, or None when unknown / unlabeled.
        id: a stable identifier (file stem, frame id) unique within the dataset.
    """

    images: dict[str, torch.Tensor]
    label: int | None
    id: str


@dataclass(frozen=True)
class ModalityEncoding:
    """How a raw modality tensor becomes a 3-channel encoder input in [0, 1].

    Attributes:
        kind: `replicate` (clip to `range`, scale to [0, 1], copy to 3 channels), `colormap` (same
            normalisation, then a matplotlib colormap, e.g. turbo / jet as in many RGB-D papers),
            `minmax` (per-image min-max over valid pixels, replicated; shown for comparison only),
            or `identity` (already 3-channel [0, 1], e.g. RGB and SWIR composites).
        range: (low, high) in physical units for `replicate` / `colormap`; None uses DEFAULT_RANGES.
        colormap: matplotlib colormap name for `colormap`.
        invert: map near -> bright (`1 - x`) after normalisation, common for depth displays.
    """

    kind: str = "replicate"
    range: tuple[float, float] | None = None
    colormap: str = "turbo"
    invert: bool = False

    def describe(self, modality: str) -> str:
        """A short string recorded next to every result, e.g. `depth:replicate[0.5,6.0]`."""
        if self.kind in ("identity", "minmax"):
            return f"{modality}:{self.kind}"
        lo, hi = self.range or DEFAULT_RANGES.get(modality, (0.0, 1.0))
        cm = f":{self.colormap}" if self.kind == "colormap" else ""
        inv = ":inv" if self.invert else ""
        return f"{modality}:{self.kind}{cm}[{lo:g},{hi:g}]{inv}"


def default_encoding(modality: str) -> ModalityEncoding:
    """`identity` for 3-channel modalities (rgb, swir), `replicate` with the fixed range otherwise."""
    return ModalityEncoding(kind="identity") if modality in (RGB, "swir") else ModalityEncoding()


def encode_modality(x: torch.Tensor, modality: str, encoding: ModalityEncoding | None = None) -> torch.Tensor:
    """Turn a raw modality tensor (CxHxW or BxCxHxW) into a 3-channel [0, 1] encoder input.

    `replicate`: y = clip((x - lo) / (hi - lo), 0, 1) copied to 3 channels; invalid depth (0) maps to 0.

    >>> encode_modality(torch.full((1, 2, 2), 3.25), "depth").shape
    torch.Size([3, 2, 2])
    """
    enc = encoding or default_encoding(modality)
    batched = x.dim() == 4
    xb = x if batched else x.unsqueeze(0)
    if enc.kind == "identity":
        if xb.shape[1] != 3:
            raise ValueError(f"identity encoding needs 3 channels, {modality} has {xb.shape[1]}")
        out = xb.clamp(0, 1)
    else:
        if xb.shape[1] != 1:
            xb = xb.mean(dim=1, keepdim=True)
        valid = torch.isfinite(xb) & ((xb != 0) if modality == "depth" else torch.ones_like(xb, dtype=torch.bool))
        if enc.kind == "minmax":
            big = torch.finfo(xb.dtype).max
            lo = torch.where(valid, xb, big).amin(dim=(1, 2, 3), keepdim=True)
            hi = torch.where(valid, xb, -big).amax(dim=(1, 2, 3), keepdim=True)
            y = (xb - lo) / (hi - lo).clamp_min(1e-6)
        elif enc.kind in ("replicate", "colormap"):
            lo, hi = enc.range or DEFAULT_RANGES.get(modality, (0.0, 1.0))
            y = (xb - lo) / (hi - lo)
        else:
            raise ValueError(f"unknown encoding kind {enc.kind!r}; use replicate, colormap, minmax or identity")
        y = y.clamp(0, 1)
        if enc.invert:
            y = 1 - y
        y = torch.where(valid, y, torch.zeros_like(y))
        if enc.kind == "colormap":
            out = _apply_colormap(y, enc.colormap)
        else:
            out = y.expand(-1, 3, -1, -1)
    out = out.float().contiguous()
    return out if batched else out[0]


def encoder_inputs(batch: dict[str, Any], modalities: Sequence[str],
                   encodings: dict[str, ModalityEncoding] | None = None,
                   size: int | None = None) -> dict[str, torch.Tensor]:
    """Collated batch -> {modality: Bx3xSxS encoder input in [0, 1]} via `encode_modality`.

    Resizing happens after encoding (bilinear), so a colormap or range is applied at native resolution.
    """
    encodings = encodings or {}
    out = {}
    for m in modalities:
        x = encode_modality(batch[m], m, encodings.get(m))
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
        out[m] = x
    return out


def _apply_colormap(y: torch.Tensor, name: str) -> torch.Tensor:
    from matplotlib import colormaps

    lut = torch.from_numpy(colormaps[name](np.linspace(0, 1, 256))[:, :3]).float()
    idx = (y[:, 0] * 255).round().long().clamp(0, 255)
    return lut[idx].permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------
# Dataset protocol and collation
# ----------------------------------------------------------------------------------------------


class PairedDataset(torch.utils.data.Dataset):
    """Base class of every loader: `modalities`, `class_names`, `ids`, `labels`, and `__getitem__ -> Sample`.

    Subclasses fill `ids` (list[str]) and `labels` (list[int | None]) in `__init__` and implement `load`.
    """

    modalities: tuple[str, ...] = ()
    class_names: list[str] = []
    name: str = "dataset"

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.labels: list[int | None] = []

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def text_names(self) -> list[str]:
        """Class names phrased for text prompts (loaders may override, e.g. EuroSAT's "annual crop land")."""
        return getattr(self, "_text_names", None) or list(self.class_names)

    @text_names.setter
    def text_names(self, names: Sequence[str]) -> None:
        self._text_names = list(names)

    def __getitem__(self, index: int) -> Sample:
        return self.load(index)

    def load(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "torch.utils.data.Subset":
        """A torch Subset that keeps `class_names` / `modalities` reachable via `.dataset`."""
        return torch.utils.data.Subset(self, list(indices))

    def describe(self) -> dict[str, Any]:
        """Summary recorded in metrics: name, size, modalities, classes."""
        return {"name": self.name, "size": len(self), "modalities": list(self.modalities),
                "classes": len(self.class_names)}


def collate_samples(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stack a list of Samples: {modality: BxCxHxW, "label": LongTensor (-1 = unknown), "id": list[str]}."""
    if not samples:
        raise ValueError("empty batch")
    out: dict[str, Any] = {m: torch.stack([s.images[m] for s in samples]) for m in samples[0].images}
    out["label"] = torch.tensor([-1 if s.label is None else s.label for s in samples], dtype=torch.long)
    out["id"] = [s.id for s in samples]
    return out


# ----------------------------------------------------------------------------------------------
# Image file I/O
# ----------------------------------------------------------------------------------------------


def read_pixels(path: str | os.PathLike, fix: str) -> np.ndarray:
    """Decode an image file with PIL into an array; DataError naming the file (and the `fix`) when it is
    missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found. {fix}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im)
    except Exception as exc:  # PIL raises many types for truncated / corrupt files
        raise DataError(f"{path}: cannot decode image ({exc}). {fix}") from exc


def read_image(path: str | os.PathLike, modality: str, scale: dict[str, Any] | None = None,
               expect_channels: int | None = None) -> torch.Tensor:
    """Read one image file into a raw float32 CxHxW tensor in the modality's physical units.

    8-bit files map to [0, 1]; 16-bit files map through `value * scale + offset` (DEFAULT_SCALES by
    modality). A modality with a physical scale (`scale` given, or depth / thermal) must be a single-channel
    16-bit (or float) file; depth is checked with `check_depth`, every modality with `check_finite` (the
    module docstring's rules; the sample id is the file stem). Raises DataError naming the file when it is
    missing, unreadable, of the wrong kind, or broken.
    """
    path = Path(path)
    arr = read_pixels(path, "Every modality folder needs a readable file for each id in labels.csv: re-export the "
                            "file or remove its id from labels.csv.")
    scaled = scale is not None or modality in DEFAULT_SCALES
    if scaled and (arr.ndim != 2 or arr.dtype in (np.uint8, bool)):
        channels = 1 if arr.ndim == 2 else arr.shape[-1]
        unit = DEFAULT_SCALES.get(modality, {}).get("unit", "the unit of its meta.json scale")
        raise DataError(f"{path}: {modality} image is {channels}-channel {arr.dtype}, expected single-channel 16-bit "
                        f"({unit} via the scale in meta.json). An 8-bit or colour file is a visualisation, not a "
                        f"measurement: export the raw {modality} as 16-bit single-channel PNG.")
    if arr.dtype == np.uint8 or arr.dtype == bool:
        ten = torch.from_numpy(arr.astype(np.float32) / 255.0)
    elif arr.dtype in (np.uint16, np.int32, np.int16, np.uint32):
        s = scale or DEFAULT_SCALES.get(modality, {"scale": 1.0 / 65535.0, "offset": 0.0})
        ten = torch.from_numpy(arr.astype(np.float32) * float(s["scale"]) + float(s.get("offset", 0.0)))
        if modality == "depth":
            ten = torch.where(torch.from_numpy(arr == 0), torch.zeros_like(ten), ten)
    elif arr.dtype in (np.float32, np.float64):
        ten = torch.from_numpy(arr.astype(np.float32))
    else:
        raise DataError(f"{path}: unsupported pixel type {arr.dtype}. Save 8-bit or 16-bit PNG.")
    ten = ten.unsqueeze(0) if ten.dim() == 2 else ten.permute(2, 0, 1)
    if modality == RGB and ten.shape[0] == 4:
        ten = ten[:3]
    if expect_channels is not None and ten.shape[0] != expect_channels:
        raise DataError(f"{path}: {modality} image has {ten.shape[0]} channels, expected {expect_channels}. "
                        f"Save {modality} as {'RGB' if expect_channels == 3 else 'single-channel'} PNG.")
    if modality == "depth":
        check_depth(ten, path, path.stem)
    elif arr.dtype.kind == "f":
        check_finite(ten, path, path.stem, modality)
    return ten.contiguous()


def write_image(path: str | os.PathLike, x: np.ndarray | torch.Tensor, modality: str,
                scale: dict[str, Any] | None = None) -> None:
    """Write a raw modality array (HxW, HxWxC or CxHxW) as PNG: rgb as 8-bit, depth/thermal as 16-bit.

    Inverse of `read_image` up to quantisation (1 mm for depth, 0.01 K for thermal, 1/255 for 8-bit).
    """
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if modality in DEFAULT_SCALES or scale is not None:
        s = scale or DEFAULT_SCALES[modality]
        val = np.round((arr.astype(np.float64) - float(s.get("offset", 0.0))) / float(s["scale"]))
        if modality == "depth":
            val = np.where(arr > 0, val, 0)
        img = Image.fromarray(np.clip(val, 0, 65535).astype(np.uint16))
    else:
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# ----------------------------------------------------------------------------------------------
# Generic paired folder
# ----------------------------------------------------------------------------------------------


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Read one class name per line; blank lines and `#` comments are skipped.

    Raises DataError naming the file when it is empty or repeats a name.
    """
    path = Path(path)
    text = read_text_file(path, "class list", "Write one class name per line.")
    names = [ln.strip() for ln in text.lstrip("\ufeff").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DataError(f"{path}: class list is empty. Write one class name per line.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: duplicate class names {dup}. Each class must appear once: delete the repeated "
                        f"lines (line i is label i, so check which index your labels use).")
    return names


ALIGN_MODES: tuple[str, ...] = ("refuse", "resize_to_rgb")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(W, H) of an image file from its header (PIL opens lazily: nothing is decoded); DataError naming the file
    when it is not an image."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # PIL raises many types for files that are not images
        raise DataError(f"{path}: cannot decode image header ({exc}); re-export the file or remove its id from "
                        f"labels.csv.") from exc


class PairedFolder(PairedDataset):
    """The generic paired-folder format (see the module docstring).

    Args:
        root: the folder holding classes.txt, labels.csv and one sub-folder per modality.
        modalities: which modality folders to load; default: every sub-folder that holds files.
        size: optional (H, W) to resize every modality to (bilinear for rgb, nearest for the rest).
        class_names: evaluate on this subset of classes.txt, in this order (label i = class_names[i]); samples of
            the other classes become unlabeled. None keeps classes.txt.
        align: `refuse` (default): a non-RGB frame whose size differs from its RGB frame's raises DataError when
            the folder is opened; `resize_to_rgb`: such frames are resized to the RGB size (nearest) on load.
    """

    name = "paired_folder"

    def __init__(self, root: str | os.PathLike, modalities: Sequence[str] | None = None,
                 size: tuple[int, int] | None = None, class_names: Sequence[str] | None = None,
                 align: str = "refuse") -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder does not exist. Check the path: a paired folder holds "
                            f"classes.txt, labels.csv and <modality>/<id>.png (or adapt/ and eval/, each holding "
                            f"them).")
        if align not in ALIGN_MODES:
            raise DataError(f"{self.root}: align={align!r}; choose one of {list(ALIGN_MODES)} (recipe: "
                            f"data.options.align).")
        self.align = align
        file_classes = read_class_names(self.root / "classes.txt")
        self.meta: dict[str, Any] = _read_meta(self.root / "meta.json")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.modalities = tuple(modalities) if modalities else tuple(sorted(found, key=lambda m: (m != RGB, m)))
        missing = [m for m in self.modalities if m not in found]
        if missing:
            raise DataError(f"{self.root}: no folder for modalities {missing}. "
                            f"Expected {self.root}/<modality>/<id>.png.")
        self.size = size
        index = {c: i for i, c in enumerate(file_classes)}
        labels_csv = self.root / "labels.csv"
        text = read_text_file(labels_csv, "label file", "Write a CSV with header `id,label`.")
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise DataError(f"{labels_csv}: needs a header row with an `id` column (and `label`).")
        lines: dict[str, list[int]] = {}
        for row_no, row in enumerate(reader, start=2):
            sid = (row.get("id") or "").strip()
            lab = (row.get("label") or "").strip()
            if not sid:
                raise DataError(f"{labels_csv}: line {row_no} has an empty id. Give every row an id (the file "
                                f"stem of its images) or delete the row.")
            if lab and lab not in index:
                raise DataError(f"{labels_csv}: line {row_no} label {lab!r} is not in classes.txt. Add the class "
                                f"to classes.txt or fix the label.")
            lines.setdefault(sid, []).append(row_no)
            if len(lines[sid]) == 1:
                self.ids.append(sid)
                self.labels.append(index[lab] if lab else None)
        repeated = {sid: rows for sid, rows in lines.items() if len(rows) > 1}
        if repeated:
            shown = "; ".join(f"{sid!r} on lines {rows}" for sid, rows in list(repeated.items())[:5])
            raise DataError(f"{labels_csv}: {len(repeated)} id(s) appear more than once ({shown}"
                            f"{'; ...' if len(repeated) > 5 else ''}). Ids must be unique: keep one row per id.")
        if not self.ids:
            raise DataError(f"{labels_csv}: no samples (only a header). Add one `id,label` row per sample "
                            f"(label may be empty when unknown).")
        self.class_names = file_classes if class_names is None else self._select_classes(file_classes, class_names)
        self._check_pairs()
        self._check_geometry()

    def _select_classes(self, file_classes: list[str], class_names: Sequence[str]) -> list[str]:
        """Re-map labels to `class_names` (a subset of classes.txt); other classes' samples become unlabeled."""
        wanted = list(class_names)
        path = self.root / "classes.txt"
        unknown = [c for c in wanted if c not in file_classes]
        if unknown:
            raise DataError(f"{path}: class names {unknown} are not in classes.txt (it lists {len(file_classes)}: "
                            f"{file_classes[:10]}{' ...' if len(file_classes) > 10 else ''}). Fix the names in "
                            f"data.classes (-p classes), or add them to classes.txt.")
        dup = sorted({c for c in wanted if wanted.count(c) > 1})
        if dup or not wanted:
            raise DataError(f"{path}: data.classes {wanted} is empty or repeats {dup}. Give each class once.")
        new_index = {file_classes.index(c): i for i, c in enumerate(wanted)}
        before = sum(y is not None for y in self.labels)
        self.labels = [None if y is None else new_index.get(y) for y in self.labels]
        dropped = before - sum(y is not None for y in self.labels)
        if dropped:
            log.info("%s: %d labelled samples are outside the %d selected classes and are unlabeled", self.root,
                     dropped, len(wanted))
        return wanted

    def _check_pairs(self) -> None:
        listed = set(self.ids)
        for m in self.modalities:
            have = {p.stem for p in (self.root / m).glob("*.png")}
            extra = sorted(have - listed)
            if extra:
                log.warning("%s: %d file(s) are not listed in labels.csv and are ignored (e.g. %s.png)",
                            self.root / m, len(extra), extra[0])
            missing = [i for i in self.ids if i not in have]
            if missing:
                others = [o for o in self.modalities if o != m]
                raise DataError(f"{self.root / m / (missing[0] + '.png')}: missing {m} file for id {missing[0]!r} "
                                f"({len(missing)} ids lack a {m} file"
                                f"{' although they have ' + '/'.join(others) if others else ''}). "
                                f"Add the file or drop the id from labels.csv.")

    def _check_geometry(self) -> None:
        """By image headers (W x H, nothing decoded): every non-RGB frame against its RGB frame (see the module
        docstring), then, without `size`, every RGB frame (or, without RGB, every frame of each modality) against
        the first id's, since the frames of one modality are batched together."""
        start = time.perf_counter()
        sizes = {m: [image_size(self.root / m / f"{sid}.png") for sid in self.ids] for m in self.modalities}
        log.debug("%s: geometry of %d ids x %d modalities read in %.2f s", self.root, len(self.ids),
                  len(self.modalities), time.perf_counter() - start)
        others = [m for m in self.modalities if m != RGB]
        bad = [i for i in range(len(self.ids)) if any(sizes[m][i] != sizes[RGB][i] for m in others)] \
            if RGB in self.modalities else []
        if bad:
            m = next(m for m in others if sizes[m][bad[0]] != sizes[RGB][bad[0]])
            path = self.root / m / f"{self.ids[bad[0]]}.png"
            (w, h), (rw, rh) = sizes[m][bad[0]], sizes[RGB][bad[0]]
            if self.align != "resize_to_rgb":
                raise DataError(f"{path}: {m} frame is {w}x{h} (W x H) but its rgb frame {self.root / RGB / path.name}"
                                f" is {rw}x{rh}; {len(bad)} of {len(self.ids)} ids have a non-RGB frame whose size "
                                f"differs from their RGB frame. Resize those files to the RGB size (registered to the "
                                f"RGB camera), or set the loader option align='resize_to_rgb' (recipe: data.options: "
                                f"{{align: resize_to_rgb}}) to resize them to the RGB size (nearest) on load.")
            log.info("%s: %d of %d ids have non-RGB frames of another size than their RGB frame (e.g. %s is %dx%d, "
                     "rgb %dx%d): resized to the RGB size (nearest), align='resize_to_rgb'", self.root, len(bad),
                     len(self.ids), path, w, h, rw, rh)
        if self.size is not None:
            return
        for m in ([RGB] if RGB in self.modalities else self.modalities):
            odd = [i for i, wh in enumerate(sizes[m]) if wh != sizes[m][0]]
            if odd:
                (w, h), (w0, h0) = sizes[m][odd[0]], sizes[m][0]
                raise DataError(f"{self.root / m / (self.ids[odd[0]] + '.png')}: {m} frame is {w}x{h} (W x H) but "
                                f"{self.root / m / (self.ids[0] + '.png')} is {w0}x{h0}; {len(odd)} of "
                                f"{len(self.ids)} {m} frames differ from the first one's size, so they cannot be "
                                f"batched. Resize the files to one size, or set the loader option size (recipe: "
                                f"data.options: {{size: [{h0}, {w0}]}}) to resize every frame on load.")

    def modality_scale(self, modality: str) -> dict[str, Any] | None:
        return self.meta.get("modalities", {}).get(modality)

    def load(self, index: int) -> Sample:
        sid = self.ids[index]
        images = {}
        for m in self.modalities:
            images[m] = read_image(self.root / m / f"{sid}.png", m, self.modality_scale(m),
                                   expect_channels=3 if m == RGB else None)
        if self.align == "resize_to_rgb" and RGB in images:
            hw = tuple(images[RGB].shape[-2:])
            images = {m: x if m == RGB or tuple(x.shape[-2:]) == hw else
                      torch.nn.functional.interpolate(x[None], size=hw, mode="nearest")[0]
                      for m, x in images.items()}
        if self.size is not None:
            smooth = {"mode": "bilinear", "align_corners": False, "antialias": True}
            images = {m: x if tuple(x.shape[-2:]) == tuple(self.size) else
                      torch.nn.functional.interpolate(x[None], size=self.size,
                                                      **(smooth if m == RGB else {"mode": "nearest"}))[0]
                      for m, x in images.items()}
        return Sample(images=images, label=self.labels[index], id=sid)


def _read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a paired folder ({} when absent); DataError naming the file when it is malformed."""
    if not path.exists():
        return {}
    fix = 'Write e.g. {"modalities": {"depth": {"scale": 0.001, "offset": 0.0, "unit": "m"}}}, or delete it.'
    try:
        meta = json.loads(read_text_file(path, "meta file", fix))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}). {fix}") from exc
    mods = meta.get("modalities", {}) if isinstance(meta, dict) else None
    if not isinstance(mods, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("scale"), (int, float)) and
            isinstance(v.get("offset", 0.0), (int, float)) for v in mods.values()):
        raise DataError(f"{path}: `modalities` must map each modality to {{\"scale\": number, \"offset\": "
                        f"number}}. {fix}")
    return meta


def write_paired_folder(root: str | os.PathLike, samples: Sequence[Sample] | Any, class_names: Sequence[str],
                        meta: dict[str, Any] | None = None) -> Path:
    """Write samples in the generic paired-folder format, atomically (a temp folder renamed into place).

    `samples` is any iterable of Sample whose `images` hold raw tensors or arrays in the units above.
    Returns `root`. An existing `root` is replaced only after the new folder is complete.
    """
    root = Path(root)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        (tmp / "classes.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
        rows = []
        for s in samples:
            for m, x in s.images.items():
                write_image(tmp / m / f"{s.id}.png", x, m)
            rows.append((s.id, "" if s.label is None else class_names[s.label]))
        with (tmp / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "label"])
            w.writerows(rows)
        full_meta = {"modalities": {m: DEFAULT_SCALES[m] for m in DEFAULT_SCALES if (tmp / m).is_dir()}}
        full_meta.update(meta or {})
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


# ----------------------------------------------------------------------------------------------
# Decoding once: stage 1 and 2 read every image each epoch
# ----------------------------------------------------------------------------------------------


class InMemoryPairedDataset(PairedDataset):
    """A PairedDataset decoded once into memory (same ids, labels, classes, text names and Samples).

    Args:
        dataset: the source dataset (e.g. a `data.PairedFolder` of PNG files).
        modalities: the modalities to keep (default: all of the source's); fewer means less to crop per step.

    >>> fast = InMemoryPairedDataset(slow, ("rgb", "depth"))          # doctest: +SKIP
    """

    def __init__(self, dataset: PairedDataset, modalities: Sequence[str] | None = None) -> None:
        super().__init__()
        self.modalities = tuple(modalities or dataset.modalities)
        missing = [m for m in self.modalities if m not in dataset.modalities]
        if missing:
            raise DataError(f"dataset {dataset.name} lacks modalities {missing} (it has "
                                 f"{list(dataset.modalities)})")
        self.name = dataset.name
        self.class_names = list(dataset.class_names)
        self.text_names = dataset.text_names
        self.ids, self.labels = list(dataset.ids), list(dataset.labels)
        self.samples = []
        for i in range(len(dataset)):
            sample = dataset[i]
            self.samples.append(Sample({m: sample.images[m] for m in self.modalities}, sample.label, sample.id))

    def load(self, index: int) -> Sample:
        return self.samples[index]


def preload(dataset: PairedDataset, modalities: Sequence[str] | None = None) -> InMemoryPairedDataset:
    """Decode every sample of `dataset` once (see `InMemoryPairedDataset`); logs the time it took."""
    start = time.perf_counter()
    out = InMemoryPairedDataset(dataset, modalities)
    log.info("preloaded %d samples of %s (%s) in %.1f s", len(out), out.name, list(out.modalities),
             time.perf_counter() - start)
    return out
