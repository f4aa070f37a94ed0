"""Evaluation: the time split against a pure-Python split, the tasks on hand-made catalogs, and the
job end to end on tiny synthetic data (real pipeline, real training)."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cdml_spark.config import TripletsConfig
from cdml_spark.eval_tasks import Catalog, Graph, Users, recommendation, retrieval, scorers
from cdml_spark.evaluation import evaluate, time_split, workspace_config
from cdml_spark.events import read_events_source
from cdml_spark.tables import EVAL_METRICS, VIDEO_SPLITS, WATCH_EVENTS, TableStore
from cdml_spark.triplets import assign_splits

from .conftest import SMALL, make_config
from .test_notebooks import NOTEBOOK_DIR, run_notebook


def test_time_split_matches_python(spark):
    rng = random.Random(5)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    minutes = rng.sample(range(5000), 400)  # distinct times: the tie rule (a hash) is not re-derived here
    rows = [(f"u{rng.randrange(8)}", f"v{rng.randrange(30)}", start + timedelta(minutes=m)) for m in minutes]
    events = spark.createDataFrame(rows, "user_id string, video_id string, event_ts timestamp")
    triplets = TripletsConfig(positives_per_anchor=1, validation_fraction=0.2, cold_fraction=0.2)
    got = {
        (r.user_id, r.video_id): (r.held_out, r.cold) for r in time_split(events, 0.25, triplets).collect()
    }
    videos = spark.createDataFrame([(f"v{i}",) for i in range(30)], "video_id string")
    cold = {r.video_id for r in assign_splits(videos, triplets, None).where("split = 'cold_test'").collect()}
    assert 0 < len(cold) < 30
    expected = {}
    for user in {u for u, _, _ in rows}:
        last = {}
        for u, v, ts in rows:
            if u == user:
                last[v] = max(last.get(v, ts), ts)
        order = sorted(last, key=lambda v: last[v], reverse=True)
        for rank, v in enumerate(order):
            expected[(user, v)] = (rank < int(len(order) * 0.25), v in cold)
    assert got == expected


def _catalog() -> Catalog:
    # items 0-1 and 2-3 are pairs by content; 4 and 5 are cold (no watches, so no popularity)
    raw = np.array(
        [[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1], [0.5, 0.5, 0.7]], dtype=np.float32
    )
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    return Catalog(
        ids=np.array([f"v{i}" for i in range(6)]),
        split=np.array(["train", "train", "train", "train", "cold_test", "cold_test"]),
        popularity=np.array([5.0, 4, 3, 2, 0, 0]),
        graph=Graph.from_edges(6, np.array([0, 2]), np.array([2, 0]), np.array([0.5, 0.5])),  # 0 ~ 2
        raw=raw,
    )


def test_retrieval_by_hand():
    catalog = _catalog()
    rows = retrieval(catalog, scorers(catalog, {}, seed=0), {0: {1}, 2: {0}, 5: {4}}, ks=[1, 2])
    value = {(r.method, r.item_split, r.metric, r.k): r.value for r in rows}
    assert value[("raw_features", "warm", "ndcg", 1)] == pytest.approx(
        0.5
    )  # query 0 -> 1 hit, query 2 -> 3 miss
    assert value[("cooccurrence_cf", "warm", "map", 1)] == pytest.approx(
        0.5
    )  # query 2 -> 0 hit, query 0 -> 2 miss
    assert value[("popularity", "warm", "map", 2)] == 1.0  # most popular other item is relevant for both
    assert ("cooccurrence_cf", "cold", "ndcg", 1) not in value  # undefined for cold videos
    assert value[("raw_features", "cold", "ndcg", 1)] == 1.0  # 4 is nearest to 5
    assert value[("popularity", "cold", "ndcg", 1)] == 0.0  # 0 is the most popular
    assert {r.support for r in rows if r.item_split == "warm"} == {2}


def test_recommendation_by_hand():
    catalog = _catalog()
    # item 1 would be the raw-feature top pick for a user of item 0, but the user watched it already
    users = Users(history=[np.array([0])], watched=[np.array([0, 1])], test=[{3, 5}])
    rows = recommendation(catalog, scorers(catalog, {}, seed=0), users, k=1)
    value = {(r.method, r.item_split, r.metric): r.value for r in rows}
    assert value[("raw_features", "all", "recall")] == pytest.approx(1 / 2)  # 5 is the best unwatched
    assert value[("cooccurrence_cf", "all", "recall")] == 0.0  # CF picks 2
    assert value[("raw_features", "cold", "ndcg")] == 1.0  # among cold 4, 5: 5 is closer to 0
    assert value[("popularity", "cold", "ndcg")] == 0.0  # cold items tie at 0 popularity: 4 first
    assert ("cooccurrence_cf", "cold", "ndcg") not in value


def test_evaluate_job_on_synthetic(spark, tmp_path, monkeypatch, capsys):
    cfg = make_config(
        tmp_path / "tables",
        *SMALL,
        "evaluation.datasets=[synthetic]",
        f"evaluation.workspace={tmp_path / 'eval'}",
        f"evaluation.report_dir={tmp_path / 'report'}",
        "evaluation.min_test_items=3",
        "evaluation.ks=[5, 10]",
        "evaluation.gap_k=3",
        f"training.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}",
        "training.hidden=[32]",
        "training.embedding_dim=16",
        "training.batch_size=256",
        "training.epochs=2",
        "training.learning_rate=0.01",
    )
    metrics = evaluate(spark, cfg)
    table = TableStore(spark, cfg.storage).read(EVAL_METRICS).toPandas()
    assert len(table) == len(metrics) and table["run_id"].nunique() == 1
    assert set(table["task"]) == {"retrieval", "recommendation", "classification"}
    assert {"random", "popularity", "cooccurrence_cf", "raw_features", "cdml_early", "cdml_late"} <= set(
        table["method"]
    )
    assert table["value"].between(0, 1).all()
    assert table.loc[table["method"].str.startswith("cdml"), "model_version"].notna().all()
    assert not ((table["method"] == "cooccurrence_cf") & (table["item_split"] == "cold")).any()
    value = table.set_index(["task", "method", "item_split", "metric", "k"])["value"]
    # synthetic co-watch follows the latent topics that the content features encode
    for method in ("cdml_early", "raw_features"):
        assert (
            value["retrieval", method, "warm", "ndcg", 10] > value["retrieval", "random", "warm", "ndcg", 10]
        )
    assert (
        value["classification", "cdml_early", "cold", "gap", 3]
        > value["classification", "random", "cold", "gap", 3]
    )
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| cdml_late |" in report and os.path.exists(tmp_path / "report" / "synthetic_retrieval.png")
    assert len(list((tmp_path / "mlruns").glob("*/*/artifacts/report/report.md"))) == 1
    # no leak: the workspace trained on each user's earliest 80% only, and never saw a cold video
    ecfg = workspace_config(cfg, "synthetic")
    workspace = TableStore(spark, ecfg.storage)
    seen = workspace.read(WATCH_EVENTS).select("user_id", "video_id").distinct().toPandas()
    cold = set(workspace.read(VIDEO_SPLITS).where("split = 'cold_test'").toPandas()["video_id"])
    assert cold and not set(seen["video_id"]) & cold
    full = read_events_source(spark, ecfg).groupBy("user_id", "video_id").agg({"event_ts": "max"}).toPandas()
    full.columns = ["user_id", "video_id", "ts"]
    kept = set(zip(seen["user_id"], seen["video_id"], strict=True))
    full["kept"] = [(u, v) in kept for u, v in zip(full["user_id"], full["video_id"], strict=True)]
    full["cold"] = full["video_id"].isin(cold)
    for user, w in full.groupby("user_id"):
        n, held = len(w), len(w) // 5  # floor(0.2 n) held out, plus the user's cold videos
        assert n - held - w["cold"].sum() <= w["kept"].sum() <= n - held, user
        withheld_warm = w[~w["kept"] & ~w["cold"]]
        if w["kept"].any() and len(withheld_warm):
            assert w.loc[w["kept"], "ts"].max() <= withheld_warm["ts"].min(), user  # only later ones withheld
    run_notebook(NOTEBOOK_DIR / "04_evaluation.py", cfg, tmp_path, monkeypatch)
    assert "| cdml_early |" in capsys.readouterr().out
