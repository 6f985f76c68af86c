"""Tests for edgevl_lib.teachers: zero-shot helpers, open_clip loading (tiny config, local checkpoint, offline
failure), the concat ensemble, and the embedded teacher (real packaged weights, tiny synthetic data)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgevl_lib.config import TeacherConfig  # noqa: E402
from edgevl_lib.data import PairedDataset, Sample  # noqa: E402
from edgevl_lib.teachers import (  # noqa: E402
    EnsembleTeacher,
    RandomOpenClipTeacher,
    Teacher,
    TeacherWeightsMissing,
    build_teacher,
    ensemble_soft_targets,
    imagenet_topk,
    resize_and_normalize,
    text_classifier,
    train_embedded_teacher,
    zero_shot_logits,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("EDGEVL_ALLOW_DOWNLOAD", raising=False)
    torch.set_num_threads(min(2, torch.get_num_threads()))


class StubTeacher:
    """A deterministic toy teacher: image -> W @ (mean colour), text -> a fixed vector per string."""

    def __init__(self, dim: int, seed: int, name: str = "stub") -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, 3, generator=g)
        self.seed, self.embed_dim, self.image_size, self.id = seed, dim, 8, f"{name}{seed}"
        self.logit_scale = 10.0 + seed

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.mean(dim=(2, 3)) @ self.w.t(), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(
            self.seed * 1000 + sum(map(ord, t)))) for t in texts]
        return F.normalize(torch.stack(rows), dim=-1)


# ----------------------------------------------------------------------------------------------
# zero-shot helpers and preprocessing
# ----------------------------------------------------------------------------------------------


def test_text_classifier_is_normalised_mean_of_normalised_prompts():
    t = StubTeacher(6, seed=1)
    templates = ["a photo of a {}.", "a {} in a room."]
    cls = text_classifier(t, ["cat", "dog"], templates)
    for k, c in enumerate(["cat", "dog"]):
        e = t.encode_text([tpl.format(c) for tpl in templates])
        expect = F.normalize(e.mean(0), dim=0)
        assert torch.allclose(cls[k], expect, atol=1e-6)
    img = F.normalize(torch.tensor([[1.0, 0, 0, 0, 0, 0]]), dim=-1)
    logits = zero_shot_logits(img, cls, scale=10.0)
    assert torch.allclose(logits, 10.0 * cls[:, 0][None], atol=1e-6)
    assert isinstance(t, Teacher)


def test_resize_and_normalize_shortest_side_then_centre_crop():
    x = torch.rand(2, 3, 16, 32)
    y = resize_and_normalize(x, 8, (0.5,) * 3, (0.25,) * 3, "bicubic", "shortest")
    assert y.shape == (2, 3, 8, 8)
    same = resize_and_normalize(x[..., :16], 16, (0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(same, (x[..., :16] - 0.5) / 0.25)  # no resize when sizes match
    assert resize_and_normalize(x, 8, (0,) * 3, (1,) * 3, resize_mode="squash").shape == (2, 3, 8, 8)


# ----------------------------------------------------------------------------------------------
# open_clip: a tiny registered config, random weights saved as a local checkpoint
# ----------------------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip_cfg")
    name = "edgevl-test-tiny-vit"
    (folder / f"{name}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    ckpt = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return name, ckpt, model.eval()


def test_open_clip_teacher_loads_local_checkpoint_through_open_clip(tiny_clip):
    import open_clip
    from PIL import Image

    name, ckpt, ref = tiny_clip
    teacher = build_teacher(TeacherConfig(kind="open_clip", model=name, pretrained=None, checkpoint=str(ckpt),
                                          device="cpu"))
    assert teacher.id.startswith(f"open_clip:{name}:file-") and teacher.id.endswith(":16:bicubic:clipnorm")
    assert (teacher.embed_dim, teacher.image_size) == (16, 16)
    assert not teacher.model.training
    for k, v in ref.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[k], v), k

    # Same result as open_clip's own PIL preprocessing on a 16 px image (no resize involved).
    img = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).round() / 255
    pil = Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    _, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(ckpt))
    with torch.no_grad():
        expect = F.normalize(ref.encode_image(preprocess(pil)[None]), dim=-1)
    got = teacher.encode_image(img)
    assert torch.allclose(got, expect, atol=1e-5)
    assert not got.requires_grad and got.dtype == torch.float32

    # Any input size, unit norm; text matches open_clip's tokenizer + text tower.
    big = teacher.encode_image(torch.rand(3, 3, 40, 56))
    assert big.shape == (3, 16) and torch.allclose(big.norm(dim=-1), torch.ones(3), atol=1e-5)
    texts = ["a photo of a chair.", "a photo of a lamp."]
    with torch.no_grad():
        expect_t = F.normalize(ref.encode_text(open_clip.get_tokenizer(name)(texts)), dim=-1)
    assert torch.allclose(teacher.encode_text(texts), expect_t, atol=1e-5)


def test_random_open_clip_teacher_is_open_clip_random_init_for_timing(tiny_clip):
    import open_clip

    name, _, _ = tiny_clip
    rng = torch.get_rng_state()
    teacher = RandomOpenClipTeacher(name, embed_dim=8, seed=3, device="cpu")
    assert torch.equal(torch.get_rng_state(), rng)  # seeded privately
    assert teacher.id == f"random-open_clip:{name}:seed3:D8:16" and (teacher.embed_dim, teacher.image_size) == (8, 16)
    torch.manual_seed(3)
    ref = open_clip.create_model(name, pretrained=None, embed_dim=8).eval()
    for k, v in ref.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[k], v), k
    img = torch.rand(3, 3, 24, 20)
    with torch.no_grad():
        x = resize_and_normalize(img, 16, teacher.mean, teacher.std, teacher.interpolation, teacher.resize_mode)
        expect = F.normalize(ref.encode_image(x), dim=-1)
    assert torch.allclose(teacher.encode_image(img), expect, atol=1e-6)
    assert teacher.encode_text(["a chair"]).shape == (1, 8)
    other = RandomOpenClipTeacher(name, seed=4, device="cpu")
    assert other.embed_dim == 16 and not torch.equal(other.encode_image(img)[:, :8], teacher.encode_image(img))


def test_open_clip_missing_weights_fail_fast_with_instructions(tmp_path):
    cfg = TeacherConfig(kind="open_clip", model="ViT-g-14", pretrained="laion2b_s34b_b88k",
                        cache_dir=str(tmp_path), device="cpu")
    start = time.perf_counter()
    with pytest.raises(TeacherWeightsMissing) as err:
        build_teacher(cfg)
    assert time.perf_counter() - start < 5.0
    msg = str(err.value)
    for needle in ("allow_download=True", "EDGEVL_ALLOW_DOWNLOAD=1", "checkpoint=/path/open_clip_pytorch_model.bin",
                   "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"):
        assert needle in msg, needle
    os.environ["EDGEVL_ALLOW_DOWNLOAD"] = "1"  # opted in, but HF_HUB_OFFLINE=1 still forbids the hub
    try:
        with pytest.raises(TeacherWeightsMissing, match="HF_HUB_OFFLINE"):
            build_teacher(cfg)
    finally:
        del os.environ["EDGEVL_ALLOW_DOWNLOAD"]
    with pytest.raises(TeacherWeightsMissing, match="not found"):
        build_teacher(TeacherConfig(kind="open_clip", model="ViT-g-14", checkpoint=str(tmp_path / "nope.bin")))


# ----------------------------------------------------------------------------------------------
# ensemble
# ----------------------------------------------------------------------------------------------


def test_ensemble_concat_and_soft_targets_match_hand_computation():
    a, b = StubTeacher(4, seed=1), StubTeacher(6, seed=2)
    ens = EnsembleTeacher([a, b], mode="concat")
    assert ens.embed_dim == 10 and ens.image_size == 8 and ens.id == "ensemble:concat[stub1|stub2]"
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    fa, fb = a.encode_image(x), b.encode_image(x)
    expect = torch.cat([fa, fb], dim=-1) / 2 ** 0.5
    assert torch.allclose(ens.encode_image(x), expect, atol=1e-6)
    texts = ["cat", "dog", "bird"]
    ga, gb = a.encode_text(texts), b.encode_text(texts)
    # ensemble cosine = mean of member cosines
    assert torch.allclose(ens.encode_image(x) @ ens.encode_text(texts).t(), (fa @ ga.t() + fb @ gb.t()) / 2,
                          atol=1e-6)
    p = ensemble_soft_targets([a, b], x, [ga, gb], scale=20.0)
    hand = ((20 * fa @ ga.t()).softmax(-1) + (20 * fb @ gb.t()).softmax(-1)) / 2
    assert torch.allclose(p, hand, atol=1e-6) and torch.allclose(p.sum(-1), torch.ones(5))
    with pytest.raises(ValueError):
        ensemble_soft_targets([a, b], x, [ga])


# ----------------------------------------------------------------------------------------------
# embedded teacher: real packaged weights (loaded once), tiny synthetic data
# ----------------------------------------------------------------------------------------------


class ColourShapes(PairedDataset):
    """Three classes of 32 px RGB images: a red disc, a green square, a blue bar on grey noise."""

    name = "colour_shapes"

    def __init__(self, per_class: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.class_names = ["apple", "leaf", "sky"]
        self.modalities = ("rgb",)
        self.per_class, self.seed = per_class, seed
        self.ids = [f"s{i:03d}" for i in range(3 * per_class)]
        self.labels = [i % 3 for i in range(3 * per_class)]

    def load(self, index: int) -> Sample:
        g = torch.Generator().manual_seed(self.seed * 10_000 + index)
        label = self.labels[index]
        img = 0.4 + 0.1 * torch.rand(3, 32, 32, generator=g)
        yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        cx, cy = (8 + torch.randint(0, 16, (2,), generator=g)).tolist()
        mask = [((xx - cx) ** 2 + (yy - cy) ** 2) < 36, ((xx - cx).abs() < 6) & ((yy - cy).abs() < 6),
                ((yy - cy).abs() < 3)][label]
        img[:, mask] = torch.eye(3)[label][:, None]
        return Sample({"rgb": img}, label, self.ids[index])


@pytest.fixture(scope="module")
def grace_hopper() -> torch.Tensor:
    import matplotlib
    import numpy as np
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_efficientnet_lite0_weights_load_and_classify_a_photo(grace_hopper):
    from edgevl_lib.teachers import _shared_efficientnet_lite0, efficientnet_lite0_path

    src = torch.load(efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    dst = _shared_efficientnet_lite0().state_dict()
    assert len(src) == len(dst) == 296
    assert all(torch.equal(a, b) for a, b in zip(src.values(), dst.values()))
    top = imagenet_topk(grace_hopper, k=5)[0]
    assert top[0][0] == "military uniform" and top[0][1] > 0.3, top


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    cache = tmp_path_factory.mktemp("edgevl_cache")
    old = os.environ.get("EDGEVL_CACHE")
    os.environ["EDGEVL_CACHE"] = str(cache)
    cfg = TeacherConfig(kind="embedded", device="cpu").smoke()
    cfg = dataclasses.replace(cfg, image_size=32, epochs=3, batch_size=8, lr=3e-3)
    teacher = train_embedded_teacher(ColourShapes(), cfg, device="cpu")
    yield teacher, cfg, cache
    if old is None:
        os.environ.pop("EDGEVL_CACHE", None)
    else:
        os.environ["EDGEVL_CACHE"] = old


def test_embedded_teacher_is_a_vlm_with_cached_deterministic_head(embedded):
    teacher, cfg, cache = embedded
    assert isinstance(teacher, Teacher)
    assert teacher.embed_dim == 384 and teacher.image_size == 32
    assert teacher.id.startswith("embedded:tf_efficientnet_lite0@blocks.6:pool4+5+6+mlp64-")
    assert teacher.id.endswith(":minilm-l6-v2:32:bicubic:halfnorm")
    files = list((cache / "teachers").glob("embedded-*.safetensors"))
    assert len(files) == 1 and not teacher.train_info["from_cache"]

    # text tower: real MiniLM sentence embeddings, unit norm, paraphrases closer than other objects
    t = teacher.encode_text(["a photo of a chair.", "a picture of a chair.", "a photo of a bottle."])
    assert t.shape == (3, 384) and torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert t[0] @ t[1] > t[0] @ t[2] + 0.1

    # image tower: any size in, unit-norm 384-d out; any class names (also unseen) go through the text tower
    ds = ColourShapes(per_class=2, seed=1)
    x = torch.stack([ds[i].images["rgb"] for i in range(len(ds))])
    f = teacher.encode_image(torch.nn.functional.interpolate(x, size=48))
    assert f.shape == (6, 384) and torch.allclose(f.norm(dim=-1), torch.ones(6), atol=1e-5)
    w = text_classifier(teacher, ["apple", "leaf", "sky", "submarine"], list(cfg.templates))
    assert zero_shot_logits(f, w).shape == (6, 4)

    # cached: the second call loads the same head; same seed, no cache -> bitwise the same weights
    again = train_embedded_teacher(ColourShapes(), cfg, device="cpu")
    assert again.train_info["from_cache"] and again.id == teacher.id
    fresh = train_embedded_teacher(ColourShapes(), cfg, device="cpu", use_cache=False)
    assert fresh.id == teacher.id
    for k, v in teacher.head.state_dict().items():
        assert torch.equal(fresh.head.state_dict()[k], v), k


def test_embedded_teacher_refuses_eval_split(tmp_path):
    ds = ColourShapes(per_class=1)
    ds.root = tmp_path / "eval"
    with pytest.raises(ValueError, match="teacher_pretrain"):
        train_embedded_teacher(ds, TeacherConfig().smoke(), device="cpu", use_cache=False)


def test_calibrated_logit_scale_matches_the_closed_form_optimum():
    # two classes, cos gap d = 0.1 for every image, a share p = 0.9 of them labelled with the closer class:
    # NLL(s) = p log(1 + e^{-sd}) + (1 - p) log(1 + e^{sd}) is minimised at s* = ln(p / (1 - p)) / d = 21.97
    from edgevl_lib.teachers import calibrate_logit_scale

    img = torch.tensor([[1.0, 0.0]]).repeat(10, 1)
    cls = torch.tensor([[0.6, 0.8], [0.5, 0.866]])  # cos 0.6 vs 0.5
    labels = torch.tensor([0] * 9 + [1])
    out = calibrate_logit_scale(img, cls, labels)
    assert abs(out["logit_scale"] - math.log(9) / 0.1) / (math.log(9) / 0.1) < 0.025  # grid step is 2.3 %
    assert out["accuracy"] == pytest.approx(0.9) and out["images"] == 10


def test_ensemble_logit_scale_is_the_members_mean():
    ens = EnsembleTeacher([StubTeacher(4, seed=0), StubTeacher(6, seed=2)])
    assert ens.logit_scale == 11.0


def test_fold_batch_norms_matches_conv_bn_and_keeps_the_activation():
    import timm
    from torch import nn

    from edgevl_lib.teachers import fold_batch_norms

    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    for m in net.modules():  # non-trivial statistics, as trained networks have
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        folded = fold_batch_norms(net)
        out = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.ReLU6) for m in folded.modules())  # BatchNormAct2d's activation survives
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    # a BN in training mode is left alone
    train_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert isinstance(fold_batch_norms(train_bn)[1], nn.BatchNorm2d)


def test_minilm_text_memo_returns_the_model_output_without_loading_it(tmp_path, monkeypatch):
    from edgevl_lib.teachers import MiniLMTextEncoder

    monkeypatch.setenv("EDGEVL_CACHE", str(tmp_path))
    texts = ["a photo of a chair.", "a photo of a lamp."]
    first = MiniLMTextEncoder()
    emb = first(texts)
    assert first._st is not None and len(list((tmp_path / "text").glob("*.safetensors"))) == 1
    second = MiniLMTextEncoder()
    assert torch.equal(second(texts), emb) and second._st is None  # memo hit: the model was never loaded
    assert torch.allclose(MiniLMTextEncoder(memo=False)(texts), emb, atol=1e-6)
    # another list is another entry; a damaged memo is recomputed, not trusted
    second(["a photo of a mug."])
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 2
    memo = second._memo_path(texts)
    memo.write_bytes(b"not a safetensors file")
    assert torch.allclose(MiniLMTextEncoder()(texts), emb, atol=1e-6)
