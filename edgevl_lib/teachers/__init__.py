"""Vision-language teachers: one `Teacher` protocol, three implementations, CLIP zero-shot helpers.

A teacher maps images and texts into one L2-normalised space; zero-shot classification (CLIP) is

    logits_k(x) = scale * <f(x), g(t_k)>,   p(k | x) = softmax_k(logits(x)),

with f the image encoder, g the text encoder and t_k the prompts of class k ("a photo of a {}.").

* `protocol`: the `Teacher` protocol, TeacherWeightsMissing / TeacherCheckpointError, the zero-shot helpers
  (`prompt_ensemble`, `text_classifier`, `zero_shot_logits`) and the torch preprocessing (`resize_and_normalize`).
* `download`: the offline policy (EDGEVL_ALLOW_DOWNLOAD, `downloads_allowed`, `hub_offline`, `is_hub_refusal`).
* `openclip`: `OpenClipTeacher`, any open_clip model (the paper's teacher is ViT-g-14 / laion2b_s34b_b88k), offline
  by default; `RandomOpenClipTeacher` (timing only). The only module that imports open_clip.
* `ensemble`: `EnsembleTeacher`, MobileCLIP-style ensemble, embeddings concatenated and re-normalised.
* `embedded`: `EmbeddedTeacher`, the offline default (packaged EfficientNet-lite0 + MiniLM-L6 + a trained head).

`build_teacher` (here) builds the one a TeacherConfig describes; every name of the submodules that the rest of the
workbench uses is importable from `edgevl_lib.teachers`.

    >>> teacher = build_teacher(TeacherConfig().smoke())                      # doctest: +SKIP
    >>> cls = text_classifier(teacher, ["chair", "lamp"], ["a photo of a {}."])
    >>> zero_shot_logits(teacher.encode_image(images), cls).argmax(-1)

Every `encode_*` runs in eval mode under `torch.no_grad()` and returns float32 BxD on the teacher's device.
"""
from __future__ import annotations

from pathlib import Path

from edgevl_lib.config import TeacherConfig

from .download import ALLOW_DOWNLOAD_ENV, downloads_allowed, hub_offline, is_hub_refusal
from .embedded import (CALIBRATION_SHARE, CPU_CHUNK, EFFICIENTNET_ARCH, EFFICIENTNET_MEAN, EFFICIENTNET_STD,
                       EMBEDDED_CACHE_VERSION, EmbeddedTeacher, EmbeddingHead, MiniLMTextEncoder,
                       TruncatedEfficientNet, _extract_features, _rgb_pretrain_set, _shared_efficientnet_lite0,
                       _shared_minilm, _train_config_dict, calibrate_logit_scale, efficientnet_lite0_path,
                       fold_batch_norms, imagenet_topk, load_efficientnet_lite0, minilm_path, tensor_dict_hash,
                       train_embedded_teacher)
from .ensemble import EnsembleTeacher, ensemble_soft_targets
from .openclip import (OpenClipTeacher, RandomOpenClipTeacher, _hub_files_missing, _open_clip_model,
                       find_open_clip_weights, open_clip_parameter_counts, register_open_clip_config)
from .protocol import (IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Teacher,
                       TeacherCheckpointError, TeacherWeightsMissing, _file_fingerprint, norm_tag, prompt_ensemble,
                       resize_and_normalize, text_classifier, zero_shot_logits)

__all__ = [
    # protocol
    "IMAGENET_MEAN", "IMAGENET_STD", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "Teacher", "TeacherCheckpointError",
    "TeacherWeightsMissing", "norm_tag", "prompt_ensemble", "resize_and_normalize", "text_classifier",
    "zero_shot_logits",
    # download
    "ALLOW_DOWNLOAD_ENV", "downloads_allowed", "hub_offline", "is_hub_refusal",
    # openclip
    "OpenClipTeacher", "RandomOpenClipTeacher", "find_open_clip_weights", "open_clip_parameter_counts",
    "register_open_clip_config",
    # ensemble
    "EnsembleTeacher", "ensemble_soft_targets",
    # embedded
    "CALIBRATION_SHARE", "CPU_CHUNK", "EFFICIENTNET_ARCH", "EFFICIENTNET_MEAN", "EFFICIENTNET_STD",
    "EMBEDDED_CACHE_VERSION", "EmbeddedTeacher", "EmbeddingHead", "MiniLMTextEncoder", "TruncatedEfficientNet",
    "calibrate_logit_scale", "efficientnet_lite0_path", "fold_batch_norms", "imagenet_topk",
    "load_efficientnet_lite0", "minilm_path", "tensor_dict_hash", "train_embedded_teacher",
    # here
    "build_teacher",
    # private helpers of the former single module, still importable from here (tests use some)
    "_file_fingerprint", "_hub_files_missing", "_open_clip_model", "_extract_features", "_rgb_pretrain_set",
    "_shared_efficientnet_lite0", "_shared_minilm", "_train_config_dict",
]


def build_teacher(cfg: TeacherConfig) -> Teacher:
    """Build the teacher a TeacherConfig describes (`embedded`, `open_clip` or `ensemble`).

    `embedded` renders / reuses the benchmark (`render.build_benchmark(cfg.benchmark)`) unless
    `cfg.pretrain_root` points at a teacher_pretrain folder, then trains or loads the cached head.

    >>> teacher = build_teacher(TeacherConfig(kind="open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k",
    ...                                       allow_download=True))          # doctest: +SKIP
    """
    if cfg.kind == "open_clip":
        if cfg.model_config:
            register_open_clip_config(cfg.model_config, cfg.model)
        return OpenClipTeacher(cfg.model, cfg.pretrained, cfg.checkpoint, allow_download=cfg.allow_download,
                               cache_dir=cfg.cache_dir, device=cfg.device)
    if cfg.kind == "ensemble":
        return EnsembleTeacher([build_teacher(m) for m in cfg.members], mode=cfg.ensemble_mode)
    if cfg.kind == "embedded":
        from edgevl_lib.data import PairedFolder

        if cfg.pretrain_root:
            root = Path(cfg.pretrain_root)
        else:
            from edgevl_lib.render import build_benchmark

            root = Path(build_benchmark(cfg.benchmark)) / "teacher_pretrain"
        return train_embedded_teacher(PairedFolder(root, modalities=("rgb",)), cfg)
    raise ValueError(f"unknown teacher kind {cfg.kind!r}; use embedded, open_clip or ensemble")
