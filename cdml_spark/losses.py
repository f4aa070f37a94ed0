"""Triplet loss and in-batch semi-hard negative re-sampling (plain torch).

Distances are squared Euclidean between unit-norm embeddings: d(x, y) = |f(x) − f(y)|².

Loss of a triplet: [d(a, p) − d(a, n) + α]₊, averaged over the batch.

Semi-hard re-sampling (FaceNet, as CDML applies it inside big mini-batches): for triplet i, the
candidate negatives are the batch's negatives n_1..n_B. Candidate j is eligible when its video is
neither a_i's nor p_i's video and it is farther from a_i than p_i is: d(a_i, n_j) > d(a_i, p_i).
Triplet i takes the eligible candidate closest to a_i (smallest d(a_i, n_j); ties → smallest j);
if none is eligible it keeps its own negative n_i.
"""

from __future__ import annotations

import torch


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(len(x), len(y)) matrix of |x_i − y_j|²."""
    return (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2 * x @ y.T).clamp_min(0)


def semi_hard_negatives(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    anchor_ids: torch.Tensor,
    positive_ids: torch.Tensor,
    negative_ids: torch.Tensor,
) -> torch.Tensor:
    """Index into the batch's negatives for each triplet (see module docstring)."""
    d_ap = (anchor - positive).pow(2).sum(1)
    d_an = squared_distances(anchor, negative)
    own_video = (negative_ids[None, :] == anchor_ids[:, None]) | (
        negative_ids[None, :] == positive_ids[:, None]
    )
    eligible = (d_an > d_ap[:, None]) & ~own_video
    masked = torch.where(eligible, d_an, torch.full_like(d_an, float("inf")))
    best = masked.argmin(dim=1)  # first index among equal minima
    has_any = eligible.any(dim=1)
    return torch.where(has_any, best, torch.arange(len(anchor), device=anchor.device))


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean hinge loss, per-triplet correctness d(a,p) < d(a,n))."""
    d_ap = (anchor - positive).pow(2).sum(1)
    d_an = (anchor - negative).pow(2).sum(1)
    return (d_ap - d_an + margin).clamp_min(0).mean(), d_ap < d_an
