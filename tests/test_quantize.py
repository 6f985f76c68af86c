"""Tests for edgevl_lib.quantize: PTQ, QAT and int8 conversion on tiny timm students, the .pt2 round trip."""
from __future__ import annotations

import zipfile

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from edgevl_lib.config import QuantConfig
from edgevl_lib.quantize import (
    calibrate,
    convert,
    export_for_quant,
    load_int8,
    model_size_bytes,
    prepare_ptq,
    prepare_qat,
    save_int8,
    set_training,
)

SIZE = 32


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=SIZE, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)


def tiny_conv(batch_norm: bool = True) -> nn.Module:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d if batch_norm else (lambda channels: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), norm(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), norm(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 64),
    )


STUDENTS = {"vit": tiny_vit, "conv": tiny_conv, "conv_no_bn": lambda: tiny_conv(batch_norm=False)}


def _batches(n: int, batch: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, SIZE, SIZE, generator=g) for _ in range(n)]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(1), b.flatten(1)).min().item()


def _fake_quantizers(prepared: torch.fx.GraphModule) -> list[nn.Module]:
    return [m for name, m in prepared.named_children() if name.startswith("activation_post_process")]


@pytest.fixture(scope="module", params=["conv", "vit"])
def ptq(request):
    """(float model, converted int8 model) after calibration on 4 random batches."""
    model = STUDENTS[request.param]().eval()
    prepared = prepare_ptq(model, (_batches(1)[0],))
    calibrate(prepared, _batches(6), max_batches=4)
    return model, convert(prepared)


def test_ptq_int8_close_to_fp32_at_any_batch_size(ptq):
    model, int8 = ptq
    for x in (_batches(1, batch=8, seed=1)[0], _batches(1, batch=3, seed=2)[0]):  # dynamic batch dimension
        with torch.no_grad():
            assert _cosine(int8(x), model(x)) >= 0.98


def test_convert_stores_int8_per_channel_weights(ptq):
    model, int8 = ptq
    targets = [n.target for n in int8.graph.nodes if n.op == "call_function"]
    n_weights = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert targets.count(torch.ops.quantized_decomposed.dequantize_per_channel.default) == n_weights
    assert torch.ops.quantized_decomposed.quantize_per_tensor.default in targets  # activations, per tensor
    int8_params = [t for t in int8.state_dict().values() if t.dtype == torch.int8]
    assert sum(t.numel() for t in int8_params) == sum(m.weight.numel() for m in model.modules()
                                                      if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_save_load_round_trip_is_exact_and_int8_on_disk(ptq, tmp_path):
    model, int8 = ptq
    example = (_batches(1)[0],)
    path = save_int8(int8, tmp_path / "student.pt2", example)
    loaded = load_int8(path)
    x = _batches(1, batch=5, seed=3)[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), int8(x))
    save_file(model.state_dict(), tmp_path / "student.safetensors")
    fp32_bytes = model_size_bytes(tmp_path / "student.safetensors")
    with zipfile.ZipFile(path) as archive:  # tensors only: the graph JSON dominates a toy model's file
        tensor_bytes = sum(i.file_size for i in archive.infolist() if "/data/weights/weight_" in i.filename)
    assert tensor_bytes < 0.35 * fp32_bytes  # int8 weights + fp32 biases, norms and per-channel scales
    assert model_size_bytes(tmp_path) == sum(p.stat().st_size for p in tmp_path.iterdir())


# conv + batch norm converts through quantize.convert's folding of the conv kinds present only (~5 s, not ~20 s).


@pytest.mark.parametrize("name", ["vit", "conv_no_bn", "conv"])
def test_qat_trains_weights_and_observers_then_converts(name):
    model = STUDENTS[name]()
    data = _batches(4, seed=4)
    prepared = prepare_qat(model, (data[0],))
    fake_quants = _fake_quantizers(prepared)
    assert fake_quants and all(fq.training for fq in fake_quants)
    weights_before = {k: v.detach().clone() for k, v in prepared.named_parameters()}
    scales_before = [fq.scale.clone() for fq in fake_quants]

    target = torch.randn(8, 64, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.SGD(prepared.parameters(), lr=0.05)
    losses = []
    for x in data:
        loss = F.mse_loss(prepared(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(weights_before[k], v) for k, v in prepared.named_parameters())
    assert any(not torch.equal(s, fq.scale) for s, fq in zip(scales_before, fake_quants))  # observers ran

    set_training(prepared, False)
    x = _batches(1, seed=6)[0]
    with torch.no_grad():
        simulated = prepared(x)
        int8 = convert(prepared)
        assert _cosine(int8(x), simulated) >= 0.98


def test_export_for_quant_keeps_the_model_function():
    model = tiny_conv().eval()
    x = _batches(1)[0]
    exported = export_for_quant(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported(x), model(x), atol=1e-5)


def test_quant_config_validates():
    assert QuantConfig().smoke().calibration_batches == 2
    with pytest.raises(ValueError, match="per channel"):
        QuantConfig(per_channel=False)
    with pytest.raises(ValueError, match="unknown quantizer"):
        QuantConfig(quantizer="xnnpack")


def _fake_quant_off(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    for m in prepared.modules():
        if hasattr(m, "fake_quant_enabled"):
            m.disable_fake_quant()
            m.disable_observer()
    return prepared


def test_qat_graph_keeps_batch_norm_eps_and_dropout_p():
    # torchao's rewrites write their pattern's constants (eps 1e-5, dropout p 0.5) over the model's own;
    # with fake quantization off the prepared graph must still be the float model.
    conv = tiny_conv()
    for m in conv.modules():
        if isinstance(m, nn.BatchNorm2d):  # TF-ported timm EfficientNets use eps 1e-3
            m.eps = 1e-3
            m.running_var.uniform_(0.01, 0.05)  # small variances: eps matters
    x = torch.rand(4, 3, SIZE, SIZE)
    prepared = _fake_quant_off(set_training(prepare_qat(conv.eval(), (x[:2],)), False))
    eps = [n.args[7] for n in prepared.graph.nodes if n.target == torch.ops.aten.batch_norm.default]
    assert eps and set(eps) == {1e-3}
    with torch.no_grad():
        assert torch.allclose(prepared(x), conv.eval()(x), atol=1e-5)

    vit = VisionTransformer(img_size=SIZE, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                            drop_rate=0.1, proj_drop_rate=0.0, attn_drop_rate=0.0)
    prepared = prepare_qat(vit, (x[:2],))
    for training in (True, False, True):
        set_training(prepared, training)
        drops = [n.args[1:] for n in prepared.graph.nodes if n.target == torch.ops.aten.dropout.default]
        assert sorted(p for p, _ in drops) == [0.0, 0.0, 0.0, 0.0, 0.1] and {t for _, t in drops} == {training}


def test_weight_bits_narrows_the_weight_grid_in_ptq_and_qat():
    model = tiny_conv(batch_norm=False)
    data = _batches(2, seed=8)
    per_channel = "dequantize_per_channel"
    for bits in (8, 4):
        cfg = QuantConfig(weight_bits=bits)
        prepared = prepare_ptq(model, (data[0],), cfg)
        calibrate(prepared, data)
        int8 = convert(prepared)
        ranges = {(n.args[4], n.args[5]) for n in int8.graph.nodes if per_channel in str(n.target)}
        assert ranges == {(-2 ** (bits - 1), 2 ** (bits - 1) - 1)}
        qat = prepare_qat(model, (data[0],), QuantConfig(is_qat=True, weight_bits=bits))
        weight_fq = [m for m in _fake_quantizers(qat) if m.qscheme == torch.per_channel_symmetric]
        assert weight_fq and all((m.quant_min, m.quant_max) == (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
                                 for m in weight_fq)
    with pytest.raises(ValueError, match="weight_bits"):
        QuantConfig(weight_bits=1)
