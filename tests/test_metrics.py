"""Metric definitions against hand-computed cases and Spark's RankingMetrics (an independent implementation)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pyspark.mllib.evaluation import RankingMetrics

from cdml_spark.evaluation.metrics import (
    average_precision_at_k,
    global_average_precision,
    mean_average_precision,
    mean_ranking_metric,
    ndcg_at_k,
    rank_items,
    recall_at_k,
)


def test_ranking_metrics_hand_computed():
    ranked, relevant = [1, 2, 3, 4, 5], {1, 3, 6}
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, relevant, 5) == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    assert average_precision_at_k(ranked, relevant, 5) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)  # normalised by min(|R|, k)
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)
    assert ndcg_at_k([9, 8], {1}, 2) == 0.0
    with pytest.raises(ValueError, match="relevant"):
        mean_ranking_metric("ndcg", [[1]], [set()], 1)


def test_ranking_metrics_match_spark(spark):
    rng = random.Random(3)
    ranked = [rng.sample(range(40), rng.randint(1, 30)) for _ in range(60)]
    relevant = [set(rng.sample(range(40), rng.randint(1, 12))) for _ in range(60)]
    spark_metrics = RankingMetrics(
        spark.sparkContext.parallelize([(p, sorted(r)) for p, r in zip(ranked, relevant, strict=True)])
    )
    for k in (1, 5, 10, 50):
        assert mean_ranking_metric("ndcg", ranked, relevant, k) == pytest.approx(spark_metrics.ndcgAt(k))
        assert mean_ranking_metric("map", ranked, relevant, k) == pytest.approx(
            spark_metrics.meanAveragePrecisionAt(k)
        )
        assert mean_ranking_metric("recall", ranked, relevant, k) == pytest.approx(spark_metrics.recallAt(k))


def test_classification_metrics_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
    labels = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    # pooled top-2: 0.9 (hit), 0.8, 0.5, 0.3 (hit) -> (1/1 + 2/4) / 2 positives
    assert global_average_precision(scores, labels, 2) == pytest.approx(0.75)
    assert global_average_precision(scores, labels, 1) == pytest.approx(
        0.5
    )  # the 2nd positive is never predicted
    # class 0: AP 1; class 1: no positive (skipped); class 2: positive ranked 2nd -> 1/2
    assert mean_average_precision(scores, labels) == pytest.approx(0.75)


def test_rank_items_ties_and_exclusions():
    scores = np.array([[0.5, 0.9, 0.5, -np.inf], [-np.inf, -np.inf, 1.0, -np.inf]])
    assert rank_items(scores, 3).tolist() == [[1, 0, 2], [2, -1, -1]]


def test_rank_items_matches_python_sort_on_tied_scores():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(200, 30)).astype(float)  # many ties across the k-th place
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[:50] += rng.random((50, 30))  # and rows without ties
    for k in (1, 5, 30, 40):
        expected = [
            [j for j in sorted(range(30), key=lambda j, row=row: (-row[j], j)) if np.isfinite(row[j])][:k]
            for row in scores
        ]
        expected = [e + [-1] * (min(k, 30) - len(e)) for e in expected]
        assert rank_items(scores, k).tolist() == expected
