"""open_clip teachers: `OpenClipTeacher` (real weights), `RandomOpenClipTeacher` (timing only) and open_clip helpers.

`OpenClipTeacher` wraps any open_clip model (the paper's teacher is ViT-g-14 / laion2b_s34b_b88k). Offline by
default: the weights must already be in open_clip's / the Hugging Face cache (`find_open_clip_weights`), or be given
as a checkpoint file; without the opt-in (`allow_download=True` or EDGEVL_ALLOW_DOWNLOAD=1) every Hugging Face hub
request (weights, tokenizers, text-tower configs) is served from the local cache or refused (`download.hub_offline`),
and a checkpoint is read as tensors only (safetensors, or torch.load(weights_only=True)), never unpickled.
`register_open_clip_config` adds an architecture JSON file; `open_clip_parameter_counts` sizes an architecture.

Every `import open_clip` of the workbench lives in this module (each one lazy, inside a function).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgevl_lib.utils import get_device

from .download import ALLOW_DOWNLOAD_ENV, downloads_allowed, hub_offline, is_hub_refusal
from .protocol import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, TeacherCheckpointError, TeacherWeightsMissing,
                       _file_fingerprint, norm_tag, resize_and_normalize)

log = logging.getLogger(__name__)


def find_open_clip_weights(model_name: str, pretrained: str | None,
                           cache_dir: str | None = None) -> tuple[str | None, dict[str, Any], str]:
    """Look for an open_clip tag's weights on this machine without touching the network.

    Checks the Hugging Face cache (`hf_hub` tags; safetensors first, as open_clip does) and open_clip's URL
    cache (`~/.cache/clip` or `cache_dir`).

    Returns:
        (local file or None, the tag's pretrained config, a human-readable source such as the HF hub id).
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"open_clip has no pretrained tag {pretrained!r} for {model_name!r}; known tags: {tags}. "
                         f"Pass checkpoint=/path/to/weights for a local file.")
    sources = []
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # 'org/repo/' -> default file name, as open_clip does
        filename = filename or HF_WEIGHTS_NAME
        sources.append(f"huggingface.co/{repo_id} ({filename})")
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip's deps
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            candidates = ([HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else
                          [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []) + [filename]
            for name in candidates:
                hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit, tag_cfg, sources[0]
    url = tag_cfg.get("url", "")
    if url:
        sources.append(url)
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return str(local), tag_cfg, url
    return None, tag_cfg, " or ".join(sources) or "unknown source"


class OpenClipTeacher:
    """An open_clip CLIP model as a Teacher (ViT-g-14 / laion2b_s34b_b88k in the paper).

    Weights: `checkpoint` (a local file) if given, else the `pretrained` tag resolved in the local caches; only
    when `allow_download` (or EDGEVL_ALLOW_DOWNLOAD=1) may open_clip fetch them. Otherwise the constructor
    raises TeacherWeightsMissing at once, saying how to provide them. Preprocessing (size, mean / std,
    interpolation, resize mode) comes from open_clip's preprocess config of the model and tag, applied in torch.

    Args:
        model_name: an open_clip architecture (`open_clip.list_models()`, or one added with add_model_config).
        pretrained: an open_clip pretrained tag for that architecture.
        checkpoint: a local open_clip state dict (.bin / .pth / .safetensors); overrides `pretrained`.
        allow_download: let open_clip download missing weights.
        cache_dir: open_clip / HF cache folder (default: theirs).
        device: torch device (default utils.get_device()).
    """

    def __init__(self, model_name: str, pretrained: str | None = None, checkpoint: str | os.PathLike | None = None,
                 *, allow_download: bool = False, cache_dir: str | None = None,
                 device: str | torch.device | None = None) -> None:
        import open_clip

        t0 = time.perf_counter()
        self.device = torch.device(device) if device is not None else get_device()
        tag_pp: dict[str, Any] = {}
        force_quick_gelu = False
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise TeacherWeightsMissing(f"open_clip checkpoint {checkpoint} not found. Pass the path of an "
                                            f"open_clip_pytorch_model.bin / .safetensors for {model_name!r}.")
            weights, weights_name = str(checkpoint), f"file-{_file_fingerprint(checkpoint)}"
        elif pretrained:
            weights, tag_cfg, source = find_open_clip_weights(model_name, pretrained, cache_dir)
            weights_name = pretrained
            if weights is None:
                if not downloads_allowed(allow_download):
                    raise TeacherWeightsMissing(
                        f"open_clip weights for {model_name} / {pretrained} are not on this machine (looked in the "
                        f"Hugging Face cache and open_clip's cache{' ' + cache_dir if cache_dir else ''}) and "
                        f"downloads are off. Either download them once: TeacherConfig(allow_download=True) or "
                        f"{ALLOW_DOWNLOAD_ENV}=1 (source: {source}); or pass "
                        f"checkpoint=/path/open_clip_pytorch_model.bin (from {source}).")
                hub_env_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
                if hub_env_offline and "huggingface" in source:
                    raise TeacherWeightsMissing(f"downloads are allowed but HF_HUB_OFFLINE=1 is set; unset it to fetch "
                                                f"{source} once, or pass checkpoint=/path/open_clip_pytorch_model.bin")
                log.info("downloading open_clip weights %s / %s from %s", model_name, pretrained, source)
                weights = pretrained  # open_clip resolves and downloads the tag itself
            else:
                # A local file loses the tag's preprocessing and activation, so pass them explicitly.
                tag_pp = {f"image_{k}": tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                          if tag_cfg.get(k) is not None}
                force_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        else:
            raise ValueError("OpenClipTeacher needs `pretrained` (a tag) or `checkpoint` (a file); random weights "
                             "are not a teacher")
        model, self.tokenizer = _open_clip_model(model_name, weights, checkpoint is not None or weights != pretrained,
                                                 downloads_allowed(allow_download), device=self.device,
                                                 cache_dir=cache_dir, force_quick_gelu=force_quick_gelu, **tag_pp)
        self.model = model.eval().requires_grad_(False)
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        pp = open_clip.get_model_preprocess_cfg(self.model)
        size = pp.get("size", 224)
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"non-square teacher input {size} is not supported")
            size = size[0]
        self.image_size: int = int(size)
        self.mean = tuple(float(v) for v in pp.get("mean", OPENAI_CLIP_MEAN))
        self.std = tuple(float(v) for v in pp.get("std", OPENAI_CLIP_STD))
        self.interpolation: str = pp.get("interpolation", "bicubic")
        self.resize_mode: str = pp.get("resize_mode", "shortest")
        with torch.no_grad():
            self.embed_dim: int = int(self.encode_text(["a"]).shape[-1])
        mode = "" if self.resize_mode == "shortest" else f":{self.resize_mode}"
        self.id: str = (f"open_clip:{model_name}:{weights_name}:{self.image_size}:{self.interpolation}"
                        f"{mode}:{norm_tag(self.mean, self.std)}")
        log.info("teacher %s ready in %.1f s (D=%d)", self.id, time.perf_counter() - t0, self.embed_dim)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW [0, 1] RGB -> BxD: f(x) = normalise(visual(resize_and_normalize(x)))."""
        x = resize_and_normalize(images.to(self.device), self.image_size, self.mean, self.std,
                                 self.interpolation, self.resize_mode)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """B strings -> BxD: g(t) = normalise(text_tower(tokenize(t)))."""
        out = [self.model.encode_text(self.tokenizer(list(texts[i:i + batch_size])).to(self.device)).float()
               for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out), dim=-1)


def _open_clip_model(model_name: str, weights: str | None, local_file: bool, allow_download: bool,
                     **kwargs: Any) -> tuple[nn.Module, Any]:
    """open_clip's model + tokenizer, offline unless allowed; loading failures become one clear error.

    `weights` is a local file (`local_file`), an open_clip tag (open_clip downloads it; only reached when
    allowed) or None (random init). open_clip reads a local file with safetensors or
    torch.load(weights_only=True), so a file holding pickled code is refused, never run.
    """
    import open_clip

    try:
        with hub_offline(not allow_download):
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=weights, **kwargs)
            tokenizer = open_clip.get_tokenizer(model_name, cache_dir=kwargs.get("cache_dir"))
    except Exception as err:
        if not allow_download and is_hub_refusal(err):
            raise TeacherWeightsMissing(_hub_files_missing(model_name, err)) from err
        if not local_file:
            raise
        if "Weights only load failed" in str(err):  # torch.load(weights_only=True) met a non-tensor object
            raise TeacherCheckpointError(
                f"{weights}: refused: the file holds pickled Python objects besides tensors, which could run code "
                f"(torch.load(weights_only=True) stopped at: {str(err).splitlines()[-1][:160]}). Use the "
                f"safetensors / plain state-dict release of these weights, or convert a file you trust to "
                f"safetensors on another machine.") from err
        import safetensors

        # state-dict mismatch (RuntimeError, AssertionError, KeyError), damaged file (SafetensorError, UnpicklingError)
        if isinstance(err, (RuntimeError, KeyError, ValueError, AssertionError, safetensors.SafetensorError)) or \
                type(err).__name__ == "UnpicklingError":
            raise TeacherCheckpointError(
                f"{weights}: cannot load it into open_clip {model_name!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:300]}). The file holds another architecture or is damaged: pass the "
                f"model name it was trained as (TeacherConfig(model=...)) or re-download the file.") from err
        raise
    return model, tokenizer


def _hub_files_missing(model_name: str, err: BaseException) -> str:
    return (f"open_clip {model_name} needs files from the Hugging Face hub that are not cached here (a tokenizer or "
            f"text-tower config; {str(err).splitlines()[0][:200]}) and downloads are off. Opt in once with "
            f"{ALLOW_DOWNLOAD_ENV}=1 (or TeacherConfig(allow_download=True)) to fill the cache; later runs are "
            f"offline.")


class RandomOpenClipTeacher(OpenClipTeacher):
    """TIMING ONLY: an open_clip architecture with RANDOM weights (`pretrained=None`). Not a teacher.

    Its embeddings carry no meaning; it exists to measure what a teacher forward costs (e.g. the stage-1 epoch
    with `teacher_mode="online"` against stored embeddings, `stage1.time_cached_vs_online`). Compute is that of the
    real model: same architecture, input size and preprocessing (open_clip's defaults for the architecture).
    Nothing is downloaded. The id starts with `random-open_clip:` so it is never mistaken for a real teacher.

    Args:
        model_name: an open_clip architecture, e.g. `ViT-B-16`.
        embed_dim: override the joint embedding width (only the final projections change; default: the
            architecture's), e.g. to match a cache built by another teacher.
        seed: seed of the random initialisation.
        device: torch device (default utils.get_device()).

    >>> RandomOpenClipTeacher("ViT-B-16", embed_dim=384).encode_image(torch.rand(2, 3, 64, 64)).shape  # doctest: +SKIP
    torch.Size([2, 384])
    """

    def __init__(self, model_name: str = "ViT-B-16", *, embed_dim: int | None = None, seed: int = 0,
                 device: str | torch.device | None = None) -> None:
        import open_clip

        self.device = torch.device(device) if device is not None else get_device()
        offline = not downloads_allowed()
        try:
            with torch.random.fork_rng(devices=[]), hub_offline(offline):
                torch.manual_seed(seed)
                model = open_clip.create_model(model_name, pretrained=None, device=self.device,
                                               **({"embed_dim": embed_dim} if embed_dim else {}))
                self.tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as err:
            if offline and is_hub_refusal(err):
                raise TeacherWeightsMissing(_hub_files_missing(model_name, err)) from err
            raise
        self.model = model.eval().requires_grad_(False)
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        pp = open_clip.get_model_preprocess_cfg(self.model)
        size = pp.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(float(v) for v in pp.get("mean", OPENAI_CLIP_MEAN))
        self.std = tuple(float(v) for v in pp.get("std", OPENAI_CLIP_STD))
        self.interpolation = pp.get("interpolation", "bicubic")
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.embed_dim = int(self.model.visual.output_dim)
        self.id = f"random-open_clip:{model_name}:seed{seed}:D{self.embed_dim}:{self.image_size}"
        log.warning("teacher %s has RANDOM weights: for timing only", self.id)


def register_open_clip_config(path: str | os.PathLike, model_name: str) -> None:
    """Make the open_clip architecture JSON file `path` (named `<model_name>.json`) known to open_clip.

    Raises:
        TeacherCheckpointError: the file is missing or not named after `model_name`.
    """
    import open_clip

    path = Path(path)
    if not path.is_file() or path.stem != model_name:
        raise TeacherCheckpointError(f"{path}: an open_clip model config must exist and be named {model_name}.json "
                                     f"(teacher.model); fix teacher.model_config or teacher.model")
    open_clip.add_model_config(path)


def open_clip_parameter_counts(model_name: str) -> tuple[int, int]:
    """(parameters of the whole model, of its image tower) of an open_clip architecture, without allocating it.

    The model is built on the `meta` device (shapes only), so ViT-g-14 (1.37 G parameters) costs nothing.
    """
    import open_clip

    with torch.device("meta"):  # without it open_clip builds and initialises on CPU first (ViT-g-14: 5.5 GB, 25 s)
        model = open_clip.create_model(model_name, pretrained=None, device="meta")
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.visual.parameters())
