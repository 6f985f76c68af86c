"""Tests for edgevl_lib.mining: semi-hard mining vs pytorch-metric-learning and by hand, the triplet loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.miners import TripletMarginMiner

from edgevl_lib.mining import (
    bank_semi_hard_triplets,
    cross_modal_triplet_loss,
    normalized_distances,
    semi_hard_triplets,
    triplet_loss,
)

MARGIN = 0.3


def _random_batch(n: int = 48, dim: int = 8, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g)


def _as_set(triplets: tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    return set(zip(*(t.tolist() for t in triplets)))


# Four unit vectors in 2-D, two pseudo-classes. By hand, with s = sqrt(0.4) = 0.632 and t = sqrt(0.8) = 0.894:
# d(0,1) = d(2,3) = s, d(0,2) = d(1,3) = t, d(1,2) = 0.283, d(0,3) = sqrt(2) = 1.414.
UNIT_2D = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
UNIT_2D_LABELS = torch.tensor([0, 0, 1, 1])


def test_semi_hard_triplets_by_hand_on_2d_unit_vectors():
    # anchor 0: positive 1 (s); negative 2 has gap t - s = 0.262 < 0.3 (semi-hard), 3 has gap 0.78 (easy).
    # anchor 1: positive 0; negative 2 is closer than the positive (hard, excluded), 3 is semi-hard. Symmetric 2, 3.
    triplets = semi_hard_triplets(UNIT_2D, UNIT_2D_LABELS, margin=MARGIN)
    assert all(t.dtype == torch.long for t in triplets)
    assert [t.tolist() for t in triplets] == [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1]]


def test_triplet_loss_by_hand_on_2d_unit_vectors():
    expected = math.sqrt(0.4) - math.sqrt(0.8) + MARGIN  # 0.0380 for each of the four mined triplets
    triplets = semi_hard_triplets(UNIT_2D, UNIT_2D_LABELS, margin=MARGIN)
    assert triplet_loss(UNIT_2D, triplets, MARGIN).item() == pytest.approx(expected, abs=1e-6)

    # Hand-picked triplets with unequal counts per anchor: the two reductions differ.
    hand = (torch.tensor([0, 0, 3]), torch.tensor([1, 1, 2]), torch.tensor([2, 3, 1]))
    losses = [expected, 0.0, expected]  # (0,1,3): s - sqrt(2) + 0.3 < 0 -> 0
    assert triplet_loss(UNIT_2D, hand, MARGIN, reduction="triplets").item() == pytest.approx(
        sum(losses) / 3, abs=1e-6)
    assert triplet_loss(UNIT_2D, hand, MARGIN, reduction="anchors").item() == pytest.approx(
        ((losses[0] + losses[1]) / 2 + losses[2]) / 2, abs=1e-6)


def test_triplet_loss_normalises_features_and_matches_torch():
    emb, labels = _random_batch()
    triplets = semi_hard_triplets(emb, labels)
    scaled = 5.0 * emb  # the loss sees L2-normalised rows, so the scale must not matter
    e = F.normalize(emb, dim=1)
    a, p, n = triplets
    reference = F.triplet_margin_loss(e[a], e[p], e[n], margin=MARGIN, eps=0.0)
    assert triplet_loss(scaled, triplets, MARGIN).item() == pytest.approx(reference.item(), abs=1e-5)


def test_all_positives_unlimited_negatives_equals_pml_semihard():
    emb, labels = _random_batch()
    pml = TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")(emb, labels)  # LpDistance, normalised
    ours = semi_hard_triplets(emb, labels, margin=MARGIN, max_negatives=None, positives="all")
    assert len(_as_set(pml)) > 100  # the band is populated: the comparison is not vacuous
    assert _as_set(ours) == _as_set(pml)


def test_nearest_positive_and_j_nearest_negatives_are_a_subset_of_pml():
    emb, labels = _random_batch()
    pml = _as_set(TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")(emb, labels))
    ours = semi_hard_triplets(emb, labels, margin=MARGIN, max_negatives=3)
    assert len(ours[0]) > 0 and _as_set(ours) <= pml

    dist = normalized_distances(emb)
    anchors, positives, negatives = ours
    for a in anchors.unique().tolist():
        rows = anchors == a
        same = (labels == labels[a]) & (torch.arange(len(labels)) != a)
        nearest = torch.where(same, dist[a], torch.inf).argmin().item()
        assert positives[rows].unique().tolist() == [nearest]
        d_ap = dist[a, nearest]
        gap = dist[a] - d_ap
        band = (labels != labels[a]) & (gap > 0) & (gap < MARGIN)
        expected = sorted(torch.nonzero(band).flatten().tolist(), key=lambda j: dist[a, j].item())[:3]
        assert negatives[rows].tolist() == expected


def test_max_negatives_caps_and_prefixes():
    emb, labels = _random_batch(seed=1)
    three = semi_hard_triplets(emb, labels, max_negatives=3)
    one = semi_hard_triplets(emb, labels, max_negatives=1)
    assert torch.bincount(three[0]).max().item() <= 3
    assert torch.bincount(one[0]).max().item() == 1
    first_of_three = {}
    for a, p, n in zip(*(t.tolist() for t in three)):
        first_of_three.setdefault(a, (p, n))
    assert {a: (p, n) for a, p, n in zip(*(t.tolist() for t in one))} == first_of_three


@pytest.mark.parametrize("labels", [torch.arange(6), torch.zeros(6, dtype=torch.long)],
                         ids=["no_positive", "no_negative"])
def test_no_triplets_gives_zero_loss_with_gradient(labels):
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    triplets = semi_hard_triplets(emb, labels)
    assert all(t.numel() == 0 and t.dtype == torch.long for t in triplets)
    loss = triplet_loss(emb, triplets, MARGIN)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_only_easy_negatives_give_no_triplet():
    # Two tight clusters far apart: every negative is beyond d(a, p) + m.
    emb = torch.tensor([[1.0, 0.0], [0.99, 0.05], [-1.0, 0.0], [-0.99, 0.05]])
    assert semi_hard_triplets(emb, torch.tensor([0, 0, 1, 1]))[0].numel() == 0


def test_cross_modal_loss_reuses_rgb_triplets_for_every_modality():
    rgb, labels = _random_batch(seed=2)
    depth = rgb + 0.5 * torch.randn(rgb.shape, generator=torch.Generator().manual_seed(3))
    depth.requires_grad_(True)
    total, per_modality, triplets = cross_modal_triplet_loss({"rgb": rgb, "depth": depth}, labels, mine_on="rgb")
    rgb_triplets = semi_hard_triplets(rgb, labels)
    assert all(torch.equal(a, b) for a, b in zip(triplets, rgb_triplets))
    assert per_modality["depth"].item() == pytest.approx(triplet_loss(depth, rgb_triplets, MARGIN).item(), abs=1e-7)
    assert per_modality["rgb"].item() == pytest.approx(triplet_loss(rgb, rgb_triplets, MARGIN).item(), abs=1e-7)
    assert total.item() == pytest.approx(per_modality["rgb"].item() + per_modality["depth"].item(), abs=1e-6)
    assert per_modality["depth"].item() > 0
    total.backward()
    assert depth.grad is not None and depth.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# Mining against a bank (mining="bank") and random negatives (negatives="random")
# ----------------------------------------------------------------------------------------------


def _bank(q: int = 24, n: int = 40, dim: int = 8, classes: int = 4, seed: int = 5):
    """Queries, their labels, a bank whose first q rows are the queries (their own rows), and its labels."""
    queries, q_labels = _random_batch(q, dim, classes, seed)
    others, o_labels = _random_batch(n - q, dim, classes, seed + 1)
    return queries, q_labels, torch.cat([queries, others]), torch.cat([q_labels, o_labels])


def _in_band(query, q_labels, bank, b_labels, triplets, margin=MARGIN) -> bool:
    e, b = F.normalize(query, dim=1), F.normalize(bank, dim=1)
    a, p, n = triplets
    d_ap, d_an = (e[a] - b[p]).norm(dim=1), (e[a] - b[n]).norm(dim=1)
    return bool(((d_an - d_ap > 0) & (d_an - d_ap < margin)).all() & (q_labels[a] == b_labels[p]).all()
                & (q_labels[a] != b_labels[n]).all())


def test_bank_mining_equals_pml_semihard_with_ref_emb():
    # pml's TripletMarginMiner with ref_emb / ref_labels: every (a, p, n) with y_p = y_a != y_n (p, n bank rows)
    # and 0 < d_an - d_ap <= m (LpDistance on normalised rows). With ref_emb pml keeps a query's own row as a
    # positive at distance 0, i.e. our query_index=None. (Our band is open at m: ties at exactly m have measure 0.)
    query, q_labels, bank, b_labels = _bank()
    bank = bank[len(query):]  # a bank without the queries
    b_labels = b_labels[len(query):]
    pml = _as_set(TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")(query, q_labels, bank, b_labels))
    ours = bank_semi_hard_triplets(query, q_labels, bank, b_labels, margin=MARGIN, max_negatives=None,
                                   positives="all")
    assert len(pml) > 100 and _as_set(ours) == pml


def test_bank_mining_excludes_the_anchors_own_row():
    # pml (ref_emb given) pairs a query with its own bank row (d_ap = 0); with m = 1 such triplets exist
    query, q_labels, bank, b_labels = _bank()
    own = torch.arange(len(query))
    pml = _as_set(TripletMarginMiner(margin=1.0, type_of_triplets="semihard")(query, q_labels, bank, b_labels))
    ours = bank_semi_hard_triplets(query, q_labels, bank, b_labels, own, margin=1.0, max_negatives=None,
                                   positives="all")
    without_self = {(a, p, n) for a, p, n in pml if p != a}
    assert len(without_self) < len(pml) and _as_set(ours) == without_self
    # the batch as its own bank is semi_hard_triplets
    batch = semi_hard_triplets(query, q_labels, margin=MARGIN)
    assert [t.tolist() for t in batch] == [t.tolist() for t in bank_semi_hard_triplets(
        query, q_labels, query, q_labels, own, margin=MARGIN)]


def test_bank_mining_nearest_positive_and_j_nearest_negatives_by_brute_force():
    query, q_labels, bank, b_labels = _bank()
    own = torch.arange(len(query))
    a_idx, p_idx, n_idx = bank_semi_hard_triplets(query, q_labels, bank, b_labels, own, margin=MARGIN, max_negatives=3)
    assert len(a_idx) > 0
    dist = torch.cdist(F.normalize(query, dim=1), F.normalize(bank, dim=1))
    for a in range(len(query)):
        same = (b_labels == q_labels[a]) & (torch.arange(len(bank)) != a)
        p = torch.where(same, dist[a], torch.inf).argmin().item()
        gap = dist[a] - dist[a, p]
        band = torch.nonzero((b_labels != q_labels[a]) & (gap > 0) & (gap < MARGIN)).flatten().tolist()
        expected = sorted(band, key=lambda j: dist[a, j].item())[:3]
        rows = a_idx == a
        assert n_idx[rows].tolist() == expected and set(p_idx[rows].tolist()) <= {p}


def test_random_negatives_lie_in_the_band_are_seeded_and_capped():
    query, q_labels, bank, b_labels = _bank()
    own = torch.arange(len(query))

    def draw(seed, j=3):
        return bank_semi_hard_triplets(query, q_labels, bank, b_labels, own, MARGIN, j, negatives="random",
                                       generator=torch.Generator().manual_seed(seed))

    first, again, other = draw(0), draw(0), draw(1)
    assert _in_band(query, q_labels, bank, b_labels, first)
    assert all(torch.equal(x, y) for x, y in zip(first, again))          # same seed, same triplets
    assert _as_set(first) != _as_set(other)                               # another seed, another draw
    nearest = bank_semi_hard_triplets(query, q_labels, bank, b_labels, own, MARGIN, 3)
    # same anchors and positives, min(J, |band|) negatives each, drawn from the full band
    assert torch.equal(torch.bincount(first[0], minlength=len(query)), torch.bincount(nearest[0], minlength=len(query)))
    assert torch.bincount(first[0]).max().item() <= 3
    full = _as_set(bank_semi_hard_triplets(query, q_labels, bank, b_labels, own, MARGIN, None))
    assert _as_set(first) <= full and _as_set(first) != _as_set(nearest)
    # batch mining draws the same way
    batch = semi_hard_triplets(query, q_labels, MARGIN, 3, negatives="random",
                               generator=torch.Generator().manual_seed(0))
    assert _in_band(query, q_labels, query, q_labels, batch) and torch.bincount(batch[0]).max().item() <= 3


def test_random_negatives_are_uniform_over_the_band():
    # one anchor with a wide band: each band member is drawn with probability J / |band| (without replacement)
    query, q_labels, bank, b_labels = _bank(n=400, seed=7)
    own = torch.arange(len(query))
    full = bank_semi_hard_triplets(query, q_labels, bank, b_labels, own, MARGIN, None)
    anchor = torch.bincount(full[0]).argmax().item()
    band = full[2][full[0] == anchor].tolist()
    assert len(band) >= 20
    g, counts, draws = torch.Generator().manual_seed(0), torch.zeros(len(bank)), 600
    for _ in range(draws):
        a, _, n = bank_semi_hard_triplets(query[anchor:anchor + 1], q_labels[anchor:anchor + 1], bank, b_labels,
                                          own[anchor:anchor + 1], MARGIN, 3, negatives="random", generator=g)
        assert len(set(n.tolist())) == 3  # without replacement
        counts[n] += 1
    assert set(torch.nonzero(counts).flatten().tolist()) == set(band)
    expected = draws * 3 / len(band)
    assert (counts[band] - expected).abs().max().item() < 5 * math.sqrt(expected)


def test_bank_triplet_loss_matches_torch_and_has_no_gradient_into_the_bank():
    query, q_labels, bank, b_labels = _bank()
    query = (3.0 * query).requires_grad_(True)
    bank = bank.clone().requires_grad_(True)
    triplets = bank_semi_hard_triplets(query, q_labels, bank, b_labels, torch.arange(len(query)), MARGIN)
    loss = triplet_loss(query, triplets, MARGIN, ref_emb=bank)
    e, b = F.normalize(query.detach(), dim=1), F.normalize(bank.detach(), dim=1)
    a, p, n = triplets
    reference = F.triplet_margin_loss(e[a], b[p], b[n], margin=MARGIN, eps=0.0)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6) and loss.item() > 0
    loss.backward()
    assert bank.grad is None and query.grad[a].abs().sum() > 0


def test_cross_modal_loss_with_banks_mines_on_rgb_and_uses_each_modalitys_bank():
    query, labels, rgb_bank, b_labels = _bank()
    depth_bank = rgb_bank + 0.3 * torch.randn(rgb_bank.shape, generator=torch.Generator().manual_seed(9))
    depth = depth_bank[:len(query)].clone().requires_grad_(True)
    own = torch.arange(len(query))
    banks = {"rgb": F.normalize(rgb_bank, dim=1), "depth": F.normalize(depth_bank, dim=1)}
    total, per_modality, triplets = cross_modal_triplet_loss(
        {"rgb": query, "depth": depth}, labels, "rgb", MARGIN, 3, banks=banks, bank_labels=b_labels, query_index=own)
    expected = bank_semi_hard_triplets(query, labels, rgb_bank, b_labels, own, MARGIN, 3)
    assert all(torch.equal(x, y) for x, y in zip(triplets, expected))
    assert per_modality["depth"].item() == pytest.approx(
        triplet_loss(depth, expected, MARGIN, ref_emb=depth_bank).item(), abs=1e-6)
    assert total.item() == pytest.approx(sum(v.item() for v in per_modality.values()), abs=1e-6)
    with pytest.raises(ValueError, match="bank_labels"):
        cross_modal_triplet_loss({"rgb": query}, labels, banks=banks)
