"""Semi-hard triplet mining and the triplet loss of EdgeVL stage 2 (quantization-aware contrastive learning).

The student's features are L2-normalised, `e_i = f_i / ||f_i||`, and compared with the Euclidean distance
`d(i, j) = ||e_i - e_j||_2 = sqrt(2 - 2 cos(f_i, f_j))` (in [0, 2], monotone in the cosine similarity).
Labels are the teacher's pseudo-labels (zero-shot CLIP classes), not ground truth.

For each anchor `a` (margin `m = 0.3`, at most `J = 3` negatives):

    positive   p    = argmin_{j != a, y_j = y_a} d(a, j)                      (the nearest same-label sample)
    negatives  n_k  in {n : y_n != y_a,  d(a, p) < d(a, n) < d(a, p) + m}     (semi-hard), the J nearest
    loss       L_c  = 1/T sum_{(a, p, n)} max(0, d(a, p) - d(a, n) + m)       (T triplets in the batch)

The triplets are mined once, on one modality's features (RGB), and the same index triplets are applied to
the features of every modality (RGB, depth, thermal) of the same samples, so the modalities share one
neighbourhood structure; the stage-2 loss is the sum over modalities (`cross_modal_triplet_loss`).

This follows the authors' code (github.com/ramdrop/edgevl, `dataset/base_ctrs.py` and
`trainer.py::train_ctrs_one_epoch`): nearest positive ("easy"), negatives filtered to the semi-hard band
and cut to the first J, loss summed over all triplets of the batch and divided by their number. By default
we mine within the batch on normalised features and take the J nearest negatives; the released setting
(configs `*_ctrs.yaml`: POSITIVE easy, NEGATIVE random, TOTAL semihard, NEG_NUM 3) mines over the whole
training set, from an embedding bank refreshed every epoch (`build_embedding`, un-normalised RGB
features), and draws the J negatives at random from the band. Both are options here:

    bank_semi_hard_triplets(query, y_q, bank, y_b, query_index, negatives="random", generator=g)

mines the batch's anchors against bank rows `b_j` (L2-normalised, detached), with
`d(a, j) = ||e_a - b_j||`, the anchor's own bank row excluded; `triplet_loss(..., ref_emb=bank)` then gives

    L_c = 1/T sum_{(a, p, n)} max(0, ||e_a - b_p|| - ||e_a - b_n|| + m)       (gradient through e_a only)

One difference remains: the released code re-encodes the mined positives and negatives with gradient (their
images are part of the batch), the bank rows here are constants, as in pytorch-metric-learning's
CrossBatchMemory.

>>> emb = torch.tensor([[1., 0.], [0.9, 0.1], [0.8, 0.3], [-1., 0.]])
>>> a, p, n = semi_hard_triplets(emb, torch.tensor([0, 0, 1, 1]))
>>> a.tolist(), p.tolist(), n.tolist()
([0, 1, 3, 3], [1, 0, 2, 2], [2, 2, 1, 0])

(anchor 2's positive, sample 3, is farther than both negatives: no semi-hard negative, no triplet.)
"""
from __future__ import annotations

import logging
from typing import Literal, Mapping

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def normalized_distances(emb: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances of the L2-normalised rows: `D_ij = ||e_i - e_j||_2`, shape (N, N)."""
    e = F.normalize(emb, p=2, dim=1)
    return torch.cdist(e, e, p=2)


@torch.no_grad()
def bank_semi_hard_triplets(query_emb: torch.Tensor, query_labels: torch.Tensor, bank_emb: torch.Tensor,
                            bank_labels: torch.Tensor, query_index: torch.Tensor | None = None, margin: float = 0.3,
                            max_negatives: int | None = 3, positives: Literal["nearest", "all"] = "nearest",
                            negatives: Literal["nearest", "random"] = "nearest",
                            generator: torch.Generator | None = None) -> Triplets:
    """Mine semi-hard triplets of query anchors against a bank: `(a, p, n)` with `a` a query row, `p`, `n` bank rows.

    With `e_a` the normalised query rows, `b_j` the normalised bank rows and `d(a, j) = ||e_a - b_j||_2`:

        positives  p   = argmin_{j != self(a), y_j = y_a} d(a, j)           ("nearest"; "all": every such j)
        band       N_a = {n : y_n != y_a, n != self(a), d(a, p) < d(a, n) < d(a, p) + m}
        negatives  the J nearest of N_a ("nearest") or J of N_a drawn uniformly without replacement
                   ("random": as the released code, a random order of all negatives filtered to the band)

    `self(a) = query_index[a]` is the anchor's own row in the bank (excluded; None: the bank holds no query).
    `semi_hard_triplets(emb, y)` is this function with the batch as its own bank.

    Args:
        query_emb: (Q, D) anchor features; rows are L2-normalised here, no gradient flows.
        query_labels: (Q,) integer pseudo-labels.
        bank_emb: (N, D) bank features (normalised here).
        bank_labels: (N,) integer pseudo-labels of the bank rows.
        query_index: (Q,) bank row of each query, or None.
        margin: `m` in the semi-hard band and the loss.
        max_negatives: `J`, negatives kept per (anchor, positive) pair; None keeps all of them.
        positives: "nearest" (EdgeVL: one positive per anchor) or "all" (every same-label row, as
            pytorch-metric-learning's TripletMarginMiner; memory O(pairs x N)).
        negatives: "nearest" (deterministic, ties by index) or "random" (drawn with `generator`: the same
            seed gives the same triplets).
        generator: a CPU torch.Generator for "random" (None: the global RNG).

    Returns:
        `(anchors, positives, negatives)`: LongTensors of equal length T, sorted by anchor, then by `d(a, n)`
        ("nearest") or by the random draw. Anchors without a positive or a semi-hard negative give none.
    """
    if positives not in ("nearest", "all"):
        raise ValueError(f"positives must be 'nearest' or 'all', got {positives!r}")
    if negatives not in ("nearest", "random"):
        raise ValueError(f"negatives must be 'nearest' or 'random', got {negatives!r}")
    e, b = F.normalize(query_emb.detach(), p=2, dim=1), F.normalize(bank_emb.detach(), p=2, dim=1)
    dist = torch.cdist(e, b, p=2)
    q = dist.shape[0]
    same = query_labels.view(-1, 1) == bank_labels.view(1, -1)
    other = torch.ones_like(same)  # j != self(a)
    if query_index is not None:
        other[torch.arange(q, device=dist.device), query_index.to(dist.device)] = False
    pos_mask = same & other

    if positives == "nearest":
        d_pos, nearest = dist.masked_fill(~pos_mask, float("inf")).min(dim=1)
        pair_a = torch.nonzero(torch.isfinite(d_pos)).flatten()
        pair_p = nearest[pair_a]
    else:
        pair_a, pair_p = torch.nonzero(pos_mask, as_tuple=True)

    d_an = dist[pair_a]                                        # (P, N): distances from each pair's anchor
    gap = d_an - dist[pair_a, pair_p].unsqueeze(1)             # d(a, n) - d(a, p)
    band = ~same[pair_a] & other[pair_a] & (gap > 0) & (gap < margin)
    if negatives == "nearest":
        key = d_an
    else:
        key = torch.rand(d_an.shape, generator=generator).to(d_an.device)
    key, order = key.masked_fill(~band, float("inf")).sort(dim=1, stable=True)
    if max_negatives is not None:
        key, order = key[:, :max_negatives], order[:, :max_negatives]
    rows, cols = torch.nonzero(torch.isfinite(key), as_tuple=True)
    log.debug("mined %d semi-hard triplets for %d anchors against %d bank rows", len(rows), q, dist.shape[1])
    return pair_a[rows], pair_p[rows], order[rows, cols]


@torch.no_grad()
def semi_hard_triplets(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                       max_negatives: int | None = 3, positives: Literal["nearest", "all"] = "nearest",
                       negatives: Literal["nearest", "random"] = "nearest", generator: torch.Generator | None = None
                       ) -> Triplets:
    """Mine semi-hard triplets `(a, p, n)` within a batch of L2-normalised features with (pseudo-)labels.

    A triplet is semi-hard when `0 < d(a, n) - d(a, p) < margin`: the negative is farther than the positive
    but inside the margin, so the triplet loss is positive but the negative is not the hardest one
    (hardest negatives collapse training early on, Schroff et al. 2015, FaceNet). By default negatives are
    taken in order of increasing `d(a, n)` (deterministic: the J nearest; ties by index); `negatives="random"`
    draws J of the band at random, as the released code. This is `bank_semi_hard_triplets` with the batch as
    its own bank (`query_index = arange(N)`).

    Args:
        emb: features (N, D) of one modality; rows are L2-normalised here, no gradient flows.
        labels: (N,) integer pseudo-labels.
        margin: `m` in the semi-hard band and the loss.
        max_negatives: `J`, negatives kept per (anchor, positive) pair; None keeps all of them.
        positives: "nearest" (EdgeVL: one positive per anchor, its nearest same-label sample) or "all"
            (every same-label sample, as pytorch-metric-learning's TripletMarginMiner; O(N^3) memory).
        negatives: "nearest" or "random" (with `generator`), see `bank_semi_hard_triplets`.
        generator: the CPU generator of the random draw.

    Returns:
        `(anchors, positives, negatives)`: LongTensors of equal length T, one entry per triplet, sorted by
        anchor then by `d(a, n)`. Anchors without a positive or without a semi-hard negative give none.
    """
    index = torch.arange(emb.shape[0], device=emb.device)
    return bank_semi_hard_triplets(emb, labels, emb, labels, index, margin, max_negatives, positives, negatives,
                                   generator)


def triplet_loss(emb: torch.Tensor, triplets: Triplets, margin: float = 0.3,
                 reduction: Literal["triplets", "anchors"] = "triplets", ref_emb: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Triplet margin loss on L2-normalised features for given index triplets.

        l(a, p, n) = max(0, ||e_a - r_p|| - ||e_a - r_n|| + m),   r = e (batch) or the bank rows `ref_emb`
        "triplets": L_c = 1/T sum_t l(t)                                (default; the authors' code)
        "anchors":  L_c = 1/|A| sum_{a in A} 1/J_a sum_{(a, p, n)} l    (mean over each anchor's negatives,
                                                                          then over anchors)

    The two agree when every anchor has the same number of negatives J_a; "triplets" weights an anchor by
    its number of semi-hard negatives, which is what EdgeVL's `trainer.py` does (sum / number of negatives).
    With no triplets the loss is an exact zero that still has a graph (`backward` gives zero gradients).

    Args:
        emb: features (N, D) of one modality (rows are L2-normalised here); gradients flow into them.
        triplets: `(anchors, positives, negatives)` index tensors, e.g. from `semi_hard_triplets`.
        margin: `m`.
        reduction: "triplets" or "anchors", see above.
        ref_emb: None (positives and negatives are rows of `emb`) or the (M, D) bank the positive and negative
            indices point into (`bank_semi_hard_triplets`); normalised here and detached: no gradient.

    Returns:
        The scalar loss.

    Example: unit vectors a = (1, 0), p = (0.8, 0.6), n = (0, 1) give d(a, p) = sqrt(0.4) = 0.632,
    d(a, n) = sqrt(2) = 1.414, so l = max(0, 0.632 - 1.414 + 0.3) = 0; with m = 1, l = 0.218.
    """
    if reduction not in ("triplets", "anchors"):
        raise ValueError(f"reduction must be 'triplets' or 'anchors', got {reduction!r}")
    anchors, positives, negatives = triplets
    if anchors.numel() == 0:
        return emb.sum() * 0.0
    e = F.normalize(emb, p=2, dim=1)
    r = e if ref_emb is None else F.normalize(ref_emb.detach(), p=2, dim=1)
    d_ap = (e[anchors] - r[positives]).norm(dim=1)
    d_an = (e[anchors] - r[negatives]).norm(dim=1)
    losses = F.relu(d_ap - d_an + margin)
    if reduction == "triplets":
        return losses.mean()
    per_anchor_sum = losses.new_zeros(emb.shape[0]).index_add(0, anchors, losses)
    per_anchor_count = torch.bincount(anchors, minlength=emb.shape[0])
    has = per_anchor_count > 0
    return (per_anchor_sum[has] / per_anchor_count[has]).mean()


def cross_modal_triplet_loss(features: Mapping[str, torch.Tensor], labels: torch.Tensor, mine_on: str = "rgb",
                             margin: float = 0.3, max_negatives: int | None = 3, *,
                             banks: Mapping[str, torch.Tensor] | None = None, bank_labels: torch.Tensor | None = None,
                             query_index: torch.Tensor | None = None,
                             negatives: Literal["nearest", "random"] = "nearest",
                             generator: torch.Generator | None = None
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Triplets]:
    """EdgeVL's stage-2 contrastive loss: mine on one modality, apply the same triplets to every modality.

        batch:  L = sum_M L_c(f^M; triplets mined on f^{mine_on} within the batch)
        bank:   L = sum_M 1/T sum_{(a, p, n)} max(0, ||e^M_a - b^M_p|| - ||e^M_a - b^M_n|| + m),
                triplets mined with `bank_semi_hard_triplets(f^{mine_on}, y, B^{mine_on}, y_B, query_index)`

    In the bank case there is one bank per modality, `B^M` (rows: the training images' modality-M features),
    so the positives and negatives of every modality are the same images, as in the released code (which
    mines on RGB and re-encodes the mined images in RGB and depth).

    Args:
        features: modality name -> student features (N, D); row i of every modality is the same sample.
        labels: (N,) teacher pseudo-labels.
        mine_on: the modality whose (detached) features define the triplets.
        margin: `m`.
        max_negatives: `J`.
        banks: None (mine within the batch) or modality -> (M, D) bank features (detached; every modality of
            `features`).
        bank_labels: (M,) pseudo-labels of the bank rows.
        query_index: (N,) each sample's own bank row (excluded from its positives), or None.
        negatives: "nearest" or "random" (drawn with `generator`).
        generator: the CPU generator of the random draw.

    Returns:
        The summed loss, the per-modality losses (for logging) and the mined `(anchors, positives, negatives)`.
    """
    if banks is None:
        triplets = semi_hard_triplets(features[mine_on], labels, margin=margin, max_negatives=max_negatives,
                                      negatives=negatives, generator=generator)
        per_modality = {name: triplet_loss(f, triplets, margin) for name, f in features.items()}
    else:
        if bank_labels is None:
            raise ValueError("bank mining needs bank_labels, the pseudo-labels of the bank rows")
        triplets = bank_semi_hard_triplets(features[mine_on], labels, banks[mine_on], bank_labels, query_index,
                                           margin, max_negatives, negatives=negatives, generator=generator)
        per_modality = {name: triplet_loss(f, triplets, margin, ref_emb=banks[name]) for name, f in features.items()}
    return torch.stack(list(per_modality.values())).sum(), per_modality, triplets
