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
`trainer.py::train_ctrs_one_epoch`): nearest positive ("easy"), negatives sorted by ascending distance
("hard") filtered to the semi-hard band and cut to the first J, loss summed over all triplets of the batch
and divided by their number. Differences: the authors mine over the whole cached training set on
un-normalised RGB features, we mine within the batch on normalised ones.

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
def semi_hard_triplets(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                       max_negatives: int | None = 3, positives: Literal["nearest", "all"] = "nearest"
                       ) -> Triplets:
    """Mine semi-hard triplets `(a, p, n)` on L2-normalised features with (pseudo-)labels.

    A triplet is semi-hard when `0 < d(a, n) - d(a, p) < margin`: the negative is farther than the positive
    but inside the margin, so the triplet loss is positive but the negative is not the hardest one
    (hardest negatives collapse training early on, Schroff et al. 2015, FaceNet). Negatives are taken in
    order of increasing `d(a, n)` (deterministic: the J nearest; ties by index), not sampled at random.

    Args:
        emb: features (N, D) of one modality; rows are L2-normalised here, no gradient flows.
        labels: (N,) integer pseudo-labels.
        margin: `m` in the semi-hard band and the loss.
        max_negatives: `J`, negatives kept per (anchor, positive) pair; None keeps all of them.
        positives: "nearest" (EdgeVL: one positive per anchor, its nearest same-label sample) or "all"
            (every same-label sample, as pytorch-metric-learning's TripletMarginMiner; O(N^3) memory).

    Returns:
        `(anchors, positives, negatives)`: LongTensors of equal length T, one entry per triplet, sorted by
        anchor then by `d(a, n)`. Anchors without a positive or without a semi-hard negative give none.
    """
    if positives not in ("nearest", "all"):
        raise ValueError(f"positives must be 'nearest' or 'all', got {positives!r}")
    dist = normalized_distances(emb.detach())
    n = dist.shape[0]
    same = labels.view(-1, 1) == labels.view(1, -1)
    pos_mask = same & ~torch.eye(n, dtype=torch.bool, device=dist.device)

    if positives == "nearest":
        d_pos, nearest = dist.masked_fill(~pos_mask, float("inf")).min(dim=1)
        pair_a = torch.nonzero(torch.isfinite(d_pos)).flatten()
        pair_p = nearest[pair_a]
    else:
        pair_a, pair_p = torch.nonzero(pos_mask, as_tuple=True)

    d_an = dist[pair_a]                                        # (P, N): distances from each pair's anchor
    gap = d_an - dist[pair_a, pair_p].unsqueeze(1)             # d(a, n) - d(a, p)
    band = ~same[pair_a] & (gap > 0) & (gap < margin)
    d_sorted, order = d_an.masked_fill(~band, float("inf")).sort(dim=1, stable=True)
    if max_negatives is not None:
        d_sorted, order = d_sorted[:, :max_negatives], order[:, :max_negatives]
    rows, cols = torch.nonzero(torch.isfinite(d_sorted), as_tuple=True)
    triplets = pair_a[rows], pair_p[rows], order[rows, cols]
    log.debug("mined %d semi-hard triplets from %d samples", len(rows), n)
    return triplets


def triplet_loss(emb: torch.Tensor, triplets: Triplets, margin: float = 0.3,
                 reduction: Literal["triplets", "anchors"] = "triplets") -> torch.Tensor:
    """Triplet margin loss on L2-normalised features for given index triplets.

        l(a, p, n) = max(0, ||e_a - e_p|| - ||e_a - e_n|| + m)
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
    d_ap = (e[anchors] - e[positives]).norm(dim=1)
    d_an = (e[anchors] - e[negatives]).norm(dim=1)
    losses = F.relu(d_ap - d_an + margin)
    if reduction == "triplets":
        return losses.mean()
    per_anchor_sum = losses.new_zeros(emb.shape[0]).index_add(0, anchors, losses)
    per_anchor_count = torch.bincount(anchors, minlength=emb.shape[0])
    has = per_anchor_count > 0
    return (per_anchor_sum[has] / per_anchor_count[has]).mean()


def cross_modal_triplet_loss(features: Mapping[str, torch.Tensor], labels: torch.Tensor, mine_on: str = "rgb",
                             margin: float = 0.3, max_negatives: int | None = 3
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Triplets]:
    """EdgeVL's stage-2 contrastive loss: mine on one modality, apply the same triplets to every modality.

        L = sum_{modality M} L_c(f^M, triplets mined on f^{mine_on})

    Args:
        features: modality name -> student features (N, D); row i of every modality is the same sample.
        labels: (N,) teacher pseudo-labels.
        mine_on: the modality whose (detached) features define the triplets.
        margin: `m`.
        max_negatives: `J`.

    Returns:
        The summed loss, the per-modality losses (for logging) and the mined `(anchors, positives, negatives)`.
    """
    triplets = semi_hard_triplets(features[mine_on], labels, margin=margin, max_negatives=max_negatives)
    per_modality = {name: triplet_loss(f, triplets, margin) for name, f in features.items()}
    return torch.stack(list(per_modality.values())).sum(), per_modality, triplets
