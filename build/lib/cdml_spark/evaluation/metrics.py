"""Ranking and classification metrics, defined once (binary relevance).

For one query with ranked predictions p_1..p_n and relevant set R (|R| > 0), rel_i = [p_i ∈ R]:
- NDCG@k = Σ_{i≤k} rel_i / log2(i+1)  ÷  Σ_{i≤min(|R|,k)} 1 / log2(i+1)
- AP@k   = Σ_{i≤k} rel_i · precision@i  ÷  min(|R|, k)        (MAP@k = mean over queries)
- recall@k = |R ∩ {p_1..p_k}| / |R|
These are Spark's `RankingMetrics.ndcgAt`, `meanAveragePrecisionAt` and `recallAt`.

Classification (scores[N, C], labels[N, C] in {0, 1}):
- GAP@k (YouTube-8M): each video's k highest-scored classes are pooled into one list, sorted by
  score; GAP = Σ_i rel_i · precision@i ÷ (number of positive labels in `labels`).
- MAP: mean over classes with ≥ 1 positive of the class's average precision when videos are ranked
  by that class's score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "average_precision_at_k",
    "global_average_precision",
    "mean_average_precision",
    "mean_ranking_metric",
    "ndcg_at_k",
    "rank_items",
    "recall_at_k",
]


def ndcg_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    hits = [1.0 if x in relevant else 0.0 for x in list(ranked)[:k]]
    dcg = sum(h / np.log2(i + 2) for i, h in enumerate(hits))
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), k)))
    return float(dcg / ideal)


def average_precision_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    hits, total = 0, 0.0
    for i, x in enumerate(list(ranked)[:k]):
        if x in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(len(relevant), k)


def recall_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    return len(relevant.intersection(list(ranked)[:k])) / len(relevant)


_RANKING_METRICS = {"ndcg": ndcg_at_k, "map": average_precision_at_k, "recall": recall_at_k}


def mean_ranking_metric(name: str, ranked: Sequence[Sequence], relevant: Sequence[set], k: int) -> float:
    """Mean of metric `name` over queries (every relevant set must be non-empty)."""
    if any(not r for r in relevant):
        raise ValueError("every query needs at least one relevant item")
    metric = _RANKING_METRICS[name]
    return float(np.mean([metric(p, r, k) for p, r in zip(ranked, relevant, strict=True)]))


def _precision_weighted(sorted_labels: np.ndarray, positives: int) -> float:
    if positives == 0:
        return float("nan")
    hits = np.cumsum(sorted_labels)
    precision = hits / np.arange(1, len(sorted_labels) + 1)
    return float(np.sum(precision * sorted_labels) / positives)


def global_average_precision(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(scores))[:, None]
    pooled_scores, pooled_labels = scores[rows, top].ravel(), labels[rows, top].ravel()
    order = np.argsort(-pooled_scores, kind="stable")
    return _precision_weighted(pooled_labels[order].astype(float), int(labels.sum()))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    per_class = [
        _precision_weighted(
            labels[np.argsort(-scores[:, c], kind="stable"), c].astype(float), int(labels[:, c].sum())
        )
        for c in range(labels.shape[1])
        if labels[:, c].any()
    ]
    return float(np.mean(per_class))


def rank_items(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k column indices per row, highest score first, ties by lower index; -inf never ranked
    (rows with fewer finite scores are padded with -1). A partial sort picks each row's k best; rows
    with a tie across the k-th place fall back to a full stable sort."""
    rows, n = scores.shape
    k = min(k, n)
    if k == 0:
        return np.full((rows, 0), -1, dtype=np.int64)
    neg = -scores
    part = np.argpartition(neg, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(neg, part, axis=1).max(axis=1, keepdims=True)
    exact = (neg <= kth).sum(axis=1) == k  # the k chosen are the only ones at or above the k-th score
    order = np.empty((rows, k), dtype=np.int64)
    chosen = part[exact]
    by_score = np.lexsort((chosen, np.take_along_axis(neg[exact], chosen, axis=1)), axis=1)
    order[exact] = np.take_along_axis(chosen, by_score, axis=1)
    order[~exact] = np.argsort(neg[~exact], axis=1, kind="stable")[:, :k]
    finite = np.isfinite(np.take_along_axis(scores, order, axis=1))
    return np.where(finite, order, -1)
