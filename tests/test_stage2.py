"""Tests for stage 2 (train.train_stage2, stage2.build_int8_variants): QAT + triplet training, resume, int8
artifacts, and the ablation's evaluation, on a 16-image fake paired folder with a tiny conv student."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from edgevl_lib import quantize
from edgevl_lib.config import Stage2Config
from edgevl_lib.stage2 import (
    Int8Student,
    build_int8_variants,
    calibration_batches,
    evaluate_variants,
    load_int8_student,
    ptq_int8,
    save_int8_student,
)
from edgevl_lib.students import create_student
from edgevl_lib.train import (
    _encode_first_views,
    _FirstViewDataset,
    fingerprint,
    gradient_norm_ratio,
    holdout_rows,
    load_graph_weights,
    train_stage2,
)
from helpers_fake import FAKE_CLASSES, FakeTeacher, make_fake_cache, make_paired_folder

pytestmark = pytest.mark.usefixtures("one_thread")

EMBED = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    dataset = make_paired_folder(root / "data", n=16, size=16)
    teacher = FakeTeacher(embed_dim=EMBED)
    cache = make_fake_cache(root / "cache", dataset, teacher, views=2)
    torch.manual_seed(0)
    student = create_student("conv_tiny_test", EMBED, 16).eval()  # conv + batch norm, like EfficientNet-lite0
    pseudo = {sid: i % len(FAKE_CLASSES) for i, sid in enumerate(dataset.ids)}  # stand-in teacher pseudo-labels
    text = teacher.encode_text(list(FAKE_CLASSES))
    cfg = dataclasses.replace(Stage2Config().smoke(), epochs=2, lr=1e-3)
    return root, dataset, cache, student, pseudo, text, cfg


@pytest.fixture(scope="module")
def vit():
    """A ViT student: preparing its QAT graph takes a second (conv + batch norm: ~5 s of pattern tracing)."""
    torch.manual_seed(0)
    return create_student("vit_tiny_test", EMBED, 16).eval()


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage2_trains_fake_quantized_student_with_triplets(setup, tmp_path):
    _, dataset, cache, student, pseudo, _, cfg = setup
    before = fingerprint(student)
    result = train_stage2(cfg, student, dataset, cache, pseudo, out_dir=tmp_path)
    assert fingerprint(student) == before  # the stage-1 student itself is untouched
    assert [h["epoch"] for h in result.history] == [1, 2]
    for record in result.history:
        assert set(record["parts"]) == {"dual", "triplet"}
        assert record["images"] == 16 and record["steps"] == 2
        assert record["mined"] >= record["anchors"] > 0  # semi-hard triplets were found in the batches
        assert torch.isfinite(torch.tensor(record["loss"]))
    assert result.triplets["mined"] == sum(h["mined"] for h in result.history)
    fake_quant = [m for n, m in result.model.named_children() if n.startswith("activation_post_process")]
    assert fake_quant and all(int(m.observer_enabled) == 1 for m in fake_quant)  # QAT graph, not yet converted
    assert (result.checkpoint_dir / "state.json").is_file() and result.last_checkpoint.is_file()


def test_plain_qat_needs_no_pseudo_labels_and_mines_nothing(setup, vit, tmp_path):
    _, dataset, cache, _, _, _, cfg = setup
    student = vit
    result = train_stage2(dataclasses.replace(cfg, epochs=1, contrastive_weight=0.0), student, dataset, cache, None,
                          out_dir=tmp_path)
    assert set(result.history[0]["parts"]) == {"dual"} and result.history[0]["mined"] == 0


def _interrupted_then_resumed(cfg, student, dataset, cache, pseudo, folder):
    """A stage-2 run stopped (KeyboardInterrupt) after its first epoch's checkpoint, then resumed in `folder`."""
    def stop_after_first_epoch(record, model):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_stage2(cfg, student, dataset, cache, pseudo, out_dir=folder, callbacks=[stop_after_first_epoch])
    return train_stage2(cfg, student, dataset, cache, pseudo, out_dir=folder)


@pytest.mark.parametrize("kind", ["conv", "vit"])
def test_stage2_resume_matches_an_uninterrupted_run(setup, vit, kind, tmp_path):
    # bitwise for both: conv + batch norm (QAT folding) and ViT (dropout nodes, attention)
    _, dataset, cache, conv, pseudo, _, cfg = setup
    student = conv if kind == "conv" else vit
    full = train_stage2(cfg, student, dataset, cache, pseudo, out_dir=tmp_path / "full")

    resumed = _interrupted_then_resumed(cfg, student, dataset, cache, pseudo, tmp_path / "cut")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    a, b = _weights(full.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # weights, BN and fake-quant state (eps too)


def test_stage2_refuses_a_checkpoint_of_another_student(setup, vit, tmp_path):
    _, dataset, cache, _, pseudo, _, cfg = setup
    student = vit
    one_epoch = dataclasses.replace(cfg, epochs=1)
    train_stage2(one_epoch, student, dataset, cache, pseudo, out_dir=tmp_path)
    torch.manual_seed(1)
    other = create_student("vit_tiny_test", EMBED, 16).eval()
    with pytest.raises(ValueError, match="another run"):
        train_stage2(dataclasses.replace(cfg, epochs=2), other, dataset, cache, pseudo, out_dir=tmp_path)


def test_missing_pseudo_labels_and_head_width_are_clear_errors(setup, tmp_path):
    _, dataset, cache, student, pseudo, _, cfg = setup
    with pytest.raises(ValueError, match="no pseudo-label"):
        train_stage2(cfg, student, dataset, cache, {}, out_dir=tmp_path)
    wide = create_student("conv_tiny_test", EMBED * 2, 16)
    with pytest.raises(ValueError, match=str(cache.path)):
        train_stage2(cfg, wide, dataset, cache, pseudo, out_dir=tmp_path)


def test_calibration_batches_hold_every_modality(setup):
    _, dataset, cache, student, _, _, cfg = setup
    batches = calibration_batches(dataset, cache, cfg, student.image_size, batches=2)
    assert len(batches) == 2 and all(b.shape == (2 * cfg.batch_size, 3, 16, 16) for b in batches)


def test_int8_variants_are_built_saved_and_reloaded(setup, vit, tmp_path):
    # A ViT student: converting a QAT conv + batch-norm graph costs ~20 s of pattern tracing (`make report` runs it).
    _, dataset, cache, _, pseudo, text, cfg = setup
    student = vit
    cfg = dataclasses.replace(cfg, epochs=1, lr=1e-5)
    variants = build_int8_variants(student, dataset, cache, pseudo, cfg, out_dir=tmp_path)
    assert set(variants.models) == {"ptq_int8", "qat_int8", "stage2_int8"} and not variants.from_cache
    assert variants.triplets["mined"] > 0
    assert set(variants.history) == {"qat_int8", "stage2_int8", "fp32_ld", "fp32_ld_lc"}
    assert set(variants.controls) == {"fp32_ld", "fp32_ld_lc"}
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = student(x)
        cos = {name: torch.nn.functional.cosine_similarity(model(x), reference).min().item()
               for name, model in variants.models.items()}
    assert cos["ptq_int8"] >= 0.98, cos  # calibrated on two training batches
    assert min(cos.values()) >= 0.9, cos  # one QAT epoch at lr 1e-5 stays close to the float student

    again = build_int8_variants(student, dataset, cache, pseudo, cfg, out_dir=tmp_path)
    assert again.from_cache and again.triplets == variants.triplets
    with torch.no_grad():
        for name in variants.models:
            assert torch.equal(again.models[name](x), variants.models[name](x))
        for name in variants.controls:
            assert torch.equal(again.controls[name](x), variants.controls[name](x))
    assert all(size > 0 for size in again.sizes.values())

    table, outcomes = evaluate_variants({"stage1_fp32": student, **again.models}, dataset, text, ["rgb", "depth"])
    assert table["stage1_fp32"]["rgb"] == outcomes["stage1_fp32"]["rgb"].mean()
    for row in table.values():
        assert row["avg"] == pytest.approx((row["rgb"] + row["depth"]) / 2)
        assert 0.0 <= row["avg"] <= 1.0


def test_int8_student_round_trip_and_sidecar(setup, tmp_path):
    _, _, _, student, _, _, cfg = setup
    prepared = quantize.prepare_ptq(student, student.example_inputs(4), cfg.quant)
    quantize.calibrate(prepared, [torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(i))
                                  for i in range(2)])
    int8 = Int8Student(quantize.convert(prepared), student.config)
    path = save_int8_student(int8, tmp_path / "student_int8.pt2")
    loaded = load_int8_student(path)
    assert (loaded.arch, loaded.embed_dim, loaded.image_size) == (student.arch, EMBED, 16)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), int8(x))
        assert torch.allclose(loaded.encode(x).norm(dim=-1), torch.ones(3), atol=1e-5)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_int8_student(path)


def test_mobileone_style_students_are_folded_before_quantization(setup):
    # FastViT / MobileCLIP MCi blocks sum conv branches; the x86 quantizer only annotates the folded convs.
    _, dataset, cache, _, _, _, cfg = setup
    torch.manual_seed(0)
    student = create_student("fastvit_tiny_test", EMBED, 16).eval()
    batches = calibration_batches(dataset, cache, cfg, 16, batches=2)
    int8 = ptq_int8(student, batches, cfg)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(int8(x), student(x)).min().item()
    assert cos >= 0.98
    assert any(hasattr(m, "reparameterize") for m in student.modules())  # the student itself stays unfolded


def test_the_control_rows_train_the_float_student_without_fake_quantization(setup, tmp_path):
    _, dataset, cache, student, pseudo, _, cfg = setup
    before = fingerprint(student)
    control = train_stage2(dataclasses.replace(cfg, fake_quant=False), student, dataset, cache, pseudo,
                           out_dir=tmp_path / "float")
    qat = train_stage2(cfg, student, dataset, cache, pseudo, out_dir=tmp_path / "qat")
    assert fingerprint(student) == before  # trained a copy
    assert type(control.model) is type(student) and not control.model.training
    assert not any("fake_quant" in n or "activation_post_process" in n for n, _ in control.model.named_modules())
    assert any("activation_post_process" in n or "fake_quant" in n for n, _ in qat.model.named_modules())
    assert fingerprint(control.model) != before  # it did train
    # the same loop: same steps and triplets mined on the same batches at the first step's weights
    assert [h["steps"] for h in control.history] == [h["steps"] for h in qat.history]
    again = train_stage2(dataclasses.replace(cfg, fake_quant=False), student, dataset, cache, pseudo,
                         out_dir=tmp_path / "float")  # finished: resumed, not retrained
    assert fingerprint(again.model) == fingerprint(control.model)


# ----------------------------------------------------------------------------------------------
# Options of the released code: bank mining, random negatives, triplet-only loss; diagnostics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, match", [
    ({"mining": "memory"}, "mining"), ({"negatives": "hardest"}, "negatives"), ({"distill_weight": -1.0}, "distill"),
    ({"distill_weight": 0.0, "contrastive_weight": 0.0}, "both be 0"), ({"holdout_fraction": 1.0}, "holdout"),
    ({"grad_ratio_batches": -1}, "grad_ratio"), ({"balance": "auto"}, "balance"),
    ({"balance": "grad_norm", "grad_ratio_batches": 0}, "balance"),
    ({"balance": "grad_norm", "distill_weight": 0.0}, "balance")])
def test_stage2_config_refuses_impossible_options(override, match):
    with pytest.raises(ValueError, match=match):
        Stage2Config(**override)


def test_gradient_norm_ratio_by_hand_on_a_linear_model():
    # y = W x + b on a batch X (N x 3): L_c = Σ y, L_d = ½ Σ y². By hand: ∂L_c/∂W = 1ᵀX (each row),
    # ∂L_c/∂b = N; ∂L_d/∂W = Yᵀ X, ∂L_d/∂b = Σ_i y_i.
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    y = layer(x)
    l_c, l_d = y.sum(), 0.5 * (y ** 2).sum()
    with torch.no_grad():
        y0 = layer(x)
        g_c = torch.cat([torch.ones(2, 5).mm(x).flatten(), torch.full((2,), 5.0)])
        g_d = torch.cat([y0.t().mm(x).flatten(), y0.sum(0)])
    ratio = gradient_norm_ratio(l_c, l_d, list(layer.parameters()))
    assert ratio == pytest.approx((g_c.norm() / g_d.norm()).item(), rel=1e-5)
    assert all(p.grad is None for p in layer.parameters())  # nothing accumulated, the graph is kept:
    (l_c + l_d).backward()
    assert layer.bias.grad is not None
    unused = torch.nn.Parameter(torch.ones(4))  # a parameter a term does not reach counts as zero
    assert gradient_norm_ratio(layer(x).sum(), 0.5 * (layer(x) ** 2).sum(), [*layer.parameters(), unused]) == \
        pytest.approx(ratio, rel=1e-6)


def test_holdout_rows_are_a_seeded_disjoint_split():
    train, held = holdout_rows(40, 0.25, seed=3)
    assert len(held) == 10 and sorted(train + held) == list(range(40))
    assert holdout_rows(40, 0.25, seed=3) == (train, held) and holdout_rows(40, 0.25, seed=4)[1] != held
    assert held == sorted(np.random.default_rng([3, 7]).permutation(40)[:10].tolist())  # the documented draw
    assert holdout_rows(50, 0.01, seed=0)[1] != [] and len(holdout_rows(3000, 0.2, seed=0)[1]) == 600
    with pytest.raises(ValueError, match="fewer than 2"):
        holdout_rows(4, 0.9, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        holdout_rows(10, 1.0, seed=0)


@pytest.mark.parametrize("contrastive", [1.0, 0.5])
def test_distill_weight_zero_trains_on_the_triplet_loss_only(setup, vit, contrastive, tmp_path):
    _, dataset, cache, _, pseudo, _, cfg = setup
    one = dataclasses.replace(cfg, epochs=1, contrastive_weight=contrastive)
    triplet_only = train_stage2(dataclasses.replace(one, distill_weight=0.0), vit, dataset, cache, pseudo,
                                out_dir=tmp_path / "triplet")
    record = triplet_only.history[0]
    assert record["loss"] == pytest.approx(contrastive * record["parts"]["triplet"], rel=1e-6)
    assert record["parts"]["triplet"] > 0 and record["grad_ratio"] is None  # one term: no ratio
    both = train_stage2(one, vit, dataset, cache, pseudo, out_dir=tmp_path / "both").history[0]
    assert both["loss"] == pytest.approx(both["parts"]["dual"] + contrastive * both["parts"]["triplet"], rel=1e-6)
    assert both["grad_ratio"] > 0  # measured on the first cfg.grad_ratio_batches batches


def test_grad_norm_balance_weighs_the_triplet_term_to_the_distillation_gradient(setup, vit, tmp_path):
    _, dataset, cache, _, pseudo, _, cfg = setup
    one = dataclasses.replace(cfg, epochs=1, contrastive_weight=0.5, distill_weight=2.0, grad_ratio_batches=1,
                              balance="grad_norm")
    balanced = train_stage2(one, vit, dataset, cache, pseudo, out_dir=tmp_path / "balanced").history[0]
    # λ_t = λ w_d / r on the measured first batch, then fixed for the epoch: ||λ_t ∇L_c|| / ||w_d ∇L_d|| = λ
    assert balanced["lambda_eff"] == pytest.approx(0.5 * 2.0 / balanced["grad_ratio"], rel=1e-6)
    assert balanced["loss"] == pytest.approx(2.0 * balanced["parts"]["dual"]
                                             + balanced["lambda_eff"] * balanced["parts"]["triplet"], rel=1e-5)
    plain = train_stage2(dataclasses.replace(one, balance="none"), vit, dataset, cache, pseudo,
                         out_dir=tmp_path / "plain").history[0]
    assert plain["lambda_eff"] == 0.5 and plain["grad_ratio"] == pytest.approx(balanced["grad_ratio"], rel=1e-6)
    assert balanced["lambda_eff"] != pytest.approx(0.5)  # the balance did change the weight


def test_first_view_passes_leave_the_qat_graph_untouched(setup, vit):
    # The bank refresh / held-out passes: no fake quantizer observes; before any training step the quantizers
    # have no ranges and are bypassed, so the features are the float student's.
    _, dataset, cache, _, _, _, cfg = setup
    prepared = quantize.prepare_qat(vit, vit.example_inputs(2), dataclasses.replace(cfg.quant, is_qat=True))
    views = _FirstViewDataset(cache, dataset, 16, cfg.seed)
    rows = list(range(len(views)))
    before = _weights(prepared)
    quantize.set_training(prepared, False)
    features, targets = _encode_first_views(prepared, views, rows, ["rgb", "depth"], cfg, 16, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in _weights(prepared).items())
    assert torch.equal(targets[3], torch.from_numpy(cache.embeddings[3, 0].astype("float32")))
    float_features, _ = _encode_first_views(vit, views, rows, ["rgb", "depth"], cfg, 16, torch.device("cpu"))
    assert torch.allclose(features["rgb"], float_features["rgb"], atol=1e-5)
    quantize.set_training(prepared, True)
    prepared(torch.rand(4, 3, 16, 16))  # one training forward: the quantizers observe and get ranges
    quantize.set_training(prepared, False)
    observed = _weights(prepared)
    quantized, _ = _encode_first_views(prepared, views, rows, ["rgb"], cfg, 16, torch.device("cpu"))
    assert all(torch.equal(observed[k], v) for k, v in _weights(prepared).items())
    assert not torch.allclose(quantized["rgb"], float_features["rgb"], atol=1e-5)  # now fake-quantized


def test_bank_mining_random_negatives_and_holdout_selection(setup, vit, tmp_path):
    _, dataset, cache, _, pseudo, _, cfg = setup
    cfg = dataclasses.replace(cfg, epochs=3, mining="bank", negatives="random", holdout_fraction=0.25)
    full = train_stage2(cfg, vit, dataset, cache, pseudo, out_dir=tmp_path / "full")
    assert [h["epoch"] for h in full.history] == [1, 2, 3]
    for record in full.history:
        assert record["images"] == 8 and record["steps"] == 1  # 12 training images (4 held out), drop_last
        assert record["mined"] >= record["anchors"] > 0
        assert record["grad_ratio"] > 0 and record["bank_seconds"] > 0
        assert set(record["holdout"]) == {"rgb", "depth"}
        assert record["holdout_score"] == pytest.approx(sum(record["holdout"].values()) / 2)
    scores = [h["holdout_score"] for h in full.history]
    assert full.chosen_epoch == 1 + scores.index(max(scores))
    best = full.checkpoint_dir / f"best_{full.chosen_epoch:04d}.safetensors"
    assert [p.name for p in full.checkpoint_dir.glob("best_*")] == [best.name]
    kept = load_graph_weights(copy.deepcopy(full.model), best)
    assert fingerprint(kept) == fingerprint(full.model)  # the returned model is the chosen epoch's

    # deterministic and resumable: the bank is rebuilt from the epoch's weights, the draws are seeded per epoch
    resumed = _interrupted_then_resumed(cfg, vit, dataset, cache, pseudo, tmp_path / "cut")
    strip = ("seconds", "bank_seconds")
    assert [{k: v for k, v in h.items() if k not in strip} for h in resumed.history] == \
        [{k: v for k, v in h.items() if k not in strip} for h in full.history]
    assert resumed.chosen_epoch == full.chosen_epoch and fingerprint(resumed.model) == fingerprint(full.model)
    nearest = train_stage2(dataclasses.replace(cfg, epochs=1, negatives="nearest"), vit, dataset, cache, pseudo,
                           out_dir=tmp_path / "nearest")
    assert nearest.history[0]["mined"] == full.history[0]["mined"]  # min(J, |band|) per anchor either way
