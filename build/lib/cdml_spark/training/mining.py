"""Negative mining, the triplet loss and its reduction (plain torch), as separate named pieces.

Each triplet's own negative was sampled by make_triplets (`cdml_spark/triplets.py`: `triplets.*`
negative sampling, hard negatives); in-batch mining here replaces it at training time
(`training.miner`, `pool_positives`, `reduction`).

Distances are squared Euclidean between unit-norm embeddings: d(x, y) = |f(x) − f(y)|².
Loss of a triplet: [d(a, p) − d(a, n) + α]₊.

Miners re-pick each triplet's negative from a candidate pool: the negatives (and, with
`training.pool_positives`, the positives) of the whole step, gathered from every rank. Candidate j
is *allowed* for triplet i unless its video is a_i's or p_i's video or a co-watch neighbour of a_i
(any `cowatch_edges` row, either direction: `ForbiddenPairs`). Among allowed candidates:
- `none`: the triplet keeps its own negative (the triplets table already obeys the same rule);
- `semi_hard` (FaceNet, as CDML mines inside big batches): the closest candidate farther from a_i
  than p_i is, i.e. the smallest d(a_i, n_j) with d(a_i, n_j) > d(a_i, p_i);
- `hardest` (batch-hard): the closest allowed candidate.
Ties go to the smallest j. A triplet with no eligible candidate keeps its own negative.

Reductions: `mean` over all triplets, or `nonzero_mean` over the triplets with positive loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ForbiddenPairs", "mine_negatives", "squared_distances", "triplet_loss"]

_MINERS = ("none", "semi_hard", "hardest")
_ROW_CHUNK = 1024  # rows of the (triplets × candidates) masks built at once


def _pair_code(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Order-free 64-bit code of two video keys (xxhash64 values): a XOR b."""
    return torch.bitwise_xor(a, b)


@dataclass(frozen=True)
class ForbiddenPairs:
    """Sorted, unique codes of video pairs that must never form (anchor, negative)."""

    codes: np.ndarray  # int64, sorted

    @classmethod
    def from_keys(cls, left: np.ndarray, right: np.ndarray) -> ForbiddenPairs:
        codes = _pair_code(torch.from_numpy(left.astype(np.int64)), torch.from_numpy(right.astype(np.int64)))
        return cls(np.unique(codes.numpy()))

    def contains(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Elementwise: is (a, b) a forbidden pair? (broadcasting int64 key tensors)."""
        codes = torch.from_numpy(self.codes).to(a.device)
        query = _pair_code(a, b)
        if len(codes) == 0:
            return torch.zeros_like(query, dtype=torch.bool)
        at = torch.searchsorted(codes, query.contiguous()).clamp_max(len(codes) - 1)
        return codes[at] == query


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(len(x), len(y)) matrix of |x_i − y_j|²."""
    return (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2 * x @ y.T).clamp_min(0)


def mine_negatives(
    miner: str,
    anchor: torch.Tensor,
    positive: torch.Tensor,
    anchor_keys: torch.Tensor,
    positive_keys: torch.Tensor,
    pool: torch.Tensor,
    pool_keys: torch.Tensor,
    own: torch.Tensor,
    forbidden: ForbiddenPairs | None,
) -> torch.Tensor:
    """Index into `pool` of each triplet's negative; `own[i]` is triplet i's own negative's index."""
    if miner == "none":
        return own
    if miner not in _MINERS:
        raise ValueError(f"unknown miner {miner!r}: expected one of {_MINERS}")
    d_ap = (anchor - positive).pow(2).sum(1)
    picks = []
    for lo in range(0, len(anchor), _ROW_CHUNK):
        rows = slice(lo, lo + _ROW_CHUNK)
        d_an = squared_distances(anchor[rows], pool)
        allowed = (pool_keys[None, :] != anchor_keys[rows, None]) & (
            pool_keys[None, :] != positive_keys[rows, None]
        )
        if miner == "semi_hard":
            allowed &= d_an > d_ap[rows, None]
        masked = torch.where(allowed, d_an, torch.full_like(d_an, float("inf")))
        picks.append(_closest_allowed(masked, anchor_keys[rows], pool_keys, own[rows], forbidden))
    return torch.cat(picks)


def _closest_allowed(
    masked: torch.Tensor,
    anchor_keys: torch.Tensor,
    pool_keys: torch.Tensor,
    own: torch.Tensor,
    forbidden: ForbiddenPairs | None,
    rounds: int = 16,
) -> torch.Tensor:
    """Per row, the first column of smallest finite distance that is not a forbidden pair (else `own`).
    Only each row's current best candidate is looked up: a forbidden one is masked and the row retried,
    so the result equals a full (rows × pool) check at a fraction of its lookups."""
    best = masked.argmin(dim=1)  # first index among equal minima
    found = torch.isfinite(masked.gather(1, best[:, None]))[:, 0]
    pick = torch.where(found, best, own)
    if forbidden is None:
        return pick
    active = torch.nonzero(found, as_tuple=True)[0]
    for _ in range(rounds):
        if len(active) == 0:
            return pick
        bad = forbidden.contains(anchor_keys[active], pool_keys[pick[active]])
        retry = active[bad]
        masked[retry, pick[retry]] = float("inf")
        best = masked[retry].argmin(dim=1)
        finite = torch.isfinite(masked[retry].gather(1, best[:, None]))[:, 0]
        pick[retry] = torch.where(finite, best, own[retry])
        active = retry[finite]
    if len(active):  # rows with many forbidden candidates in a row: check all their columns at once
        still = forbidden.contains(anchor_keys[active, None], pool_keys[None, :])
        rest = masked[active].masked_fill(still, float("inf"))
        best = rest.argmin(dim=1)
        finite = torch.isfinite(rest.gather(1, best[:, None]))[:, 0]
        pick[active] = torch.where(finite, best, own[active])
    return pick


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reduced hinge loss, per-triplet correctness d(a,p) < d(a,n))."""
    d_ap = (anchor - positive).pow(2).sum(1)
    d_an = (anchor - negative).pow(2).sum(1)
    losses = (d_ap - d_an + margin).clamp_min(0)
    if reduction == "nonzero_mean":
        active = (losses > 0).sum()
        loss = losses.sum() / active.clamp_min(1)
    elif reduction == "mean":
        loss = losses.mean()
    else:
        raise ValueError(f"unknown reduction {reduction!r}: expected mean or nonzero_mean")
    return loss, d_ap < d_an
