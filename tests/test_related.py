"""The related-videos blend: the function on hand-made numbers, the `build_related` job against a
catalog-wide brute force (sources, ranks, exclusions) and the evaluation's `related_*` method."""

from __future__ import annotations

import numpy as np
import pytest

from cdml_spark.evaluation.tasks import Catalog, Graph, related_scorers, retrieval, scorers
from cdml_spark.serving.blend import blend, cowatch_weight
from cdml_spark.serving.related import build_related
from cdml_spark.tables import COWATCH_EDGES, RELATED_VIDEOS, VIDEO_NEIGHBORS, VIDEO_STATS, TableStore

HALF = 30.0  # support_half_weight in the job tests: the synthetic catalog has videos on both sides


def test_blend_by_hand():
    # candidates a, b, c of three videos: never watched (s=0), s = k = 10 (equal weights), s = 990
    cowatch = np.array([[0.0, 0.0, 0.0], [0.6, 0.0, 0.2], [0.6, 0.0, 0.2]])
    cosine = np.array([[0.1, 0.9, 0.5], [0.1, 0.9, 0.5], [0.1, 0.9, 0.5]], dtype=np.float32)
    support = np.array([[0], [10], [990]])
    got = blend(cowatch, cosine, support, 10.0)
    assert cowatch_weight(support, 10.0).ravel().tolist() == [0.0, 0.5, 0.99]
    assert got[0].tolist() == cosine[0].astype(np.float64).tolist()  # embedding alone, bit for bit
    assert np.allclose(got[1], [0.35, 0.45, 0.35])  # (0.6 + 0.1) / 2, 0.9 / 2, (0.2 + 0.5) / 2
    assert np.allclose(got[2], [0.595, 0.009, 0.203])  # 0.99 · cowatch + 0.01 · cosine
    assert [list(np.argsort(-row, kind="stable")) for row in got] == [[1, 2, 0], [1, 0, 2], [0, 2, 1]]


def _brute_force(ids, matrix, cowatch, support, half, k, excluded=frozenset(), candidates=None):
    """video -> [(neighbor, score)] best first (ties by id): every allowed video scored from the
    definition, one pair at a time; `candidates` (video -> ids) limits the videos scored."""
    out = {}
    for i, vid in enumerate(ids):
        if vid in excluded:
            continue
        w = support.get(vid, 0) / (support.get(vid, 0) + half)
        scored = []
        for j, other in enumerate(ids):
            if other == vid or other in excluded:
                continue
            if candidates is not None and other not in candidates.get(vid, ()):
                continue
            cos = float(sum(float(x) * float(y) for x, y in zip(matrix[i], matrix[j], strict=True)))
            scored.append((-(w * cowatch.get((vid, other), 0.0) + (1 - w) * cos), other))
        out[vid] = [(other, -neg) for neg, other in sorted(scored)[:k]]
    return out


def _table(store: TableStore) -> dict[str, list]:
    rows = store.read(RELATED_VIDEOS).toPandas().sort_values(["video_id", "rank"])
    return {v: list(g.itertuples(index=False)) for v, g in rows.groupby("video_id")}


def _assert_equal(got: dict[str, list], expected: dict[str, list]) -> None:
    assert set(got) == {v for v, rows in expected.items() if rows}
    for vid, rows in got.items():
        assert [r.neighbor_id for r in rows] == [n for n, _ in expected[vid]], vid
        assert np.allclose([r.score for r in rows], [s for _, s in expected[vid]], atol=1e-5), vid
        assert [r.rank for r in rows] == list(range(1, len(rows) + 1)), vid


def test_build_related_equals_brute_force(spark, served):
    cfg, store, ids, matrix, _ = served
    cfg = cfg.model_copy(update={"related": cfg.related.model_copy(update={"support_half_weight": HALF})})
    k = cfg.neighbors.k
    edges = store.read(COWATCH_EDGES).toPandas()
    cowatch = {
        (a, b): s for a, b, s in zip(edges["video_id"], edges["neighbor_id"], edges["score"], strict=True)
    }
    stats = store.read(VIDEO_STATS).toPandas()
    support = dict(zip(stats["video_id"], stats["user_days"], strict=True))
    assert min(support.values()) < HALF < max(support.values())

    report = build_related(spark, cfg)
    got = _table(store)
    _assert_equal(got, _brute_force(ids, matrix, cowatch, support, HALF, k))  # top-k of the whole catalog
    assert report["rows"] == len(ids) * k
    schema = store.read(RELATED_VIDEOS).schema
    assert [(f.name, f.dataType) for f in schema] == [(f.name, f.dataType) for f in RELATED_VIDEOS.schema]

    embedding = {(r.video_id, r.neighbor_id) for r in store.read(VIDEO_NEIGHBORS).collect()}
    for vid, rows in got.items():
        for r in rows:
            pair = (vid, r.neighbor_id)
            assert (
                r.source
                == {(True, True): "both", (True, False): "cowatch", (False, True): "embedding"}[
                    (pair in cowatch, pair in embedding)
                ]
            ), pair
            assert r.cowatch_weight == pytest.approx(support.get(vid, 0) / (support.get(vid, 0) + HALF))
    sources = {r.source for rows in got.values() for r in rows}
    assert sources == {"cowatch", "embedding", "both"}
    never = [v for v in ids if v not in support]  # nobody watched: exactly its embedding neighbours
    assert never and all([r.source for r in got[v]] == ["embedding"] * k for v in never)
    popular = max(support, key=support.get)
    assert [r.neighbor_id for r in got[popular]][:3] == [
        n for n, _ in sorted(((n, s) for (a, n), s in cowatch.items() if a == popular), key=lambda x: -x[1])
    ][:3]  # w near 1: co-watch order first


def test_build_related_drops_excluded_videos(spark, served):
    cfg, store, ids, matrix, _ = served
    excluded = {"v7", "v0"}
    spark.createDataFrame(
        [(v,) for v in [*excluded, None, "not-a-video"]], "video_id string"
    ).createOrReplaceTempView("unavailable_videos")
    cfg = cfg.model_copy(
        update={
            "related": cfg.related.model_copy(
                update={"support_half_weight": HALF, "exclude_table": "unavailable_videos"}
            )
        }
    )
    edges = store.read(COWATCH_EDGES).toPandas()
    cowatch = {
        (a, b): s for a, b, s in zip(edges["video_id"], edges["neighbor_id"], edges["score"], strict=True)
    }
    listed = store.read(VIDEO_NEIGHBORS).toPandas()
    candidates: dict[str, set] = {}
    for a, b in [*cowatch, *zip(listed["video_id"], listed["neighbor_id"], strict=True)]:
        candidates.setdefault(a, set()).add(b)
    stats = store.read(VIDEO_STATS).toPandas()
    support = dict(zip(stats["video_id"], stats["user_days"], strict=True))
    build_related(spark, cfg)
    expected = _brute_force(ids, matrix, cowatch, support, HALF, cfg.neighbors.k, excluded, candidates)
    _assert_equal(_table(store), expected)
    build_related(
        spark, cfg.model_copy(update={"related": cfg.related.model_copy(update={"exclude_table": None})})
    )


def _catalog() -> Catalog:
    # 0 popular (its co-watch says 2), 1 thin (its co-watch says 3), 4 never watched; by content 0 ~ 1 ~ 3
    raw = np.array([[1, 0, 0], [0.9, 0.3, 0], [0, 1, 0], [0.8, 0, 0.6], [0.6, 0.8, 0]], dtype=np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    return Catalog(
        ids=np.array([f"v{i}" for i in range(5)]),
        split=np.array(["train", "train", "train", "train", "cold_test"]),
        popularity=np.array([900.0, 3, 50, 40, 0]),
        support=np.array([900.0, 3, 50, 40, 0]),
        graph=Graph.from_edges(5, np.array([0, 1, 2]), np.array([2, 3, 0]), np.array([0.5, 0.4, 0.5])),
        raw=raw,
    )


def test_related_method_in_the_evaluation():
    catalog = _catalog()
    vectors = {"cdml_early": catalog.raw}
    methods = {**scorers(catalog, vectors, seed=0), **related_scorers(catalog, vectors, 10.0)}
    assert "related_early" in methods and "related_raw" not in methods
    scores = methods["related_early"]([np.array([0]), np.array([1]), np.array([4])])
    cos = catalog.raw @ catalog.raw.T
    for row, q in enumerate((0, 1, 4)):
        w = catalog.support[q] / (catalog.support[q] + 10.0)
        expected = [w * catalog.graph.row_sum([q])[c] + (1 - w) * cos[q, c] for c in range(5)]
        assert np.allclose(scores[row], expected), q
    # popular 0 follows its co-watch (2), thin 1 its content (0), never-watched 4 exactly the embedding
    relevant = {0: {2}, 1: {0}, 4: {2}}
    value = {
        (r.method, r.item_split, r.metric, r.k): r.value
        for r in retrieval(catalog, methods, relevant, ks=[1])
    }
    assert value[("related_early", "warm", "ndcg", 1)] == 1.0
    assert (
        value[("cdml_early", "warm", "ndcg", 1)] == 0.5
        and value[("cooccurrence_cf", "warm", "ndcg", 1)] == 0.5
    )
    assert value[("related_early", "cold", "ndcg", 1)] == value[("cdml_early", "cold", "ndcg", 1)]
    with pytest.raises(ValueError):  # one video per query: not a user's history
        methods["related_early"]([np.array([0, 1])])
