"""Embedding, neighbours (exact vs numpy, ANN recall), recommendations (vs hand computation),
cold videos, the example SQL and reading the tables without Spark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdml_spark.serving.neighbors import build_neighbors
from cdml_spark.serving.top_k import ann_recall
from cdml_spark.sql_queries import render, run_sql_file
from cdml_spark.summary import summary
from cdml_spark.tables import (
    USER_RECOMMENDATIONS,
    VIDEO_EMBEDDINGS,
    VIDEO_NEIGHBORS,
    VIDEO_STATS,
    WATCH_EVENTS,
    TableStore,
    video_features_spec,
)
from cdml_spark.training.model import load_model


def numpy_top_k(matrix, ids, query, k, exclude):
    scores = matrix @ query
    order = sorted((i for i in range(len(ids)) if ids[i] not in exclude), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order[:k]], [scores[i] for i in order[:k]]


def test_embeddings_equal_direct_inference(spark, served):
    cfg, store, ids, matrix, artifact = served
    feats = store.read(video_features_spec(cfg.features.modalities)).toPandas().sort_values("video_id")
    assert list(feats["video_id"]) == ids and len(ids) == 206  # every video with features, cold ones too
    with torch.no_grad():
        direct = load_model(str(artifact))(
            {n: torch.tensor(np.stack(feats[n]).astype(np.float32)) for n in ("vis", "aud")}
        )
    assert np.allclose(matrix, direct.numpy(), atol=1e-6)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)


def test_exact_neighbors_equal_numpy(spark, served):
    cfg, store, ids, matrix, _ = served
    rows = store.read(VIDEO_NEIGHBORS).collect()
    got: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r.video_id, r.rank)):
        got.setdefault(r.video_id, []).append((r.neighbor_id, r.score))
    assert len(got) == 206  # includes v200..v205, which nobody watched
    for i, vid in enumerate(ids):
        exp_ids, exp_scores = numpy_top_k(matrix, ids, matrix[i], 5, {vid})
        assert [n for n, _ in got[vid]] == exp_ids, vid
        assert np.allclose([s for _, s in got[vid]], exp_scores, atol=1e-5)


def test_ann_mode_reports_recall(spark, served):
    cfg, store, _, _, _ = served
    ann_cfg = cfg.model_copy(update={"neighbors": cfg.neighbors.model_copy(update={"mode": "ann"})})
    report = build_neighbors(spark, ann_cfg)
    assert 0.9 <= report["recall"] <= 1.0  # HNSW on 206 vectors is near exact
    assert report["rows"] == 206 * 5
    build_neighbors(spark, cfg)  # leave the exact table for the other tests


def test_recall_at_k_by_hand():
    approx = np.array([["a", "b", "c"], ["x", "y", "z"]], dtype=object)
    exact = np.array([["a", "c", "d"], ["q", "r", "z"]], dtype=object)
    assert ann_recall(approx, exact) == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_recommendations_equal_hand_computation(spark, served):
    cfg, store, ids, matrix, _ = served
    index = {v: i for i, v in enumerate(ids)}
    events = store.read(WATCH_EVENTS).toPandas()
    recs = store.read(USER_RECOMMENDATIONS).toPandas()
    for user in sorted(events["user_id"].unique())[:5]:
        mine = events[events["user_id"] == user].groupby("video_id")["event_ts"].max().reset_index()
        mine = mine[mine["video_id"].isin(index)].sort_values(
            ["event_ts", "video_id"], ascending=[False, True]
        )
        history = list(mine["video_id"][:3])
        watched = set(events[events["user_id"] == user]["video_id"])
        mean = matrix[[index[v] for v in history]].mean(axis=0)
        exp_ids, exp_scores = numpy_top_k(matrix, ids, mean, 4, watched)
        # the score is the mean cosine to the history, computed the long way
        assert np.isclose(
            exp_scores[0], np.mean([matrix[index[exp_ids[0]]] @ matrix[index[h]] for h in history])
        )
        got = recs[recs["user_id"] == user].sort_values("rank")
        assert list(got["video_id"]) == exp_ids, user
        assert np.allclose(got["score"], exp_scores, atol=1e-5)
        assert not set(got["video_id"]) & watched


def test_example_sql_runs(spark, served):
    cfg, store, ids, _, _ = served
    db = cfg.storage.database
    TableStore(spark, cfg.storage)  # registers the tables in this session's catalog
    neighbours = run_sql_file(spark, "neighbors_of_video", db=db, video_id="v7").collect()
    assert [r["rank"] for r in neighbours] == [1, 2, 3, 4, 5]
    user = store.read(USER_RECOMMENDATIONS).first()["user_id"]
    assert len(run_sql_file(spark, "recommendations_for_user", db=db, user_id=user).collect()) == 4
    cold = run_sql_file(spark, "cold_videos_nearest_warm", db=db, limit=10).collect()
    assert cold and all(r["warm_neighbor"] for r in cold)
    assert "v200" in {
        r["cold_video"] for r in run_sql_file(spark, "cold_videos_nearest_warm", db=db, limit=1000).collect()
    }
    assert render("x = '${v}'", {"v": "Schindler's"}) == "x = 'Schindler\\'s'"
    with pytest.raises(KeyError, match="video_id"):
        run_sql_file(spark, "neighbors_of_video", db=db)


def test_render_quotes_the_database():
    sql = "SELECT * FROM ${db}.video_neighbors WHERE video_id = '${v}'"
    assert render(sql, {"db": "main.cdml", "v": "a'b"}) == (
        "SELECT * FROM `main`.`cdml`.video_neighbors WHERE video_id = 'a\\'b'"
    )
    assert render("${db}.t", {"db": "x`y"}) == "`x``y`.t"


def test_tables_readable_by_deltalake(spark, served):
    deltalake = pytest.importorskip("deltalake")
    cfg, store, _, _, _ = served
    for spec in (VIDEO_NEIGHBORS, USER_RECOMMENDATIONS, VIDEO_EMBEDDINGS):
        df = deltalake.DeltaTable(store.path(spec)).to_pandas()
        assert len(df) == store.read(spec).count() > 0


def test_summary_shows_a_featured_video_by_cowatch_and_by_embedding(spark, served):
    cfg, store, ids, _, _ = served
    featured = store.read(VIDEO_STATS).orderBy("users", "video_id").first()["video_id"]  # not a top video
    text = summary(spark, cfg, examples=1, featured=(featured, "not-a-video"))
    cowatch, embedding = text.split("by CDML embedding (video_neighbors):")[:2]
    assert f'like "{featured}"' in cowatch.split("by co-watch (cowatch_edges):")[1]
    assert f'like "{featured}"' in embedding and "not-a-video" not in text
