"""Evaluation: the time split and the user-held-out split (users, cold videos, training events, truth
graph) against pure-Python references, the tasks on hand-made catalogs, and the job end to end on tiny
synthetic data for both protocols (real pipeline, real training)."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cdml_spark.config import GraphConfig, TripletsConfig, UserHoldoutConfig
from cdml_spark.evaluation.protocols import (
    held_out_events,
    held_out_neighbours,
    time_split,
    training_events,
    user_holdout_split,
    workspace_config,
)
from cdml_spark.evaluation.run import evaluate
from cdml_spark.evaluation.tasks import Catalog, Graph, Users, recommendation, retrieval, scorers
from cdml_spark.events import read_events_source
from cdml_spark.tables import EVAL_METRICS, VIDEO_SPLITS, WATCH_EVENTS, TableStore, video_features_spec
from cdml_spark.triplets import assign_splits

from .conftest import SMALL, make_config
from .reference import brute_force_edges, xxh64
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


def _uniform(*parts: str) -> float:
    """Pure-Python triplets.hash_uniform of string columns: Spark's xxhash64 (seed 42, each column
    seeding the next), low 53 bits / 2^53."""
    h = 42
    for part in parts:
        h = xxh64(part.encode(), h)
    return (h & ((1 << 53) - 1)) / float(1 << 53)


def test_uniform_reference_matches_spark(spark):
    ids = ["", "u1", "a-long-user-id-of-more-than-32-bytes-xyz", "Toy Story (1995)", "é"]
    got = spark.createDataFrame([(i,) for i in ids], "id string").selectExpr(
        "id", "xxhash64('salt', id) AS h"
    )
    for row in got.collect():
        assert (row.h & ((1 << 53) - 1)) / float(1 << 53) == _uniform("salt", row.id)


def _random_events(seed: int, users: int, videos: int, n: int) -> list[tuple[str, str, datetime]]:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        (
            f"u{rng.randrange(users)}",
            f"v{rng.randrange(videos)}",
            start + timedelta(minutes=rng.randrange(4000)),
        )
        for _ in range(n)
    ]


def test_user_holdout_split_matches_python(spark):
    rows = _random_events(7, users=40, videos=25, n=900)
    events = spark.createDataFrame(rows, "user_id string, video_id string, event_ts timestamp")
    params = UserHoldoutConfig(user_fraction=0.3, cold_fraction=0.25, salt="s1")
    # the triplets' own cold share is replaced by the protocol's
    triplets = TripletsConfig(positives_per_anchor=1, validation_fraction=0.2, cold_fraction=0.05)
    split = user_holdout_split(events, params, triplets).persist()
    got = split.toPandas()
    # (a) held-out users / cold videos are exactly those whose salted hash is below the fraction
    held = {u for u, _, _ in rows if _uniform("s1", u) < 0.3}
    cold = {v for _, v, _ in rows if _uniform(triplets.split_salt, v) < 0.25}
    assert 0 < len(held) < 40 and 0 < len(cold) < 25
    assert set(got.loc[got["held_out"], "user_id"]) == held
    assert set(got.loc[~got["held_out"], "user_id"]) == {u for u, _, _ in rows} - held
    assert set(got.loc[got["cold"], "video_id"]) == cold
    # (b) training = every event of a kept user on a non-cold video, and nothing else
    train = training_events(events, split).selectExpr("user_id", "video_id", "unix_micros(event_ts)")
    micros = {tuple(r) for r in train.collect()}
    assert micros == {
        (u, v, int(ts.timestamp()) * 10**6) for u, v, ts in rows if u not in held and v not in cold
    }
    # (c) truth = the graph rule (cosine top-N) over all of the held-out users' events, cold included
    graph = GraphConfig(max_history=8, cowatch_window_hours=24, min_users=2, max_neighbors=2)
    index = {f"v{i}": i for i in range(25)}
    truth = held_out_neighbours(held_out_events(events, split), graph, index)
    expected = brute_force_edges([e for e in rows if e[0] in held], 8, 24, 2, 2)
    assert {(a, b) for a, nbrs in truth.items() for b in nbrs} == {(index[a], index[b]) for a, b in expected}
    assert max(len(nbrs) for nbrs in truth.values()) == 2
    assert any(a in cold or b in cold for a, b in expected)  # cold videos are in the truth
    split.unpersist()


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
        support=np.array([4.0, 3, 3, 1, 0, 0]),
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


def _check_time_split_workspace(spark, cfg) -> None:
    """No leak: the workspace trained on each user's earliest 80% only, and never saw a cold video."""
    ecfg = workspace_config(cfg, "synthetic", "time_split")
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


def _check_user_holdout_workspace(spark, cfg) -> None:
    """The workspace's watch_events are exactly the kept users' events on non-cold videos (pure-Python
    hashes), its cold_test videos are the protocol's, and its features' version differs from the time
    split's (genres in the content)."""
    ecfg = workspace_config(cfg, "synthetic", "user_holdout")
    uh, workspace = cfg.evaluation.user_holdout, TableStore(spark, ecfg.storage)
    full = read_events_source(spark, ecfg).selectExpr("user_id", "video_id", "unix_micros(event_ts)")
    users = {r.user_id for r in full.select("user_id").distinct().collect()}
    held = {u for u in users if _uniform(uh.salt, u) < uh.user_fraction}
    splits = workspace.read(VIDEO_SPLITS).toPandas()
    cold = {v for v in splits["video_id"] if _uniform(ecfg.triplets.split_salt, v) < uh.cold_fraction}
    assert 0 < len(held) < len(users) and cold == set(splits.loc[splits["split"] == "cold_test", "video_id"])
    seen = workspace.read(WATCH_EVENTS).selectExpr("user_id", "video_id", "unix_micros(event_ts)")
    expected = {tuple(r) for r in full.collect() if r[0] not in held and r[1] not in cold}
    assert {tuple(r) for r in seen.collect()} == expected
    features = video_features_spec(ecfg.features.modalities)
    version = {r[0] for r in workspace.read(features).select("feature_version").distinct().collect()}
    time_ws = TableStore(spark, workspace_config(cfg, "synthetic", "time_split").storage)
    assert version == {cfg.features.version}
    assert {r[0] for r in time_ws.read(features).select("feature_version").distinct().collect()} == {
        f"{cfg.features.version}-nogenres"
    }


def test_evaluate_job_on_synthetic(spark, tmp_path, monkeypatch, capsys):
    cfg = make_config(
        tmp_path / "tables",
        *SMALL,
        "evaluation.datasets=[synthetic]",
        f"evaluation.workspace={tmp_path / 'eval'}",
        f"evaluation.report_dir={tmp_path / 'report'}",
        "evaluation.protocols=[time_split, user_holdout]",
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
    assert set(table["protocol"]) == {"time_split", "user_holdout"}
    by_protocol = {p: rows for p, rows in table.groupby("protocol")}
    assert set(by_protocol["time_split"]["task"]) == {"retrieval", "recommendation", "classification"}
    holdout = by_protocol["user_holdout"]
    assert set(holdout["task"]) == {"retrieval"}  # no recommendation, no classification
    assert set(holdout["item_split"]) == {"warm", "cold"}
    methods = {"random", "popularity", "cooccurrence_cf", "raw_features", "cdml_early", "cdml_late"}
    assert all(methods <= set(rows["method"]) for rows in by_protocol.values())
    assert table["value"].between(0, 1).all()
    assert table.loc[table["method"].str.startswith(("cdml", "related")), "model_version"].notna().all()
    assert not ((table["method"] == "cooccurrence_cf") & (table["item_split"] == "cold")).any()
    related = table[table["method"].str.startswith("related_")]
    assert set(related["method"]) == {"related_early", "related_late"}
    assert set(related["task"]) == {"retrieval"}  # a list of videos like one video
    cold = table[(table["task"] == "retrieval") & (table["item_split"] == "cold")]
    by_method = cold.set_index(["protocol", "method", "metric", "k"])["value"]
    for (protocol, method, metric, k), v in by_method.items():  # never watched: the embedding alone
        if method.startswith("related_"):
            assert v == by_method[protocol, method.replace("related_", "cdml_"), metric, k]
    value = table.set_index(["protocol", "task", "method", "item_split", "metric", "k"])["value"]
    # synthetic co-watch follows the latent topics that the content features encode
    for protocol in ("time_split", "user_holdout"):
        for method in ("cdml_early", "raw_features"):
            ndcg = value[protocol, "retrieval", method, "warm", "ndcg", 10]
            assert ndcg > value[protocol, "retrieval", "random", "warm", "ndcg", 10], (protocol, method)
    assert (
        value["time_split", "classification", "cdml_early", "cold", "gap", 3]
        > value["time_split", "classification", "random", "cold", "gap", 3]
    )
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## synthetic — time_split" in report and "## synthetic — user_holdout" in report
    assert "| cdml_late |" in report and "retr map@10 cold" in report
    assert os.path.exists(tmp_path / "report" / "synthetic_user_holdout_retrieval.png")
    assert len(list((tmp_path / "mlruns").glob("*/*/artifacts/report/report.md"))) == 1
    _check_time_split_workspace(spark, cfg)
    _check_user_holdout_workspace(spark, cfg)
    run_notebook(NOTEBOOK_DIR / "04_evaluation.py", cfg, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "| cdml_early |" in out and "synthetic / user_holdout / retrieval" in out
    # --reuse: the workspaces scored again as they are (late fusion was embedded last), no training
    keys = ["protocol", "task", "method", "item_split", "metric", "k"]
    ranked = lambda frame: frame[frame["task"] != "classification"].set_index(keys)["value"]  # noqa: E731
    again = ranked(evaluate(spark, cfg, reuse=True))
    scored = {m for m in again.index.get_level_values("method") if m.startswith(("cdml", "related"))}
    assert scored == {"cdml_late", "related_late"}
    assert np.allclose(again, ranked(metrics)[again.index])
