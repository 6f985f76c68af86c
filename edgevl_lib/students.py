"""Student image encoders: a timm backbone plus a projection head into the teacher's embedding space.

EdgeVL trains ONE weight-shared encoder for every modality: the caller feeds the RGB image and the
encoded non-RGB image (`edgevl_lib.data.encode_modality`) through the same `Student`. Inputs are
3-channel images in [0, 1]; the student normalises them internally with its timm `pretrained_cfg`
mean / std, so RGB and encoded depth / thermal take exactly the same path.

    S(x) = W_proj · f_timm((x - mean) / std)          (B x 3 x H x W in [0, 1]  ->  B x D)

Architectures (`create_student(arch, ...)`; any other timm model name works too):

| arch                              | backbone params | `image_size`                                        |
|-----------------------------------|-----------------|-----------------------------------------------------|
| `regnetx_002` (CPU default)       | 2.3 M           | any >= 16 (conv net; 64 px ends in a 2x2 map)       |
| `vit_small_patch16_224`           | 21.6 M          | multiples of 16 (`img_size` kwarg resizes pos-embed)|
| `swin_tiny_patch4_window7_224`    | 27.5 M          | multiples of 32 recommended (`img_size` kwarg)      |
| `fastvit_mci0` (MobileCLIP MCi0)  | 10.9 M          | any >= 32 (no `img_size` kwarg needed)              |
| `vit_tiny_test`, `swin_tiny_test`, `conv_tiny_test`, `fastvit_tiny_test` | < 0.4 M | test-only, random weights |

Swin: the stages run at H/4, H/8, H/16, H/32. timm 1.0.31 clamps the 7x7 window to a stage's
resolution when the stage is smaller (64 px: windows 7, 7, 4, 2), pads stages that are not a
multiple of the window and pads odd maps before patch merging, so every size >= 32 builds (checked:
32, 36, 48, 50, 64, 96, 100, 128, 224). Multiples of 32 need no padding; sizes not divisible by 4
drop the last pixel rows in the patch embedding. Pretrained weights still load at other sizes: timm's
checkpoint filter resizes the relative-position bias tables to the new windows.

Why `regnetx_002` is the CPU default: plain conv + BN + ReLU blocks with residual adds (no SE,
hard-swish or attention), which `X86InductorQuantizer` annotates end to end (random-weight int8
simulation keeps cosine 0.9998 to fp32, versus 0.97 for mobilenetv3_small_100); ~56 ms forward for a
batch of 64 at 64 px on one CPU thread, about 3x faster than resnet10t / resnet18; ImageNet
weights exist in timm when `pretrained=True` can download them.

Checkpoints: `save_student` writes `<name>.safetensors` plus a `<name>.json` sidecar holding
everything `load_student` needs to rebuild the module (arch, embed_dim, image_size, head, kwargs); the same
build config is stored in the safetensors header, so a sidecar that does not belong to its weights (an
interrupted or mixed copy) is refused. Only safetensors are read: a pickle / `torch.save` file is refused,
never unpickled.

Downloads: `pretrained=True` loads timm's weights from the local Hugging Face / torch hub cache; fetching
them needs an opt-in (`allow_download=True` or EDGEVL_ALLOW_DOWNLOAD=1, see `teachers.downloads_allowed`),
else `StudentWeightsMissing` says what to do. Nothing touches the network without it.

>>> s = create_student("conv_tiny_test", embed_dim=16, image_size=32)
>>> s(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 16])
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch import nn

from .teachers import ALLOW_DOWNLOAD_ENV, downloads_allowed, hub_offline, is_hub_refusal
from .utils import atomic_path, write_json

log = logging.getLogger(__name__)

DEFAULT_STUDENT_ARCH = "regnetx_002"
"""Small conv net that trains fast on a 2-core CPU at 64 px and quantises cleanly (module docstring)."""

PAPER_STUDENT_ARCHS: tuple[str, ...] = ("vit_small_patch16_224", "swin_tiny_patch4_window7_224", "fastvit_mci0")
"""The EdgeVL paper's ViT-S and Swin-T students and the MobileCLIP MCi0 image tower."""

# Test-only aliases: timm model name + constructor kwargs. Built with random weights only.
TEST_STUDENT_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_tiny_test": ("vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}),
    "swin_tiny_test": ("swin_tiny_patch4_window7_224",
                       {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}),
    "conv_tiny_test": ("test_resnet", {"zero_init_last": False}),  # QAT conv-bn folding divides by BN gamma
    "fastvit_tiny_test": ("fastvit_t8", {"layers": (1, 1, 1, 1), "embed_dims": (8, 16, 32, 64)}),
}

HEADS: tuple[str, ...] = ("linear", "mlp")
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A student checkpoint that cannot be loaded. The message names the file and says why."""


class StudentWeightsMissing(FileNotFoundError):
    """`pretrained=True` weights are not on this machine and downloads were not allowed; the message says what to do."""


HEADER_KEY = "edgevl_student"
"""Safetensors header entry holding the build config (JSON), checked against the sidecar on load."""
_BUILD_KEYS = ("arch", "embed_dim", "image_size", "head", "timm_kwargs")


class Student(nn.Module):
    """A timm backbone with internal input normalisation and a projection head to the teacher's dim.

    Attributes:
        backbone: the timm model built with `num_classes=0` (returns pooled features).
        head: `Linear(F, D)` or, for `head="mlp"`, `Linear(F, F) -> ReLU -> Linear(F, D)`.
        config: the JSON-ready dict `save_student` writes next to the weights.
    """

    def __init__(self, backbone: nn.Module, embed_dim: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        features = int(backbone.num_features)
        if config["head"] == "linear":
            self.head: nn.Module = nn.Linear(features, embed_dim)
        elif config["head"] == "mlp":
            self.head = nn.Sequential(nn.Linear(features, features), nn.ReLU(), nn.Linear(features, embed_dim))
        else:
            raise ValueError(f"unknown head {config['head']!r}; use one of {HEADS}")
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, 3, 1, 1)
        # Not persistent: derived from the arch, so checkpoints hold learned weights only.
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)
        self.config = dict(config)

    @property
    def arch(self) -> str:
        """The name passed to `create_student`."""
        return self.config["arch"]

    @property
    def embed_dim(self) -> int:
        """D, the teacher's embedding dimension the head projects to."""
        return int(self.config["embed_dim"])

    @property
    def image_size(self) -> int:
        """The square input size the student was built for."""
        return int(self.config["image_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of 3-channel [0, 1] images: B x 3 x H x W -> B x D (not normalised).

        ViT and Swin students need H = W = `image_size`; conv students take any size.
        """
        x = (x - self.input_mean) / self.input_std
        return self.head(self.backbone(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding S(x) / ||S(x)||, the one compared with the teacher's text embeddings."""
        return F.normalize(self.forward(x), dim=-1)

    def example_inputs(self, batch_size: int = 2) -> tuple[torch.Tensor]:
        """A random input tuple of the right shape (for torch.export / quantisation calibration)."""
        device = self.input_mean.device
        return (torch.rand(batch_size, 3, self.image_size, self.image_size, device=device),)


def create_student(arch: str, embed_dim: int, image_size: int, pretrained: bool = False, head: str = "linear",
                   allow_download: bool = False, **timm_kwargs: Any) -> Student:
    """Build a student: `timm.create_model(arch, pretrained, num_classes=0[, img_size])` + a projection head.

    `img_size=image_size` is passed to architectures whose constructor takes it (ViT, Swin); conv nets
    and FastViT accept any input size without it.

    Args:
        arch: any timm model name (see the module docstring's table; `DEFAULT_STUDENT_ARCH` for CPU
            runs) or a key of `TEST_STUDENT_ARCHS`.
        embed_dim: D, the teacher's embedding dimension.
        image_size: square input size in pixels.
        pretrained: load timm's ImageNet / MobileCLIP weights from the local caches (never for test archs).
        head: `linear` or `mlp` (Linear -> ReLU -> Linear, kept quantisation friendly).
        allow_download: let timm download missing pretrained weights (also EDGEVL_ALLOW_DOWNLOAD=1).
        **timm_kwargs: extra constructor kwargs (JSON-serialisable; recorded in the checkpoint sidecar).

    Returns:
        The `Student`, in train mode, on CPU.

    Raises:
        StudentWeightsMissing: `pretrained=True`, the weights are not cached and downloads are off.

    >>> create_student("vit_tiny_test", embed_dim=8, image_size=32)(torch.rand(1, 3, 32, 32)).shape
    torch.Size([1, 8])
    """
    if arch in TEST_STUDENT_ARCHS:
        if pretrained:
            raise ValueError(f"{arch} is a test-only architecture with no pretrained weights")
        model_name, kwargs = TEST_STUDENT_ARCHS[arch]
        kwargs = {**kwargs, **timm_kwargs}
    elif timm.is_model(arch):
        model_name, kwargs = arch, dict(timm_kwargs)
    else:
        raise ValueError(f"unknown student arch {arch!r}: not a test alias ({sorted(TEST_STUDENT_ARCHS)}) "
                         f"nor a timm model; try timm.list_models('{arch.split('_')[0]}*')")
    offline = pretrained and not downloads_allowed(allow_download)
    if offline:
        _require_cached_url_weights(model_name)
    try:
        with hub_offline(offline):
            try:
                backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0, img_size=image_size,
                                             **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
                backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as err:
        if offline and is_hub_refusal(err):
            raise StudentWeightsMissing(_missing_weights_message(model_name, "the Hugging Face cache")) from err
        raise
    config = {"arch": arch, "embed_dim": int(embed_dim), "image_size": int(image_size), "head": head,
              "timm_kwargs": timm_kwargs}
    student = Student(backbone, embed_dim, config)
    log.info("student %s: %.2f M params, %d px, %d -> %d", arch, count_params(student) / 1e6, image_size,
             backbone.num_features, embed_dim)
    return student


def _missing_weights_message(model_name: str, looked_in: str) -> str:
    return (f"timm weights of {model_name!r} are not on this machine (looked in {looked_in}) and downloads are off. "
            f"Either opt in once: {ALLOW_DOWNLOAD_ENV}=1 (or create_student(..., allow_download=True)); or start "
            f"from random weights (pretrained=False); or use arch 'tf_efficientnet_lite0', whose ImageNet weights "
            f"ship in a package (train.PACKAGED_IMAGENET_WEIGHTS).")


def _require_cached_url_weights(model_name: str) -> None:
    """Refuse before timm runs when its weights would come from a plain URL (not the hub) and are not cached.

    Hub-hosted weights need no check here: `hub_offline` makes the hub serve its cache or raise.
    """
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or cfg.hf_hub_id or cfg.file or not cfg.url:
        return
    local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
    if not local.is_file():
        raise StudentWeightsMissing(_missing_weights_message(model_name, str(local)))


def reparameterized(model: nn.Module) -> nn.Module:
    """A copy of `model` with train-time branches folded into single convolutions, for int8 export.

    MobileOne-style blocks (FastViT, MobileCLIP's MCi) sum parallel conv / BN branches while training;
    `timm.utils.reparameterize_model` folds each block into one conv (the same function in eval mode). The x86
    int8 quantizer cannot annotate the unfolded branch sums, so stage 2 quantizes this copy. Models without
    such blocks come back as an unchanged copy.

    >>> s = create_student("fastvit_tiny_test", 8, 32).eval(); r = reparameterized(s)
    >>> bool(torch.allclose(s(torch.ones(1, 3, 32, 32)), r(torch.ones(1, 3, 32, 32)), atol=1e-5))
    True
    """
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model, inplace=False)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def student_info(model: Student) -> dict[str, Any]:
    """A JSON-ready summary recorded next to results.

    Returns:
        dict with `arch`, `params` (total), `backbone_params`, `embed_dim`, `image_size`, `head`,
        `features` (the backbone's pooled feature width).
    """
    return {"arch": model.arch, "params": count_params(model), "backbone_params": count_params(model.backbone),
            "embed_dim": model.embed_dim, "image_size": model.image_size, "head": model.config["head"],
            "features": int(model.backbone.num_features)}


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_student(model: Student, path: str | os.PathLike) -> Path:
    """Write the weights to `path` (safetensors) and the build config to `path` with suffix `.json`.

    Both files are written atomically; the sidecar is written last, so a weights file without a
    sidecar means an interrupted save.

    Returns:
        The weights path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a student checkpoint must end in .safetensors (its sidecar is the .json)")
    meta = {"format": CHECKPOINT_FORMAT, **model.config, "params": count_params(model)}
    header = {HEADER_KEY: json.dumps({k: model.config[k] for k in _BUILD_KEYS}, sort_keys=True)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        safetensors.torch.save_model(model, str(tmp), metadata=header)
    write_json(_sidecar(path), meta)
    log.info("saved student %s to %s", model.arch, path)
    return path


def read_student_config(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar config of a checkpoint written by `save_student`.

    Raises:
        CheckpointError: the sidecar is missing or not a student config; the message names the file.
    """
    path = Path(path)
    side = _sidecar(path)
    if not path.exists():
        raise CheckpointError(f"{path}: student checkpoint not found. Check the path; checkpoints are written by "
                              f"edgevl_lib.students.save_student (stage 1: <out_dir>/checkpoints/).")
    if not side.exists():
        raise CheckpointError(f"{path}: missing sidecar {side.name} (arch, embed_dim, image_size); "
                              "re-save the model with edgevl_lib.students.save_student, or copy the .json that was "
                              "written next to it")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{side}: sidecar is not valid JSON ({err}); it is damaged. Re-save the model with "
                              f"edgevl_lib.students.save_student.") from err
    missing = {"arch", "embed_dim", "image_size", "head"} - (meta.keys() if isinstance(meta, dict) else set())
    if missing:
        raise CheckpointError(f"{side}: not a student sidecar, missing keys {sorted(missing)}. Re-save the model "
                              f"with edgevl_lib.students.save_student.")
    if meta.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{side}: checkpoint format {meta['format']} is not {CHECKPOINT_FORMAT}; "
                              "it was written by another version of edgevl_lib")
    header = safetensors_metadata(path).get(HEADER_KEY)
    if header is not None:
        stored = json.loads(header)
        # timm_kwargs are left to the strict tensor load below ("weights do not fit"), which names the tensors
        diff = {k: (stored.get(k), meta.get(k)) for k in ("arch", "embed_dim", "image_size", "head")
                if stored.get(k) != meta.get(k)}
        if diff:
            lines = ", ".join(f"{k}: weights {a!r}, sidecar {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{side}: sidecar does not describe the weights in {path.name} ({lines}); a mixed "
                                  f"or interrupted copy. Copy the .safetensors and its .json together, or re-save.")
    return meta


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file, read without loading tensors.

    Raises:
        CheckpointError: naming the file when it is not a complete safetensors file: a pickle / `torch.save`
            archive (refused, never unpickled), or a truncated / damaged file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found. Check the path.")
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (safetensors.SafetensorError, OSError) as err:
        with path.open("rb") as fh:
            head = fh.read(4)
        kind = ("a torch.save zip archive" if head == b"PK\x03\x04" else
                "a Python pickle" if head[:1] == b"\x80" else "not a complete safetensors file")
        raise CheckpointError(
            f"{path}: {kind} ({err}). edgevl_lib reads weights only from safetensors and never unpickles files. "
            f"Re-save the model with edgevl_lib.students.save_student, or, for a torch.save file from a source you "
            f"trust, convert it: safetensors.torch.save_file(torch.load(path, weights_only=True), out).") from err


def load_student(path: str | os.PathLike, arch: str | None = None, embed_dim: int | None = None,
                 image_size: int | None = None, device: str | torch.device = "cpu") -> Student:
    """Rebuild a student from its sidecar and load its safetensors weights (random init, no download).

    Args:
        path: the `.safetensors` file written by `save_student`.
        arch, embed_dim, image_size: what the caller expects; a checkpoint that differs raises.
        device: where the loaded module lives.

    Raises:
        CheckpointError: the checkpoint holds another architecture / size, or its tensors do not fit;
            the message names the file.
    """
    path = Path(path)
    meta = read_student_config(path)
    for key, expected in (("arch", arch), ("embed_dim", embed_dim), ("image_size", image_size)):
        if expected is not None and meta[key] != expected:
            hint = (" (the width of the teacher it was distilled from: use that teacher, or retrain the student "
                    "against this one)" if key == "embed_dim" else "; load the checkpoint of the student you meant, "
                    "or build the model with its own settings (load_student(path) without arguments)")
            raise CheckpointError(f"{path}: checkpoint holds {key}={meta[key]!r}, expected {expected!r}{hint}")
    model = create_student(meta["arch"], embed_dim=meta["embed_dim"], image_size=meta["image_size"],
                           pretrained=False, head=meta["head"], **meta.get("timm_kwargs", {}))
    load_student_weights(model, path)
    return model.to(device)


def load_student_weights(model: Student, path: str | os.PathLike) -> Student:
    """Load a checkpoint's weights into an existing student of the same architecture (strict).

    Raises:
        CheckpointError: the checkpoint's sidecar names another arch / embed_dim, or a tensor is
            missing, unexpected or of another shape; the message names the file.
    """
    path = Path(path)
    meta = read_student_config(path)
    for key in ("arch", "embed_dim", "head"):
        if meta[key] != model.config[key]:
            raise CheckpointError(f"{path}: checkpoint holds {key}={meta[key]!r} but the model has "
                                  f"{key}={model.config[key]!r}; build the model with load_student({str(path)!r})")
    try:
        safetensors.torch.load_model(model, str(path), strict=True, device=str(model.input_mean.device))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {model.arch}: {str(err)[:500]}") from err
    except safetensors.SafetensorError as err:  # damaged after the header was read
        raise CheckpointError(f"{path}: damaged safetensors file ({err}). Re-save or re-copy it.") from err
    return model
