"""Loaders for the real RGB-D and multispectral datasets EdgeVL uses, each in its original on-disk format.

Every loader subclasses `data.PairedDataset` and returns `data.Sample` with raw tensors in data.py's units
(rgb 3xHxW in [0, 1], depth 1xHxW in metres with 0 = invalid, swir 3xHxW in [0, 1]), so a notebook switches
from the embedded benchmark to real data by changing one name:

>>> ds = load_dataset("sunrgbd", "/data/SUNRGBD", split="eval", size=(224, 224))  # doctest: +SKIP
>>> ds[0].images["depth"].shape  # doctest: +SKIP
torch.Size([1, 224, 224])

| name            | class                  | modalities  | label                          |
|-----------------|------------------------|-------------|--------------------------------|
| `scannet`       | `ScanNetFrames`        | rgb, depth  | scene type of the scan         |
| `nyuv2`         | `NYUDepthV2`           | rgb, depth  | scene type of the frame        |
| `sunrgbd`       | `SUNRGBD`              | rgb, depth  | scene type (scene.txt)         |
| `eurosat`       | `EuroSATMS`            | rgb, swir   | land-cover class (folder name) |
| `paired_folder` | `data.PairedFolder`    | any         | labels.csv                     |
| `embedded`      | `data.PairedFolder` on `render.build_benchmark(...)` | rgb, depth, thermal | object class |

Every loader also sets `text_names` (class names phrased for CLIP prompts) and `split_groups` (what must not
be split across adapt / eval: the ScanNet scan, the NYU scene; None when samples are independent).
Bad input raises `data.DataError` naming the file and the fix. Depth rule, every loader (`data.check_depth`):
0 is a sensor hole ("no reading") and legal in any number; a frame with no valid pixel (all 0), or with NaN / inf
(only NYUv2's float .mat can hold them), is broken and raises with the file and the sample id.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .data import RGB, DataError, PairedDataset, PairedFolder, Sample, check_depth, check_finite, read_pixels

log = logging.getLogger(__name__)

DEPTH = "depth"
SWIR = "swir"

# ----------------------------------------------------------------------------------------------
# Shared helpers: file decoding, checks, resizing, scene labels
# ----------------------------------------------------------------------------------------------


def _rgb_tensor(arr: np.ndarray, path: Path | str) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32 in [0, 1]; an alpha channel is dropped, other channel counts are errors."""
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.dtype != np.uint8 or channels not in (3, 4):
        raise DataError(f"{path}: colour image has {channels} channel(s) of {arr.dtype}, expected 8-bit RGB. "
                        f"Convert it to an 8-bit RGB JPEG/PNG.")
    return torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _depth_tensor(metres: np.ndarray, path: Path | str, sample_id: str) -> torch.Tensor:
    """HxW float metres -> 1xHxW float32, rejecting broken frames (`data.check_depth`: all 0, NaN / inf)."""
    if metres.ndim != 2:
        raise DataError(f"{path}: depth of sample {sample_id!r} has shape {metres.shape}, expected a single-channel "
                        f"HxW map. Export depth as a 16-bit single-channel PNG.")
    check_depth(metres, path, sample_id)
    return torch.from_numpy(metres.astype(np.float32))[None].contiguous()


def _uint16_depth(arr: np.ndarray, path: Path) -> np.ndarray:
    """Check that a decoded depth PNG is 16-bit single-channel and return it as uint16."""
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.int32) or arr.min() < 0 or arr.max() > 65535:
        raise DataError(f"{path}: depth PNG is {arr.dtype} with shape {arr.shape}, expected 16-bit "
                        f"single-channel millimetres. Use the dataset's original depth files, not a visualisation.")
    return arr.astype(np.uint16)


def _resize(x: torch.Tensor, size: tuple[int, int], modality: str) -> torch.Tensor:
    """Resize CxHxW to `size` (H, W): antialiased bilinear for images, nearest for depth (keeps 0 = invalid)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if modality in (RGB, SWIR):
        return torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                                               antialias=True)[0].clamp(0, 1)
    return torch.nn.functional.interpolate(x[None], size=size, mode="nearest")[0]


def _select_modalities(requested: Sequence[str] | None, available: tuple[str, ...], where: str) -> tuple[str, ...]:
    if requested is None:
        return available
    unknown = [m for m in requested if m not in available]
    if unknown or not requested:
        raise DataError(f"{where}: modalities {list(requested)} not available; choose from {list(available)}.")
    return tuple(requested)


def text_name(class_name: str) -> str:
    """A class name phrased for a CLIP prompt: `living_room` -> `living room`, `bedroom/hotel` -> `bedroom or hotel`.

    >>> text_name("storage/basement/garage")
    'storage or basement or garage'
    """
    return re.sub(r"\s*/\s*", " or ", class_name.replace("_", " ")).strip()


class _SceneLabels:
    """Maps raw scene-type strings to label indices: optional `mapping`, then `class_names`, else `others` or None."""

    def __init__(self, class_names: Sequence[str], mapping: Mapping[str, str | None] | None,
                 others: str | None, where: str) -> None:
        self.index = {c: i for i, c in enumerate(class_names)}
        if len(self.index) != len(class_names):
            raise DataError(f"{where}: class list repeats a name: {list(class_names)}.")
        if others is not None and others not in self.index:
            raise DataError(f"{where}: others={others!r} is not in the class list {list(class_names)}.")
        self.mapping = dict(mapping or {})
        self.others = others
        self.unmatched: dict[str, int] = {}

    def __call__(self, raw: str | None) -> int | None:
        if raw is None:
            return None
        name = self.mapping.get(raw, raw)
        if name is None:
            return None
        if name in self.index:
            return self.index[name]
        self.unmatched[raw] = self.unmatched.get(raw, 0) + 1
        return None if self.others is None else self.index[self.others]

    def report(self, dataset: str) -> None:
        if self.unmatched:
            target = f"class {self.others!r}" if self.others else "label None"
            log.warning("%s: %d scene types are not in the class list and got %s: %s", dataset,
                        len(self.unmatched), target, dict(sorted(self.unmatched.items())))


# ----------------------------------------------------------------------------------------------
# ScanNet (SensReader export)
# ----------------------------------------------------------------------------------------------

# The 21 ScanNet scene types in the order EdgeVL uses (ramdrop/edgevl dataset/scannet/scannet.py), which is
# ScanNet's `sceneType` values lower-cased with spaces around "/" removed (see `scannet_scene_name`).
SCANNET_SCENE_TYPES: tuple[str, ...] = (
    "apartment", "bathroom", "bedroom/hotel", "bookstore/library", "classroom", "closet", "computer cluster",
    "conference room", "copy/mail room", "dining room", "game room", "gym", "hallway", "kitchen", "laundry room",
    "living room/lounge", "lobby", "office", "stairs", "storage/basement/garage", "misc",
)


def scannet_scene_name(raw: str) -> str:
    """Normalise a ScanNet `sceneType` value to EdgeVL's class name.

    Lower-case, no spaces around "/", no trailing "." (`Misc.`), `ComputerCluster` -> `computer cluster`.

    >>> scannet_scene_name("Living room / Lounge")
    'living room/lounge'
    """
    name = re.sub(r"\s*/\s*", "/", raw.strip().lower()).rstrip(".")
    return "computer cluster" if name == "computercluster" else name


def _read_scannet_meta(path: Path) -> dict[str, str]:
    """Parse ScanNet's `<scene_id>.txt` (`key = value` lines)."""
    meta = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            meta[key.strip()] = value.strip()
    return meta


def _frame_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _check_16bit_header(path: Path, what: str, fix: str) -> None:
    """DataError naming `path` when its PNG header says it is not single-channel 16-bit (an 8-bit or colour
    depth PNG is a visualisation); reads the header only."""
    mode = _header_mode(path)
    if mode not in SIXTEEN_BIT_MODES:
        raise DataError(f"{path}: depth PNG is {mode} (8-bit or colour), expected 16-bit single-channel "
                        f"millimetres: this is {what}, not the measurement. {fix}")


def _header_mode(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode
    except Exception as exc:  # PIL raises many types for files that are not images
        raise DataError(f"{path}: cannot read the image header ({exc}). Re-export the file.") from exc


class ScanNetFrames(PairedDataset):
    """ScanNet v2 frames as exported by ScanNet's SensReader (`reader.py --export_color_images --export_depth_images`),
    or the `scannet_frames_25k` release.

    On disk::

        root/<scene_id>/color/<frame>.jpg    8-bit RGB, typically 1296x968 (.png also read)
        root/<scene_id>/depth/<frame>.png    16-bit depth in millimetres ("depth shift 1000"), 0 = invalid,
                                             typically 640x480
        root/<scene_id>/<scene_id>.txt       scan metadata from the ScanNet release; its line
                                             `sceneType = Living room / Lounge` is the label of every frame

    Frames are `0.jpg, 1.jpg, ...` (SensReader) or zero-padded (`000000.jpg`: other exporters and
    `scannet_frames_25k`, which holds every 100th frame at 640x480 beside instance/, label/, pose/ and
    intrinsics_*.txt, and no <scene_id>.txt: copy it from the scans to label the frames); both sort numerically.
    When depth is loaded, colour is resized to the depth resolution (antialiased bilinear; colour and depth share
    the field of view up to ScanNet's calibration), then both go to `size` if given. Ids are `<scene_id>/<frame>`.
    Refused when opened, naming the file and the fix: unexported `.sens` streams, the C++ SensReader's single
    folder (`frame-000000.color.jpg`), ScanNet++ (`iphone/`, `dslr/`: no scene types) and 8-bit depth PNGs.

    Args:
        root: folder holding one sub-folder per scan (`scene0000_00`, ...).
        modalities: subset of ("rgb", "depth"); default both.
        size: optional (H, W) output size.
        frame_stride: keep every n-th frame of each scan (consecutive frames are near duplicates; EdgeVL
            kept every 100th).
        class_names: class list; default `SCANNET_SCENE_TYPES` (EdgeVL's 21 scene types). Scene types are
            normalised by `scannet_scene_name` before lookup.
        scene_map: optional normalised scene type -> class name (or None to leave unlabeled).
        others: class that scene types outside the list fall into; None leaves them unlabeled.
    """

    name = "scannet"

    def __init__(self, root: str | os.PathLike, modalities: Sequence[str] | None = None,
                 size: tuple[int, int] | None = None, frame_stride: int = 1,
                 class_names: Sequence[str] | None = None, scene_map: Mapping[str, str | None] | None = None,
                 others: str | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: ScanNet folder does not exist. Export scans with ScanNet's SensReader "
                            f"into <root>/<scene_id>/color and <root>/<scene_id>/depth.")
        if frame_stride < 1:
            raise DataError(f"frame_stride must be >= 1, got {frame_stride}.")
        self.modalities = _select_modalities(modalities, (RGB, DEPTH), str(self.root))
        self.size = size
        self.class_names = list(class_names or SCANNET_SCENE_TYPES)
        self.text_names = [text_name(c) for c in self.class_names]
        labels = _SceneLabels(self.class_names, scene_map, others, str(self.root))
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        self._refuse_variants(folders)
        scenes = [p for p in folders if (p / "color").is_dir() or (p / "depth").is_dir()]
        if not scenes:
            raise DataError(f"{self.root}: no scan folders with color/ or depth/ inside. Expected "
                            f"<root>/<scene_id>/color/<frame>.jpg and <root>/<scene_id>/depth/<frame>.png.")
        self.variant = "scannet_frames_25k" if any(
            (p / "label").is_dir() or (p / "instance").is_dir() or (p / "intrinsics_color.txt").is_file()
            for p in scenes) else "sensreader"
        self._color_ext: dict[str, str] = {}
        self.split_groups: list[str] | None = []
        for scene in scenes:
            label = labels(self._scene_type(scene))
            frames = self._paired_frames(scene)[::frame_stride]
            if DEPTH in self.modalities and frames:
                _check_16bit_header(scene / "depth" / f"{frames[0]}.png", "a visualisation of ScanNet depth",
                                    "Re-export the scan with SensReader's --export_depth_images (16-bit mm PNG).")
            self.ids += [f"{scene.name}/{f}" for f in frames]
            self.labels += [label] * len(frames)
            self.split_groups += [scene.name] * len(frames)
        labels.report(self.name)
        log.info("ScanNet %s (%s): %d frames from %d scans (stride %d)", self.root, self.variant, len(self.ids),
                 len(scenes), frame_stride)

    def _refuse_variants(self, folders: list[Path]) -> None:
        """DataError for the ScanNet layouts this loader cannot read (see the class docstring)."""
        for scene in [self.root, *folders]:
            for sub in ("iphone", "dslr"):
                if (scene / sub).is_dir():
                    raise DataError(f"{scene / sub}: a ScanNet++ scene (iphone/, dslr/ folders). ScanNet++ has no "
                                    f"scene-type labels, so this loader cannot read it: use ScanNet v2 "
                                    f"(scene0000_00, ... exported with SensReader), or write the frames as a "
                                    f"paired folder (data.write_paired_folder) with your own labels.")
            if (scene / "color").is_dir() or (scene / "depth").is_dir():
                continue
            cpp = next(iter(scene.glob("frame-*.color.jpg")), None)
            if cpp is not None:
                raise DataError(f"{cpp}: exported by the C++ SensReader (frame-XXXXXX.color.jpg / .depth.pgm in one "
                                f"folder). Re-export with the Python SensReader (ScanNet/SensReader/python/reader.py "
                                f"--filename {scene.name}.sens --output_path <root>/{scene.name} "
                                f"--export_color_images --export_depth_images), which writes color/ and depth/.")
            sens = next(iter(scene.glob("*.sens")), None)
            if sens is not None:
                raise DataError(f"{sens}: a raw ScanNet sensor stream, not exported frames. Export it with "
                                f"ScanNet's SensReader (python reader.py --filename {sens} --output_path "
                                f"<root>/{scene.name} --export_color_images --export_depth_images) and keep "
                                f"{scene.name}.txt next to color/ and depth/.")

    def _scene_type(self, scene: Path) -> str | None:
        meta_path = scene / f"{scene.name}.txt"
        if not meta_path.is_file():
            where = ("scannet_frames_25k ships no <scene_id>.txt: copy scans/<scene_id>/<scene_id>.txt into each "
                     "scene folder" if (scene / "label").is_dir() or (scene / "instance").is_dir() or
                     (scene / "intrinsics_color.txt").is_file() else "Copy <scene_id>.txt from the ScanNet release")
            log.warning("%s: no scan metadata; frames of %s are unlabeled. %s to label them.", meta_path,
                        scene.name, where)
            return None
        meta = _read_scannet_meta(meta_path)
        if "sceneType" not in meta:
            raise DataError(f"{meta_path}: no `sceneType = ...` line. Use the <scene_id>.txt of the ScanNet release.")
        return scannet_scene_name(meta["sceneType"])

    def _paired_frames(self, scene: Path) -> list[str]:
        color = {p.stem: p for p in (scene / "color").glob("*.jpg")}
        ext = "jpg"
        if not color:
            color, ext = {p.stem: p for p in (scene / "color").glob("*.png")}, "png"
        self._color_ext[scene.name] = ext
        depth = {p.stem: p for p in (scene / "depth").glob("*.png")}
        if len(self.modalities) == 2:
            for have, other, sub, e in ((color, depth, "color", ext), (depth, color, "depth", "png")):
                missing = sorted(set(other) - set(have), key=lambda s: _frame_key(Path(s)))
                if missing:
                    raise DataError(f"{scene / sub / (missing[0] + '.' + e)}: missing {sub} frame "
                                    f"({len(missing)} frames of {scene.name} lack one). Re-run the SensReader "
                                    f"export with --export_color_images --export_depth_images, or delete the "
                                    f"unpaired frames.")
        stems = color if RGB in self.modalities else depth
        if not stems:
            raise DataError(f"{scene}: no frames in color/*.jpg / depth/*.png. Re-run the SensReader export.")
        return [p.stem for p in sorted(stems.values(), key=_frame_key)]

    def load(self, index: int) -> Sample:
        scene, frame = self.ids[index].split("/")
        images: dict[str, torch.Tensor] = {}
        depth_hw = None
        if DEPTH in self.modalities:
            path = self.root / scene / "depth" / f"{frame}.png"
            mm = _uint16_depth(read_pixels(path, "Re-export this scan with ScanNet's SensReader."), path)
            images[DEPTH] = _depth_tensor(mm.astype(np.float32) * 0.001, path, self.ids[index])
            depth_hw = tuple(mm.shape)
        if RGB in self.modalities:
            path = self.root / scene / "color" / f"{frame}.{self._color_ext.get(scene, 'jpg')}"
            rgb = _rgb_tensor(read_pixels(path, "Re-export this scan with ScanNet's SensReader."), path)
            images[RGB] = rgb if depth_hw is None else _resize(rgb, depth_hw, RGB)
        if self.size is not None:
            images = {m: _resize(x, self.size, m) for m, x in images.items()}
        return Sample(images={m: images[m] for m in self.modalities}, label=self.labels[index], id=self.ids[index])


# ----------------------------------------------------------------------------------------------
# NYU Depth V2 (labeled .mat)
# ----------------------------------------------------------------------------------------------

# The common 10-class NYUv2 scene set: the nine most frequent scene types plus "others" (used with
# `NYUDepthV2(..., class_names=NYU_TEN_CLASSES, others="others")`). EdgeVL itself keeps all 27 raw types
# (ramdrop/edgevl dataset/nyu2/nyu2.py), which is this loader's default.
NYU_TEN_CLASSES: tuple[str, ...] = (
    "bedroom", "kitchen", "living_room", "bathroom", "dining_room", "office", "home_office", "classroom",
    "bookstore", "others",
)


def _matlab_string(h5file: Any, ref: Any) -> str:
    """Dereference one cell of a MATLAB v7.3 cell array of char arrays (uint16 code units) to a str."""
    return "".join(chr(c) for c in np.asarray(h5file[ref][()]).ravel() if c)


NYU_LABELED_URL = "https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html"


def _cell_strings(cells: Any) -> list[str]:
    """A MATLAB cell array of strings as loaded by scipy.io.loadmat (N x 1 object array of 1-element arrays)."""
    out = []
    for c in np.asarray(cells, dtype=object).ravel():
        v = np.asarray(c).ravel()
        out.append(str(v[0]) if v.size == 1 else "".join(str(x) for x in v))
    return out


class NYUDepthV2(PairedDataset):
    """The 1449 labeled NYU Depth V2 frames from `nyu_depth_v2_labeled.mat` (MATLAB v7.3, i.e. HDF5).

    Datasets read with h5py (HDF5 lists MATLAB's dimensions in reverse order):

        images      N x 3 x W x H uint8   (MATLAB: H x W x 3 x N) -> image i is `images[i].transpose(2, 1, 0)`,
                                          upright H x W x 3 (480 x 640 x 3)
        depths      N x W x H float       (MATLAB: H x W x N) metres, in-painted -> `depths[i].T`
        sceneTypes  1 x N (or N x 1) object references, each to a uint16 char array, e.g. `living_room`
        scenes      optional, same layout, e.g. `living_room_0001a`: the recording, used as `split_groups`

    The same variables re-saved as a MATLAB v5 / v7 file (`save -v7`, `scipy.io.savemat`: header
    `MATLAB 5.0 MAT-file`, MATLAB's own H x W x 3 x N order) are read with scipy.io.loadmat, into memory (about
    3 GB for the full file). A folder holding nyu_depth_v2_labeled.mat is read as that file. Refused when opened,
    naming the file and the fix: splits.mat, the raw dump (INDEX.txt, .pgm / .ppm), the DenseDepth / Kaggle
    repackaging (nyu2_train.csv: 8-bit depth, raw frames without scene labels) and the sparse-to-dense .h5 folders.

    Sample ids are the 0-based frame index as `0000`...`1448`. Frames are read on demand; the file handle is
    opened per process, so DataLoader workers are safe.

    Args:
        mat_path: path to `nyu_depth_v2_labeled.mat` (or the folder holding it).
        modalities: subset of ("rgb", "depth"); default both.
        size: optional (H, W) output size.
        class_names: class list; default the sorted unique scene types of the file (27 in the release).
        scene_map: optional raw scene type -> class name (or None to leave unlabeled).
        others: class that scene types outside the list fall into (e.g. "others" with `NYU_TEN_CLASSES`);
            None leaves them unlabeled.
    """

    name = "nyuv2"

    def __init__(self, mat_path: str | os.PathLike, modalities: Sequence[str] | None = None,
                 size: tuple[int, int] | None = None, class_names: Sequence[str] | None = None,
                 scene_map: Mapping[str, str | None] | None = None, others: str | None = None) -> None:
        super().__init__()
        import h5py

        self.mat_path = Path(mat_path)
        if self.mat_path.is_dir():
            self.mat_path = _nyu_mat_in_folder(self.mat_path)
        if not self.mat_path.is_file():
            raise DataError(f"{self.mat_path}: file not found. Download nyu_depth_v2_labeled.mat from "
                            f"{NYU_LABELED_URL}.")
        self.modalities = _select_modalities(modalities, (RGB, DEPTH), str(self.mat_path))
        self.size = size
        self._h5: Any = None
        self._h5_pid: int | None = None
        self._v5: dict[str, np.ndarray] | None = None
        with open(self.mat_path, "rb") as fh:
            header = fh.read(128)
        if not h5py.is_hdf5(self.mat_path) and header.startswith(b"MATLAB 5.0 MAT-file"):
            self.variant = "mat_v5"
            n, scene_types, scenes = self._open_v5()
        else:
            self.variant = "mat_v7.3"
            n, scene_types, scenes = self._open_hdf5()
        if len(scene_types) != n:
            raise DataError(f"{self.mat_path}: {len(scene_types)} sceneTypes for {n} images. Re-download the file.")
        self.class_names = list(class_names or sorted(set(scene_types)))
        self.text_names = [text_name(c) for c in self.class_names]
        labels = _SceneLabels(self.class_names, scene_map, others, str(self.mat_path))
        self.ids = [f"{i:04d}" for i in range(n)]
        self.labels = [labels(s) for s in scene_types]
        self.split_groups: list[str] | None = scenes
        labels.report(self.name)
        log.info("NYUv2 %s (%s): %d frames, %d classes", self.mat_path, self.variant, n, len(self.class_names))

    def _open_hdf5(self) -> tuple[int, list[str], list[str] | None]:
        import h5py

        try:
            with h5py.File(self.mat_path, "r") as f:
                missing = [k for k in ("images", "depths", "sceneTypes") if k not in f]
                if missing:
                    raise DataError(f"{self.mat_path}: no dataset(s) {missing}. Use the labeled file "
                                    f"nyu_depth_v2_labeled.mat (MATLAB v7.3), not the raw dump or a v7 re-save.")
                n, channels = f["images"].shape[0], f["images"].shape[1]
                if channels != 3 or f["depths"].shape[0] != n:
                    raise DataError(f"{self.mat_path}: images {f['images'].shape} / depths {f['depths'].shape} "
                                    f"are not N x 3 x W x H / N x W x H. Re-download the labeled .mat file.")
                scene_types = [_matlab_string(f, r) for r in np.asarray(f["sceneTypes"]).ravel()]
                scenes = [_matlab_string(f, r) for r in np.asarray(f["scenes"]).ravel()] if "scenes" in f else None
        except OSError as exc:
            raise DataError(f"{self.mat_path}: cannot open as HDF5 ({exc}). The file is truncated or not the "
                            f"MATLAB v7.3 labeled release; re-download it.") from exc
        return n, scene_types, scenes

    def _open_v5(self) -> tuple[int, list[str], list[str] | None]:
        """A MATLAB v5 / v7 re-save of the labeled file (scipy.io.loadmat; MATLAB's H x W x 3 x N order)."""
        import scipy.io

        fix = f"Use nyu_depth_v2_labeled.mat from {NYU_LABELED_URL} (or a v5 / v7 re-save of its variables)."
        try:
            names = {name for name, _, _ in scipy.io.whosmat(self.mat_path)}
            if {"trainNdxs", "testNdxs"} & names and "images" not in names:
                raise DataError(f"{self.mat_path}: this is splits.mat (train / test frame indices), not the frames. "
                                f"{fix}")
            missing = [k for k in ("images", "depths", "sceneTypes") if k not in names]
            if missing:
                raise DataError(f"{self.mat_path}: MATLAB v5 file without variable(s) {missing}. {fix}")
            log.info("%s: MATLAB v5 / v7 file, read into memory with scipy.io.loadmat", self.mat_path)
            mat = scipy.io.loadmat(self.mat_path, variable_names=["images", "depths", "sceneTypes", "scenes"])
        except DataError:
            raise
        except Exception as exc:  # scipy raises ValueError / TypeError / MatReadError on damaged files
            raise DataError(f"{self.mat_path}: cannot read as a MATLAB v5 / v7 file ({exc}). The file is truncated "
                            f"or not a MAT-file. {fix}") from exc
        images, depths = mat["images"], mat["depths"]
        if images.ndim != 4 or images.shape[2] != 3 or depths.ndim != 3 or depths.shape[2] != images.shape[3]:
            raise DataError(f"{self.mat_path}: images {images.shape} / depths {depths.shape} are not MATLAB's "
                            f"H x W x 3 x N / H x W x N. {fix}")
        self._v5 = {"images": images, "depths": depths}
        scenes = _cell_strings(mat["scenes"]) if "scenes" in mat else None
        return images.shape[3], _cell_strings(mat["sceneTypes"]), scenes

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_h5_pid"] = None, None
        return state

    def _file(self) -> Any:
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py

            self._h5, self._h5_pid = h5py.File(self.mat_path, "r"), os.getpid()
        return self._h5

    def load(self, index: int) -> Sample:
        where = f"{self.mat_path}[{index}]"
        try:
            if self._v5 is not None:
                rgb = np.ascontiguousarray(self._v5["images"][..., index]) if RGB in self.modalities else None
                depth = (np.asarray(self._v5["depths"][..., index], dtype=np.float32)
                         if DEPTH in self.modalities else None)
            else:
                f = self._file()
                rgb = (np.ascontiguousarray(f["images"][index].transpose(2, 1, 0))
                       if RGB in self.modalities else None)
                depth = np.asarray(f["depths"][index], dtype=np.float32).T if DEPTH in self.modalities else None
        except (OSError, KeyError) as exc:  # h5py: truncated file, damaged chunk
            raise DataError(f"{where}: cannot read frame {self.ids[index]!r} ({exc}). The file is truncated or "
                            f"damaged; re-download nyu_depth_v2_labeled.mat.") from exc
        images: dict[str, torch.Tensor] = {}
        if rgb is not None:
            images[RGB] = _rgb_tensor(rgb, where)
        if depth is not None:
            images[DEPTH] = _depth_tensor(depth, where, self.ids[index])
        if self.size is not None:
            images = {m: _resize(x, self.size, m) for m, x in images.items()}
        return Sample(images=images, label=self.labels[index], id=self.ids[index])


def _nyu_mat_in_folder(folder: Path) -> Path:
    """The labeled .mat inside `folder`, or DataError naming the NYU repackaging the folder holds."""
    mat = folder / "nyu_depth_v2_labeled.mat"
    if mat.is_file():
        return mat
    fix = f"Download nyu_depth_v2_labeled.mat (the 1449 labelled frames with sceneTypes) from {NYU_LABELED_URL}."
    for csv_path in (folder / "nyu2_train.csv", folder / "data" / "nyu2_train.csv", folder / "nyu2_test.csv",
                     folder / "data" / "nyu2_test.csv"):
        if csv_path.is_file() or csv_path.with_suffix("").is_dir():
            raise DataError(f"{csv_path}: the DenseDepth / Kaggle repackaging of NYUv2 (nyu2_train/<scene>_out/<n>.jpg "
                            f"+ <n>.png). Its training depth is 8-bit (10 m / 255 = 4 cm steps, a visualisation) and "
                            f"its frames are raw-video frames without the labelled scene types. {fix}")
    h5 = next(iter(folder.glob("*/*/*.h5")), None) or next(iter(folder.glob("*/*.h5")), None)
    if h5 is not None:
        raise DataError(f"{h5}: the sparse-to-dense / FastDepth .h5 repackaging of NYUv2 (train/<scene>/<n>.h5 with "
                        f"rgb and depth). It holds no labelled scene types. {fix}")
    raw = next(iter(folder.glob("*/INDEX.txt")), None) or next(iter(folder.glob("*/*.pgm")), None)
    if raw is not None or (folder / "INDEX.txt").is_file():
        raise DataError(f"{raw or folder / 'INDEX.txt'}: the raw NYUv2 dump (unsynchronised r-*.ppm / d-*.pgm "
                        f"Kinect frames, no labels). {fix}")
    mats = sorted(folder.glob("*.mat"))
    if len(mats) == 1:
        return mats[0]
    raise DataError(f"{folder}: a folder, expected nyu_depth_v2_labeled.mat (found {len(mats)} .mat files). Point "
                    f"root at the .mat file. {fix}")


# ----------------------------------------------------------------------------------------------
# SUN RGB-D
# ----------------------------------------------------------------------------------------------

# The 19 scene classes of SUN RGB-D's scene-classification benchmark, as EdgeVL uses them
# (ramdrop/edgevl dataset/sunrgbd/sunrgbd.py).
SUNRGBD_19_CLASSES: tuple[str, ...] = (
    "bathroom", "bedroom", "classroom", "computer_room", "conference_room", "corridor", "dining_area",
    "dining_room", "discussion_area", "furniture_store", "home_office", "kitchen", "lab", "lecture_theatre",
    "library", "living_room", "office", "rest_space", "study_space",
)


def decode_sunrgbd_depth(stored: np.ndarray) -> np.ndarray:
    """Undo SUN RGB-D's 3-bit circular shift of 16-bit depth PNGs; returns millimetres (uint16).

    depth_mm = (v >> 3) | (v << 13) & 0xFFFF, as in the SUN RGB-D toolbox (read3dPoints.m:
    `bitor(bitshift(depthVis,-3), bitshift(depthVis,16-3))`) and SUN3D's depthRead.m.

    >>> int(decode_sunrgbd_depth(np.array([1234 << 3], dtype=np.uint16))[0])
    1234
    """
    v = stored.astype(np.uint32)
    return (((v >> 3) | (v << 13)) & 0xFFFF).astype(np.uint16)


class SUNRGBD(PairedDataset):
    """SUN RGB-D sample folders (the `SUNRGBD/` tree of the release), found recursively under `root`.

    On disk, one folder per sample, e.g. `root/kv1/NYUdata/NYU0001/`::

        image/<name>.jpg        8-bit RGB
        depth/<name>.png        16-bit raw depth, stored with a 3-bit circular shift (see `decode_sunrgbd_depth`)
        depth_bfx/<name>.png    16-bit in-painted depth, same encoding (what the toolbox's SUNRGBDMeta points to)
        scene.txt               one line, the scene type, e.g. `bedroom`
        (fullres/, annotation*/, intrinsics.txt, extrinsics/ are ignored)

    A sample folder is any folder holding an `image/` sub-folder; ids are its path relative to `root`. A
    folder without scene.txt is unlabeled. Depth is returned in metres without the toolbox's 8 m clip.
    Refused when opened, naming the file and the fix: the SUNRGBDtoolbox folder (metadata only), the VoteNet /
    mmdetection3d export (sunrgbd_trainval: depth as .mat point clouds), 8-bit depth PNGs (visualisations), and
    use_bfx=True on a copy without any depth_bfx/ folder.

    Args:
        root: the SUNRGBD folder (or any sub-tree, e.g. root/kv1).
        modalities: subset of ("rgb", "depth"); default both.
        size: optional (H, W) output size (SUN RGB-D mixes four sensors and resolutions).
        use_bfx: read `depth_bfx/` (in-painted) instead of `depth/` (raw, with holes).
        class_names: class list; default the sorted unique scene types found (e.g. `SUNRGBD_19_CLASSES`
            for the benchmark's 19 classes).
        scene_map: optional raw scene type -> class name (or None to leave unlabeled).
        others: class that scene types outside the list fall into; None leaves them unlabeled.
    """

    name = "sunrgbd"

    def __init__(self, root: str | os.PathLike, modalities: Sequence[str] | None = None,
                 size: tuple[int, int] | None = None, use_bfx: bool = True,
                 class_names: Sequence[str] | None = None, scene_map: Mapping[str, str | None] | None = None,
                 others: str | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: SUN RGB-D folder does not exist. Point root at the SUNRGBD/ folder "
                            f"of the release (holding kv1/, kv2/, realsense/, xtion/).")
        self.modalities = _select_modalities(modalities, (RGB, DEPTH), str(self.root))
        self.size = size
        self.depth_dir = "depth_bfx" if use_bfx else "depth"
        folders = sorted(p.parent for p in self.root.rglob("image") if p.is_dir())
        if not folders:
            self._refuse_toolbox()
            raise DataError(f"{self.root}: no sample folders (folders with image/ inside). Expected e.g. "
                            f"<root>/kv1/NYUdata/NYU0001/image/NYU0001.jpg.")
        self._refuse_votenet(folders)
        if DEPTH in self.modalities and use_bfx and not any((f / "depth_bfx").is_dir() for f in folders) and \
                any((f / "depth").is_dir() for f in folders):
            raise DataError(f"{folders[0] / 'depth_bfx'}: no sample folder has depth_bfx/ (this copy holds the raw "
                            f"depth/ only). Pass use_bfx=False (recipe: data.options: {{use_bfx: false}}) to read "
                            f"depth/ (raw, with holes), or restore depth_bfx/ from SUNRGBD.zip.")
        self._files: list[tuple[Path, Path]] = []
        scene_types: list[str | None] = []
        for folder in folders:
            self._files.append(self._pair(folder))
            if DEPTH in self.modalities:
                _check_16bit_header(self._files[-1][1], "an 8-bit visualisation of SUN RGB-D depth",
                                    "Use the depth PNGs of SUNRGBD.zip (16-bit, millimetres rotated by 3 bits).")
            scene_txt = folder / "scene.txt"
            scene_types.append(scene_txt.read_text(encoding="utf-8").strip() if scene_txt.is_file() else None)
        self.class_names = list(class_names or sorted({s for s in scene_types if s}))
        self.text_names = [text_name(c) for c in self.class_names]
        labels = _SceneLabels(self.class_names, scene_map, others, str(self.root))
        self.ids = [f.relative_to(self.root).as_posix() for f in folders]
        self.labels = [labels(s) for s in scene_types]
        self.split_groups: list[str] | None = None
        labels.report(self.name)
        unlabeled = sum(s is None for s in scene_types)
        if unlabeled:
            log.warning("SUN RGB-D %s: %d sample folders have no scene.txt and are unlabeled", self.root, unlabeled)
        log.info("SUN RGB-D %s: %d samples (%s), %d classes", self.root, len(self.ids), self.depth_dir,
                 len(self.class_names))

    def _refuse_toolbox(self) -> None:
        """DataError when `root` is the SUNRGBDtoolbox (metadata and splits, no images)."""
        for rel in ("Metadata/SUNRGBDMeta.mat", "SUNRGBDMeta.mat", "traintestSUNRGBD/allsplit.mat",
                    "SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat"):
            if (self.root / rel).is_file():
                raise DataError(f"{self.root / rel}: the SUNRGBDtoolbox (metadata and splits, no images). Point root "
                                f"at the SUNRGBD/ folder of SUNRGBD.zip (kv1/, kv2/, realsense/, xtion/).")

    def _refuse_votenet(self, folders: list[Path]) -> None:
        """DataError for the VoteNet / mmdetection3d export (sunrgbd_trainval/image/000001.jpg, depth/*.mat)."""
        for folder in folders:
            if (folder / "calib").is_dir() or next(iter((folder / "depth").glob("*.mat")), None) is not None:
                raise DataError(f"{folder}: the VoteNet / mmdetection3d export of SUN RGB-D (image/000001.jpg, "
                                f"depth/*.mat point clouds, calib/, label/): no depth images and no scene types. "
                                f"Point root at the SUNRGBD/ folder of the original SUNRGBD.zip.")

    def _pair(self, folder: Path) -> tuple[Path, Path]:
        images = sorted((folder / "image").glob("*.jpg"))
        if len(images) != 1:
            raise DataError(f"{folder / 'image'}: expected exactly one .jpg, found {len(images)}. Restore the "
                            f"sample folder from the SUN RGB-D release.")
        depth = folder / self.depth_dir / f"{images[0].stem}.png"
        if DEPTH in self.modalities and not depth.is_file():
            other = "use_bfx=False" if self.depth_dir == "depth_bfx" else "use_bfx=True"
            raise DataError(f"{depth}: missing depth for {images[0]}. Restore it from the SUN RGB-D release, "
                            f"or try {other} if the other depth folder is present.")
        return images[0], depth

    def load(self, index: int) -> Sample:
        image_path, depth_path = self._files[index]
        fix = "Restore this sample folder from the SUN RGB-D release."
        images: dict[str, torch.Tensor] = {}
        if RGB in self.modalities:
            images[RGB] = _rgb_tensor(read_pixels(image_path, fix), image_path)
        if DEPTH in self.modalities:
            stored = _uint16_depth(read_pixels(depth_path, fix), depth_path)
            images[DEPTH] = _depth_tensor(decode_sunrgbd_depth(stored).astype(np.float32) * 0.001, depth_path,
                                          self.ids[index])
        if self.size is not None:
            images = {m: _resize(x, self.size, m) for m, x in images.items()}
        return Sample(images=images, label=self.labels[index], id=self.ids[index])


# ----------------------------------------------------------------------------------------------
# EuroSAT-MS (Sentinel-2, 13 bands)
# ----------------------------------------------------------------------------------------------

# Band order inside EuroSAT_MS GeoTIFFs: B8A is the 13th band, not the 9th as in the paper's table
# (phelber/EuroSAT#7; torchgeo#2458 fixed by torchgeo#2480; EdgeVL's extract_swir.py relies on it too).
EUROSAT_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)
# Sentinel-2's own band order (ESA product order; the paper's table; some re-packagings store bands this way).
SENTINEL2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
# Named band orders accepted by `EuroSATMS(band_order=...)` (a recipe can give the name).
EUROSAT_BAND_ORDERS: dict[str, tuple[str, ...]] = {
    "eurosat": EUROSAT_BANDS,
    "sentinel2": SENTINEL2_BANDS,
    "eurosat_no_b10": tuple(b for b in EUROSAT_BANDS if b != "B10"),
    "sentinel2_no_b10": tuple(b for b in SENTINEL2_BANDS if b != "B10"),
}
EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
    "Residential", "River", "SeaLake",
)
# CLIP's EuroSAT class names (openai/CLIP data/prompts.md), used for prompts.
EUROSAT_TEXT_NAMES: dict[str, str] = {
    "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road", "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land", "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments", "River": "river", "SeaLake": "lake or sea",
}


class EuroSATMS(PairedDataset):
    """EuroSAT-MS (`EuroSAT_MS`, all 13 Sentinel-2 L1C bands) as paired `rgb` + `swir` images.

    On disk::

        root/<ClassName>/<ClassName>_<n>.tif   one 64x64 GeoTIFF per image, 13 uint16 bands in
                                               `EUROSAT_BANDS` order (B01..B12, then B8A), reflectance * 10000

    Bands may be stored pixel-interleaved (64x64x13) or planar (13x64x64). Both outputs are 3xHxW in [0, 1]
    with fixed, documented stretches (no per-image normalisation):

    - `rgb` = (B04, B03, B02) / `rgb_max`, clipped; default 3000 (reflectance 0.3 -> 1).
    - `swir` = `swir_bands` / `swir_max`, clipped. The default is EdgeVL's SWIR image: band B12 (2190 nm)
      / 4095, clipped, replicated to 3 channels (ramdrop/edgevl preprocess_dataset/eurosat/extract_swir.py
      reads band 12 and divides by 4095; its loader repeats the grey image to 3 channels). Pass
      `swir_bands=("B12", "B8A", "B04")` for Sentinel Hub's SWIR false-colour composite instead.

    Variants, checked when the dataset is opened (headers, plus one file per class for the band order):

    - the older zip's nested folders (`ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/`, also what
      torchgeo unpacks) are found below `root` and read;
    - a file whose band count differs from `band_order` is refused; 12 bands (a re-packaging without B10) are
      read when `band_order` names the file's 12 bands (e.g. `"eurosat_no_b10"`, `"sentinel2_no_b10"`);
    - band order: B10 (cirrus, 1375 nm) has by far the lowest L1C values (about 10-20 of 10000) in every EuroSAT
      image; when the lowest band of most classes' first file is not `band_order`'s B10, the order is refused
      (Sentinel-2 order B01..B08, B8A, B09..B12 is `band_order="sentinel2"`; `verify_band_order=False` skips this);
    - the EuroSAT RGB release (JPEG) and Hugging Face parquet exports are refused (no SWIR band / no GeoTIFF).

    Class index follows `class_names` (EuroSAT's 10 folder names); `text_names` holds CLIP's phrasing
    ("annual crop land", ...). Sample ids are `<ClassName>/<stem>`.

    Args:
        root: the EuroSAT_MS folder (holding the class folders, or a folder above them).
        modalities: subset of ("rgb", "swir"); default both.
        size: optional (H, W) output size (bilinear, antialiased).
        class_names: class folders to read, in label order; default `EUROSAT_CLASSES`.
        band_order: band names in file order, or a name in `EUROSAT_BAND_ORDERS`; default `EUROSAT_BANDS`.
        rgb_max: reflectance * 10000 value mapped to 1 in `rgb`.
        swir_bands: three band names forming `swir`.
        swir_max: reflectance * 10000 value mapped to 1 in `swir`.
        verify_band_order: check B10's position as above (only when `band_order` has B10).
    """

    name = "eurosat"

    def __init__(self, root: str | os.PathLike, modalities: Sequence[str] | None = None,
                 size: tuple[int, int] | None = None, class_names: Sequence[str] | None = None,
                 band_order: Sequence[str] | str = EUROSAT_BANDS, rgb_max: float = 3000.0,
                 swir_bands: Sequence[str] = ("B12", "B12", "B12"), swir_max: float = 4095.0,
                 verify_band_order: bool = True) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: EuroSAT-MS folder does not exist. Download EuroSAT_MS.zip "
                            f"(https://zenodo.org/records/7711810) and point root at the unzipped folder.")
        self.modalities = _select_modalities(modalities, (RGB, SWIR), str(self.root))
        self.size = size
        if isinstance(band_order, str):
            if band_order not in EUROSAT_BAND_ORDERS:
                raise DataError(f"band_order {band_order!r}: give band names or one of "
                                f"{list(EUROSAT_BAND_ORDERS)}.")
            band_order = EUROSAT_BAND_ORDERS[band_order]
        self.band_order = tuple(band_order)
        wanted = ("B04", "B03", "B02", *swir_bands)
        unknown = [b for b in wanted if b not in self.band_order]
        if unknown or len(swir_bands) != 3:
            raise DataError(f"swir_bands must be three of {list(self.band_order)}; got {list(swir_bands)}.")
        self.rgb_index = [self.band_order.index(b) for b in ("B04", "B03", "B02")]
        self.swir_index = [self.band_order.index(b) for b in swir_bands]
        self.rgb_max, self.swir_max = float(rgb_max), float(swir_max)
        self.class_names = list(class_names or EUROSAT_CLASSES)
        self.text_names = [EUROSAT_TEXT_NAMES.get(c, text_name(c)) for c in self.class_names]
        self.split_groups: list[str] | None = None
        self._refuse_exports()
        if not any((self.root / c).is_dir() for c in self.class_names):
            self.root = self._nested_root()
        missing = [c for c in self.class_names if not (self.root / c).is_dir()]
        if missing:
            raise DataError(f"{self.root / missing[0]}: class folder missing ({len(missing)} of "
                            f"{len(self.class_names)} missing: {missing}). Unzip EuroSAT_MS completely, or pass "
                            f"class_names= for the folders you have.")
        firsts = []
        for label, cls in enumerate(self.class_names):
            files = sorted((self.root / cls).glob("*.tif"), key=lambda p: (len(p.stem), p.stem))
            if not files:
                jpg = next(iter(sorted((self.root / cls).glob("*.jp*g"))), None)
                if jpg is not None:
                    raise DataError(f"{jpg}: the EuroSAT RGB release (JPEG, bands B04/B03/B02 only): it has no "
                                    f"SWIR band. Download EuroSAT_MS.zip (13-band GeoTIFFs, "
                                    f"https://zenodo.org/records/7711810) and point root at it.")
                raise DataError(f"{self.root / cls}: no .tif files. Use EuroSAT_MS (GeoTIFF), not EuroSAT_RGB.")
            self.ids += [f"{cls}/{p.stem}" for p in files]
            self.labels += [label] * len(files)
            firsts.append(len(self.ids) - len(files))
        self._check_band_count(firsts[0])
        if verify_band_order and "B10" in self.band_order:
            self._check_band_order(firsts)
        log.info("EuroSAT-MS %s: %d images, %d classes", self.root, len(self.ids), len(self.class_names))

    def _refuse_exports(self) -> None:
        parquet = next(iter(sorted(self.root.glob("*.parquet"))), None) or \
            next(iter(sorted(self.root.glob("*/*.parquet"))), None)
        if parquet is not None:
            raise DataError(f"{parquet}: a Hugging Face parquet export of EuroSAT, not the GeoTIFF release. Download "
                            f"EuroSAT_MS.zip (https://zenodo.org/records/7711810) and point root at it.")

    def _nested_root(self) -> Path:
        """The folder below `root` that holds the class folders (older zips nest them several levels deep)."""
        first = self.class_names[0]
        found = sorted({p.parent for p in self.root.rglob(first) if p.is_dir() and any(p.glob("*.tif"))})
        if len(found) == 1:
            log.info("EuroSAT-MS: class folders found in %s", found[0])
            return found[0]
        if len(found) > 1:
            raise DataError(f"{self.root}: several EuroSAT copies below it ({[str(f) for f in found]}). Point root at "
                            f"one of them.")
        jpg = next(iter(sorted(self.root.rglob(f"{first}/*.jp*g"))), None)
        if jpg is not None:
            raise DataError(f"{jpg}: the EuroSAT RGB release (JPEG, bands B04/B03/B02 only): it has no SWIR band. "
                            f"Download EuroSAT_MS.zip (13-band GeoTIFFs, https://zenodo.org/records/7711810).")
        return self.root

    def _band_error(self, path: Path, shape: tuple[int, ...]) -> DataError:
        n = len(self.band_order)
        bands = min(shape) if len(shape) == 3 else 1
        if bands == 12 and n == 13:
            hint = ("12 bands: a re-packaging without B10 (cirrus), e.g. an L2A version. The file cannot tell its "
                    "band order: pass band_order with its 12 band names in file order, e.g. "
                    "band_order='eurosat_no_b10' (B01..B09, B11, B12, B8A) or 'sentinel2_no_b10' "
                    "(B01..B08, B8A, B09, B11, B12), as its documentation says.")
        elif bands in (1, 3, 4):
            hint = "Use the EuroSAT_MS (all bands) release, not EuroSAT_RGB."
        else:
            hint = "Use the EuroSAT_MS (all bands) release, or pass band_order naming the file's bands."
        return DataError(f"{path}: shape {shape}, expected {n} bands (HxWx{n} or {n}xHxW). {hint}")

    def _check_band_count(self, index: int) -> None:
        """The band count of one file against `band_order`, from the TIFF header (nothing decoded)."""
        import tifffile

        path = self.root / f"{self.ids[index]}.tif"
        try:
            with tifffile.TiffFile(path) as tif:
                shape = tuple(tif.series[0].shape)
        except Exception as exc:  # tifffile raises several types for truncated / corrupt files
            raise DataError(f"{path}: cannot read GeoTIFF ({exc}). Re-extract it from EuroSAT_MS.zip.") from exc
        n = len(self.band_order)
        if not (len(shape) == 3 and n in (shape[0], shape[-1])):
            raise self._band_error(path, shape)

    def _check_band_order(self, firsts: Sequence[int]) -> None:
        """Refuse a band order whose B10 is not the lowest band (median) of most classes' first file."""
        b10 = self.band_order.index("B10")
        lowest = []
        for i in firsts:
            bands = self._checked_bands(i).reshape(len(self.band_order), -1)
            lowest.append(int(np.argmin(np.median(bands, axis=1))))
        off = [k for k in lowest if k != b10]
        if len(off) * 2 <= len(lowest):
            return
        k = max(set(off), key=off.count)
        path = self.root / f"{self.ids[firsts[0]]}.tif"
        guess = [name for name, order in EUROSAT_BAND_ORDERS.items()
                 if len(order) == len(self.band_order) and "B10" in order and order.index("B10") == k]
        raise DataError(f"{path}: band {k} (0-based) is the lowest band in {len(off)} of {len(lowest)} classes' first "
                        f"files, as B10 (cirrus, about 10-20 of 10000) is in every EuroSAT image, but band_order puts "
                        f"B10 at {b10}: the files store their bands in another order. Pass the file's band order"
                        f"{' (band_order=' + repr(guess[0]) + ' matches)' if guess else ''}, or "
                        f"verify_band_order=False if you are sure.")

    def read_bands(self, index: int) -> np.ndarray:
        """The raw bands of sample `index` as a BxHxW uint16 array in `band_order` (B = 13 for EuroSAT_MS)."""
        import tifffile

        path = self.root / f"{self.ids[index]}.tif"
        try:
            arr = np.asarray(tifffile.imread(path))
        except Exception as exc:  # tifffile raises several types for truncated / corrupt files
            raise DataError(f"{path}: cannot read GeoTIFF ({exc}). Re-extract it from EuroSAT_MS.zip.") from exc
        n = len(self.band_order)
        if arr.ndim == 3 and arr.shape[0] == n:
            return arr
        if arr.ndim == 3 and arr.shape[-1] == n:
            return arr.transpose(2, 0, 1)
        raise self._band_error(path, arr.shape)

    def _checked_bands(self, index: int) -> np.ndarray:
        bands = self.read_bands(index)
        if bands.dtype.kind == "f":
            check_finite(bands, self.root / f"{self.ids[index]}.tif", self.ids[index], "bands")
        elif bands.dtype.kind not in "ui":
            raise DataError(f"{self.root / (self.ids[index] + '.tif')}: bands are {bands.dtype}, expected integer "
                            f"reflectance * 10000 (uint16). Re-extract the file from EuroSAT_MS.zip.")
        return bands

    def load(self, index: int) -> Sample:
        bands = self._checked_bands(index).astype(np.float32)
        images: dict[str, torch.Tensor] = {}
        if RGB in self.modalities:
            images[RGB] = torch.from_numpy(np.clip(bands[self.rgb_index] / self.rgb_max, 0, 1))
        if SWIR in self.modalities:
            images[SWIR] = torch.from_numpy(np.clip(bands[self.swir_index] / self.swir_max, 0, 1))
        if self.size is not None:
            images = {m: _resize(x, self.size, m) for m, x in images.items()}
        return Sample(images=images, label=self.labels[index], id=self.ids[index])


# ----------------------------------------------------------------------------------------------
# Splits and the factory
# ----------------------------------------------------------------------------------------------


def split_indices(n: int, fractions: Sequence[float], seed: int = 0,
                  groups: Sequence[str] | None = None) -> list[list[int]]:
    """Deterministic random split of range(n) into parts of the given fractions (each part sorted).

    With `groups` (one key per sample, e.g. the ScanNet scan), whole groups go to one part, so near-duplicate
    frames of one scan never land in both adapt and eval; part sizes then match the fractions approximately.
    Fractions may sum to less than 1 (the rest is left out).

    >>> split_indices(10, (0.8, 0.2), seed=0)[1]
    [1, 8]
    """
    if n < 0 or not fractions or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"need n >= 0 and positive fractions summing to <= 1, got n={n}, {list(fractions)}")
    bounds = np.round(np.cumsum(fractions) * n).astype(int)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    if groups is None:
        order = rng.permutation(n)
        for k, (lo, hi) in enumerate(zip(np.concatenate([[0], bounds[:-1]]), bounds)):
            parts[k] = sorted(int(i) for i in order[lo:hi])
        return parts
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for n={n}")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    assigned = 0
    for g in (sorted(members)[i] for i in rng.permutation(len(members))):
        k = int(np.searchsorted(bounds, assigned, side="right"))
        if k == len(parts):
            break
        parts[k] += members[g]
        assigned += len(members[g])
    return [sorted(p) for p in parts]


class PairedSubset(PairedDataset):
    """A PairedDataset view of some samples of another (keeps class_names, text_names, modalities)."""

    def __init__(self, base: PairedDataset, indices: Sequence[int], split: str) -> None:
        super().__init__()
        self.base, self.indices, self.split = base, list(indices), split
        self.name = f"{base.name}:{split}"
        self.modalities, self.class_names = base.modalities, base.class_names
        self.text_names = getattr(base, "text_names", list(base.class_names))
        self.ids = [base.ids[i] for i in self.indices]
        self.labels = [base.labels[i] for i in self.indices]

    def load(self, index: int) -> Sample:
        return self.base.load(self.indices[index])


EMBEDDED_SPLITS: tuple[str, ...] = ("teacher_pretrain", "adapt", "eval")
REAL_SPLITS: tuple[str, ...] = ("adapt", "eval")
_REAL_LOADERS: dict[str, Callable[..., PairedDataset]] = {
    "scannet": ScanNetFrames, "nyuv2": NYUDepthV2, "sunrgbd": SUNRGBD, "eurosat": EuroSATMS,
}
DATASET_NAMES: tuple[str, ...] = ("embedded", "paired_folder", *_REAL_LOADERS)


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str | None = None,
                 **options: Any) -> PairedDataset:
    """Open a dataset by name: `embedded`, `paired_folder`, `scannet`, `nyuv2`, `sunrgbd`, `eurosat`.

    - `embedded`: builds (or reuses) the procedural benchmark with `render.build_benchmark(BenchmarkConfig(
      **config_options), root)` and opens its `split` folder (`teacher_pretrain`, `adapt` or `eval`); `root`
      is the cache parent (None: render's default). Pass `config=BenchmarkConfig(...)` for the whole config.
    - `paired_folder`: split folders `root/adapt`, `root/eval` (`data.PairedFolder(root / split)`), or one
      paired folder `root` (classes.txt in root) split like the real datasets (`paired_folder_layout`).
    - real datasets (`root` is the folder, or the .mat file for `nyuv2`): the whole dataset when split is
      None; `adapt` / `eval` give a deterministic split (`split_fractions`, default (0.8, 0.2); `split_seed`,
      default 0) that keeps each dataset's `split_groups` (ScanNet scans, NYU scenes) on one side.

    Other options go to the loader (`modalities`, `size`, `frame_stride`, `use_bfx`, `class_names`, ...).

    Raises:
        DataError: unknown name or split, missing root, or bad files (the message names the file).
    """
    if name == "embedded":
        return _load_embedded(root, split, options)
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of {list(DATASET_NAMES)}.")
    if root is None:
        raise DataError(f"dataset {name!r} needs root= (its folder, or the .mat file for nyuv2).")
    given_split_options = sorted({"split_fractions", "split_seed"} & set(options))
    fractions = tuple(options.pop("split_fractions", (0.8, 0.2)))
    seed = int(options.pop("split_seed", 0))
    if name == "paired_folder":
        layout = paired_folder_layout(root)
        if layout == "split_folders":
            if given_split_options:
                log.warning("%s: split folders (adapt/, eval/): options %s are ignored", root, given_split_options)
            if split is None:
                raise DataError(f"{root}: holds split folders (adapt/, eval/); open one of them: pass split= or "
                                f"point root (data.eval_root) at {Path(root) / 'eval'}.")
            return PairedFolder(Path(root) / split, **options)
        dataset: PairedDataset = PairedFolder(root, **options)
    else:
        dataset = _REAL_LOADERS[name](root, **options)
    if split is None:
        return dataset
    if split not in REAL_SPLITS or len(fractions) != len(REAL_SPLITS):
        raise DataError(f"{name}: split {split!r} with fractions {list(fractions)}; use split in "
                        f"{list(REAL_SPLITS)} with two fractions, or split=None for the whole dataset.")
    parts = split_indices(len(dataset), fractions, seed, getattr(dataset, "split_groups", None))
    return PairedSubset(dataset, parts[REAL_SPLITS.index(split)], split)


PAIRED_FOLDER_LAYOUTS = ("either split folders <root>/adapt/classes.txt, labels.csv, <modality>/<id>.png and "
                         "<root>/eval/classes.txt, labels.csv, <modality>/<id>.png; or one folder "
                         "<root>/classes.txt, labels.csv, <modality>/<id>.png that the loader splits into adapt / "
                         "eval (options split_fractions, split_seed).")


def paired_folder_layout(root: str | os.PathLike) -> str:
    """`one_folder` (root/classes.txt) or `split_folders` (root/adapt/ or root/eval/) of a paired folder.

    Raises:
        DataError: root missing, both layouts at once (which one is meant?), or neither (shows both).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist. Check the path; a paired folder is "
                        f"{PAIRED_FOLDER_LAYOUTS}")
    one = (root / "classes.txt").is_file()
    split = [s for s in REAL_SPLITS if (root / s).is_dir()]
    if one and split:
        raise DataError(f"{root}: holds both layouts, classes.txt (one folder, split by the loader) and "
                        f"{'/, '.join(split)}/ (split folders). Which one is meant? Move classes.txt, labels.csv "
                        f"and the modality folders into their own folder, or remove {'/ and '.join(split)}/.")
    if one:
        return "one_folder"
    if split:
        return "split_folders"
    raise DataError(f"{root}: not a paired folder (no classes.txt, no adapt/ or eval/). Write "
                    f"{PAIRED_FOLDER_LAYOUTS}")


def _load_embedded(root: str | os.PathLike | None, split: str | None, options: dict[str, Any]) -> PairedDataset:
    from .config import BenchmarkConfig
    from .render import build_benchmark  # written alongside; imported here so loaders work without it

    if split not in EMBEDDED_SPLITS:
        raise DataError(f"embedded benchmark: split {split!r}; choose one of {list(EMBEDDED_SPLITS)}.")
    loader_options = {k: options.pop(k) for k in ("modalities", "size") if k in options}
    config = options.pop("config", None)
    if config is None:
        known = {f.name for f in fields(BenchmarkConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DataError(f"embedded benchmark: unknown options {unknown}; BenchmarkConfig takes {sorted(known)}.")
        config = BenchmarkConfig(**options)
    elif options:
        raise DataError(f"embedded benchmark: give either config= or BenchmarkConfig fields, not both "
                        f"({sorted(options)}).")
    return PairedFolder(Path(build_benchmark(config, Path(root) if root else None)) / split, **loader_options)
