"""Students: every supported arch builds offline, one shared encoder for all modalities, exact checkpoints."""
from __future__ import annotations

import json

import pytest
import timm
import torch

from edgevl_lib.students import (DEFAULT_STUDENT_ARCH, PAPER_STUDENT_ARCHS, TEST_STUDENT_ARCHS, CheckpointError,
                                 count_params, create_student, load_student, load_student_weights, save_student,
                                 student_info)

SIZE = 32
EMBED = 16


def _images(seed: int, batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", [DEFAULT_STUDENT_ARCH, *PAPER_STUDENT_ARCHS, *TEST_STUDENT_ARCHS])
def test_every_arch_builds_offline_and_embeds(arch: str) -> None:
    torch.manual_seed(0)
    student = create_student(arch, embed_dim=EMBED, image_size=SIZE).eval()
    with torch.no_grad():
        out = student(_images(1))
        unit = student.encode(_images(1))
    assert out.shape == (2, EMBED) and torch.isfinite(out).all()
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2))
    info = student_info(student)
    assert info["arch"] == arch and info["params"] == count_params(student) > info["backbone_params"]
    assert info["features"] == student.head.in_features and info["embed_dim"] == EMBED


def test_paper_archs_exist_in_timm() -> None:
    for arch in PAPER_STUDENT_ARCHS:
        assert timm.is_model(arch), arch


@pytest.mark.parametrize("arch, size", [("vit_tiny_test", 48), ("swin_tiny_test", 64)])
def test_image_size_reaches_transformers(arch: str, size: int) -> None:
    student = create_student(arch, embed_dim=EMBED, image_size=size)
    assert tuple(student.backbone.patch_embed.img_size) == (size, size)
    assert student(_images(2, size=size)).shape == (2, EMBED)


def test_student_normalises_inputs_with_timm_mean_std() -> None:
    torch.manual_seed(0)
    student = create_student("vit_tiny_test", embed_dim=EMBED, image_size=SIZE).eval()
    cfg = student.backbone.pretrained_cfg
    x = _images(3)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = student.head(student.backbone((x - mean) / std))
        torch.testing.assert_close(student(x), expected, rtol=0, atol=0)
    assert cfg["mean"] == (0.5, 0.5, 0.5)  # vit_* timm default, not the identity


def test_one_encoder_shared_by_both_modalities_gets_gradients_from_both() -> None:
    torch.manual_seed(0)
    student = create_student("conv_tiny_test", embed_dim=EMBED, image_size=SIZE)
    rgb, depth = _images(4), _images(5).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    target = torch.randn(2, EMBED, generator=torch.Generator().manual_seed(6))

    def grads(use_rgb: bool, use_depth: bool) -> list[torch.Tensor]:
        student.zero_grad()
        loss = sum((student(x) - target).abs().mean() for x, used in ((rgb, use_rgb), (depth, use_depth)) if used)
        loss.backward()
        return [p.grad.clone() for p in student.parameters()]

    g_rgb, g_depth, g_both = grads(True, False), grads(False, True), grads(True, True)
    head_w = [n for n, _ in student.named_parameters()].index("head.weight")
    assert not torch.equal(g_rgb[head_w], g_depth[head_w])  # both modalities contribute something different
    for a, b, both in zip(g_rgb, g_depth, g_both):
        torch.testing.assert_close(both, a + b)


def test_save_load_round_trip_is_exact(tmp_path) -> None:
    torch.manual_seed(0)
    student = create_student("vit_tiny_test", embed_dim=EMBED, image_size=SIZE, head="mlp").eval()
    path = save_student(student, tmp_path / "ckpt" / "student.safetensors")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["arch"] == "vit_tiny_test" and sidecar["embed_dim"] == EMBED and sidecar["image_size"] == SIZE
    assert sidecar["head"] == "mlp"

    loaded = load_student(path, arch="vit_tiny_test").eval()
    for (name, a), (_, b) in zip(student.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(student(_images(7)), loaded(_images(7)))


def test_wrong_arch_load_names_the_file(tmp_path) -> None:
    conv = create_student("conv_tiny_test", embed_dim=EMBED, image_size=SIZE)
    path = save_student(conv, tmp_path / "conv.safetensors")
    with pytest.raises(CheckpointError, match="conv.safetensors.*arch='conv_tiny_test'"):
        load_student(path, arch="vit_tiny_test")
    with pytest.raises(CheckpointError, match="conv.safetensors.*conv_tiny_test.*vit_tiny_test"):
        load_student_weights(create_student("vit_tiny_test", embed_dim=EMBED, image_size=SIZE), path)
    with pytest.raises(CheckpointError, match="conv.safetensors.*embed_dim"):
        load_student_weights(create_student("conv_tiny_test", embed_dim=EMBED + 1, image_size=SIZE), path)


def test_tensor_mismatch_and_missing_sidecar_name_the_file(tmp_path) -> None:
    path = save_student(create_student("conv_tiny_test", embed_dim=EMBED, image_size=SIZE), tmp_path / "a.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["timm_kwargs"] = {"stem_width": 8}  # same arch name, other shapes: the tensors no longer fit
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="a.safetensors: weights do not fit"):
        load_student(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="a.safetensors: missing sidecar a.json"):
        load_student(path)


def test_bad_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown student arch"):
        create_student("no_such_net", embed_dim=EMBED, image_size=SIZE)
    with pytest.raises(ValueError, match="test-only"):
        create_student("vit_tiny_test", embed_dim=EMBED, image_size=SIZE, pretrained=True)
    with pytest.raises(ValueError, match="unknown head"):
        create_student("conv_tiny_test", embed_dim=EMBED, image_size=SIZE, head="conv")
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_student(create_student("conv_tiny_test", embed_dim=EMBED, image_size=SIZE), tmp_path / "s.json")


def test_same_seed_same_weights() -> None:
    torch.manual_seed(3)
    a = create_student("swin_tiny_test", embed_dim=EMBED, image_size=SIZE)
    torch.manual_seed(3)
    b = create_student("swin_tiny_test", embed_dim=EMBED, image_size=SIZE)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.example_inputs(batch_size=3)[0].shape == (3, 3, SIZE, SIZE)
