"""Distillation losses against hand computations and independent torch / numpy peers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevl_lib.losses import (LOSS_TERMS, DistillLossConfig, affinity_mimicking_loss, combined_distillation_loss,
                               cosine_distillation_loss, dual_distillation_loss, embedding_distance,
                               image_contrastive_loss, vl_alignment_loss)


def _emb(seed: int, rows: int = 4, dim: int = 8) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_l1_is_the_mean_over_batch_and_dims_by_hand() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s = torch.tensor([[0.0, 2.0], [5.0, 1.0]])
    assert embedding_distance(t, s, "l1").item() == pytest.approx((1 + 0 + 2 + 3) / 4)
    assert embedding_distance(t, s, "mse").item() == pytest.approx((1 + 0 + 4 + 9) / 4)


def test_dual_distillation_by_hand() -> None:
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    rgb = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    depth = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    # un-normalised: d(t, rgb) = (0 + 1 + 0 + 1) / 4 = 0.5; d(t, depth) = (1 + 0 + 1 + 0) / 4 = 0.5
    assert dual_distillation_loss(t, rgb, {"depth": depth}, normalize=False).item() == pytest.approx(1.0)
    # normalised: n(t) = [[1, 0], [0, 1]], n(rgb) = [[r, r], [0, 1]] with r = 1/sqrt(2),
    # n(depth) = [[0, 0], [1, 2] / sqrt(5)] (a zero row stays zero)
    r = 1 / math.sqrt(2)
    d_rgb = ((1 - r) + r + 0 + 0) / 4
    d_depth = (1 + 0 + 1 / math.sqrt(5) + abs(1 - 2 / math.sqrt(5))) / 4
    assert dual_distillation_loss(t, rgb, [depth]).item() == pytest.approx(d_rgb + d_depth, abs=1e-6)


def test_dual_distillation_mean_reproduces_released_code() -> None:
    t, rgb, depth, thermal = _emb(0), _emb(1), _emb(2), _emb(3)
    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    # ramdrop/edgevl trainer.py: nn.L1Loss(reduction="none")(cat([S(x'), S(x)]), cat([T, T])).mean()
    released = torch.nn.L1Loss(reduction="none")(torch.cat([n(depth), n(thermal), n(rgb)]), n(t).repeat(3, 1)).mean()
    ours = dual_distillation_loss(t, rgb, {"depth": depth, "thermal": thermal}, modality_reduction="mean")
    torch.testing.assert_close(ours, released)
    paper = dual_distillation_loss(t, rgb, {"depth": depth, "thermal": thermal})
    torch.testing.assert_close(paper, 3 * released)


def test_cosine_matches_torch_cosine_similarity() -> None:
    t, s = _emb(4), _emb(5)
    expected = (1 - F.cosine_similarity(t, s, dim=-1)).mean()
    torch.testing.assert_close(cosine_distillation_loss(t, s), expected)
    assert cosine_distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[-3.0, 0.0]])).item() == 2.0


def test_image_contrastive_matches_cross_entropy_and_numpy() -> None:
    t, s, tau = _emb(6), _emb(7), 0.1
    logits = F.normalize(s, dim=-1) @ F.normalize(t, dim=-1).T / tau
    torch.testing.assert_close(image_contrastive_loss(t, s, tau), F.cross_entropy(logits, torch.arange(4)))
    z = _unit(s.numpy()) @ _unit(t.numpy()).T / tau
    assert image_contrastive_loss(t, s, tau).item() == pytest.approx(-np.diag(_np_log_softmax(z)).mean())
    # by hand: orthonormal pairs at tau = 1 -> -log(e / (e + B - 1))
    eye = torch.eye(3)
    assert image_contrastive_loss(eye, eye, 1.0).item() == pytest.approx(-math.log(math.e / (math.e + 2)))


def test_vl_alignment_by_hand_and_against_kl_div() -> None:
    # by hand: p = softmax([1, 0]), q = softmax([0, 1]) -> KL = (e - 1) / (e + 1)
    val = vl_alignment_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 5.0]]), torch.eye(2), temperature=1.0)
    assert val.item() == pytest.approx((math.e - 1) / (math.e + 1))
    t, s, text, tau = _emb(8), _emb(9), _emb(10, rows=5), 0.05
    u = F.normalize(text, dim=-1)
    log_p = F.log_softmax(F.normalize(t, dim=-1) @ u.T / tau, dim=-1)
    log_q = F.log_softmax(F.normalize(s, dim=-1) @ u.T / tau, dim=-1)
    expected = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    torch.testing.assert_close(vl_alignment_loss(t, s, text, tau), expected)
    assert vl_alignment_loss(t, t, text, tau).item() == pytest.approx(0.0, abs=1e-12)


def test_affinity_mimicking_against_kl_div_and_tinyclip_soft_cross_entropy() -> None:
    t, s, text, tau = _emb(11), _emb(12), _emb(13, rows=3), 0.1
    v_t, v_s, u = (F.normalize(x, dim=-1) for x in (t, s, text))
    it_t, it_s = v_t @ u.T / tau, v_s @ u.T / tau

    def kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1),
                        reduction="batchmean", log_target=True)

    expected = (kl(it_t, it_s) + kl(it_t.T, it_s.T)) / 2
    torch.testing.assert_close(affinity_mimicking_loss(t, s, text, tau), expected)
    image_text_only = affinity_mimicking_loss(t, s, text, tau, ["image_text"])
    torch.testing.assert_close(image_text_only, vl_alignment_loss(t, s, text, tau))

    # TinyCLIP writes it as soft cross-entropy: same gradient, value shifted by the teacher entropy.
    s_a = s.clone().requires_grad_(True)
    s_b = s.clone().requires_grad_(True)
    affinity_mimicking_loss(t, s_a, text, tau).backward()
    logits_s = F.normalize(s_b, dim=-1) @ u.T / tau
    soft_ce = (F.cross_entropy(logits_s, F.softmax(it_t, -1)) + F.cross_entropy(logits_s.T, F.softmax(it_t.T, -1))) / 2
    soft_ce.backward()
    torch.testing.assert_close(s_a.grad, s_b.grad)


def test_image_image_affinity_excludes_self_pairs_numpy() -> None:
    t, s, tau = _emb(14), _emb(15), 0.2
    off = ~np.eye(4, dtype=bool)
    a_t = (_unit(t.numpy()) @ _unit(t.numpy()).T / tau)[off].reshape(4, 3)
    a_s = (_unit(s.numpy()) @ _unit(s.numpy()).T / tau)[off].reshape(4, 3)
    log_p, log_q = _np_log_softmax(a_t), _np_log_softmax(a_s)
    expected = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean()
    value = affinity_mimicking_loss(t, s, temperature=tau, affinities=["image_image"])
    assert torch.isfinite(value) and value.item() == pytest.approx(expected)


def test_combined_sums_weighted_terms_over_modalities() -> None:
    t, rgb, depth, text = _emb(16), _emb(17), _emb(18), _emb(19, rows=3)
    cfg = DistillLossConfig(weights={"dual": 1.0, "cosine": 0.5, "image_contrastive": 0.25, "vl_align": 2.0,
                                     "affinity": 0.1}, affinities=("image_text", "image_image"))
    total, parts = combined_distillation_loss(cfg.weights, t, rgb, {"depth": depth}, text, config=cfg)
    assert set(parts) == set(LOSS_TERMS)
    torch.testing.assert_close(parts["dual"], dual_distillation_loss(t, rgb, [depth]))
    torch.testing.assert_close(parts["cosine"], cosine_distillation_loss(t, rgb) + cosine_distillation_loss(t, depth))
    torch.testing.assert_close(parts["image_contrastive"],
                               image_contrastive_loss(t, rgb, 0.07) + image_contrastive_loss(t, depth, 0.07))
    torch.testing.assert_close(parts["vl_align"], vl_alignment_loss(t, rgb, text) + vl_alignment_loss(t, depth, text))
    affinity = sum(affinity_mimicking_loss(t, x, text, 0.01, ("image_text", "image_image")) for x in (rgb, depth))
    torch.testing.assert_close(parts["affinity"], affinity)
    torch.testing.assert_close(total, sum(cfg.weights[k] * v for k, v in parts.items()))

    total_dual, parts_dual = combined_distillation_loss({"dual": 1.0, "cosine": 0.0}, t, rgb, [depth])
    assert set(parts_dual) == {"dual"} and total_dual.item() == pytest.approx(parts["dual"].item())


def test_combined_refuses_bad_configs() -> None:
    t = _emb(20)
    with pytest.raises(ValueError, match="unknown loss terms"):
        combined_distillation_loss({"dual": 1.0, "l2": 1.0}, t, t)
    with pytest.raises(ValueError, match="vl_align needs text_emb"):
        combined_distillation_loss({"vl_align": 1.0}, t, t)
    with pytest.raises(ValueError, match="non-zero weight"):
        combined_distillation_loss({"dual": 0.0}, t, t)
    with pytest.raises(ValueError, match="unknown distance"):
        dual_distillation_loss(t, t, [], distance="huber")


@pytest.mark.parametrize("term", LOSS_TERMS)
def test_gradients_flow_to_every_modality_not_the_teacher(term: str) -> None:
    t, text = _emb(21), _emb(22, rows=3)
    rgb, depth = _emb(23).requires_grad_(True), _emb(24).requires_grad_(True)
    total, _ = combined_distillation_loss({term: 1.0}, t, rgb, {"depth": depth}, text)
    total.backward()
    for x in (rgb, depth):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert t.grad is None
