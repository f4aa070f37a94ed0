"""Offline evaluation (`jobs/evaluate.py`): for each dataset in `evaluation.datasets`, run the real
pipeline in a workspace of its own on the *training period* only, then score CDML and baselines on
what happened later. Protocol:

1. Time split: per user, the latest ⌊test_fraction · n⌋ of their n distinct videos (by last watch
   time, ties by a hash of user and video) are held out; everything earlier is the training period. Cold-test videos
   (the triplet split's hash rule) lose all their training-period watches, so they are truly cold:
   no co-watch edges, no popularity, no triplets — only content features.
2. The training-period events go through ingest → build_graph → ingest_features (genres kept out of
   the inputs unless `evaluation.genres_as_content`) → make_triplets → train (+ embed) once per fusion.
3. Held-out co-watch graph: the same co-watch rule (window, min_users) on the held-out events.
   Retrieval: query = a video with held-out neighbours, relevant = those neighbours; warm = split
   train (trained on), cold = split cold_test (never in a triplet).
4. Recommendation: users with ≥ `min_test_items` held-out videos; profile = their `recommend.history`
   latest training-period videos; training-period watches are never recommended.
5. Classification: genres (MovieLens) or latent topic (synthetic), fit on train videos, scored on
   cold_test videos.
The metric definitions are in `cdml_spark.metrics`; methods in `cdml_spark.eval_tasks`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdml_spark.config import AppConfig, TripletsConfig
from cdml_spark.datasets import MOVIELENS
from cdml_spark.embed import current_embeddings, embed_catalog
from cdml_spark.eval_report import write_report
from cdml_spark.eval_tasks import (
    Catalog,
    Graph,
    MetricRow,
    Users,
    classification,
    recommendation,
    retrieval,
    scorers,
)
from cdml_spark.events import ingest_events, read_events_source, validate_events
from cdml_spark.features import ingest_features
from cdml_spark.graph import build_graph, cowatch_counts, kept_history
from cdml_spark.tables import (
    COWATCH_EDGES,
    EVAL_METRICS,
    VIDEO_METADATA,
    VIDEO_SPLITS,
    VIDEO_STATS,
    Lineage,
    TableStore,
    video_features_spec,
)
from cdml_spark.train import train
from cdml_spark.triplets import assign_splits, make_triplets, read_holdout

log = logging.getLogger(__name__)


def workspace_config(cfg: AppConfig, dataset: str) -> AppConfig:
    """`cfg` re-pointed at the dataset's own tables and model directory."""
    ev = cfg.evaluation
    root = os.path.join(ev.workspace, dataset)
    slug = dataset.replace("-", "_")
    storage = cfg.storage.model_copy(
        update={
            "database": f"{cfg.storage.database}_eval_{slug}",
            "tables_root": None if cfg.storage.tables_root is None else os.path.join(root, "tables"),
        }
    )
    features = cfg.features.model_copy(
        update={
            "source": "movielens" if dataset in MOVIELENS else "synthetic",
            "genres_as_content": ev.genres_as_content,
            "version": f"{cfg.features.version}{'' if ev.genres_as_content else '-nogenres'}",
        }
    )
    training = cfg.training.model_copy(
        update={
            "model_dir": os.path.join(root, "models"),
            "checkpoint_dir": os.path.join(root, "checkpoints"),
            "mlflow": cfg.training.mlflow.model_copy(update={"enabled": False}),
        }
    )
    return cfg.model_copy(
        update={
            "storage": storage,
            "events": cfg.events.model_copy(update={"source": dataset}),
            "features": features,
            # a previous model's neighbours were trained on the held-out period too: no hard negatives
            "triplets": cfg.triplets.model_copy(update={"hard_negatives_from": None}),
            "training": training,
        }
    )


def time_split(events: DataFrame, test_fraction: float, triplets: TripletsConfig) -> DataFrame:
    """user_id, video_id, last_ts, held_out (per user, the latest ⌊test_fraction · n⌋ of n distinct
    videos by last watch, ties in hash order), cold (the video's triplet split is cold_test)."""
    latest = events.groupBy("user_id", "video_id").agg(F.max("event_ts").alias("last_ts"))
    videos = assign_splits(
        latest.select("video_id").distinct(),
        triplets,
        read_holdout(latest.sparkSession, triplets.holdout_path),
    )
    latest = latest.join(videos.select("video_id", (F.col("split") == "cold_test").alias("cold")), "video_id")
    # same-second ties (frequent in MovieLens) broken by a hash, not by id order
    tie = F.xxhash64("user_id", "video_id")
    recency = Window.partitionBy("user_id").orderBy(F.desc("last_ts"), F.desc(tie))
    return (
        latest.withColumn("_rank", F.row_number().over(recency))
        .withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy("user_id")))
        .withColumn("held_out", F.col("_rank") <= F.floor(F.col("_n") * F.lit(test_fraction)))
        .drop("_rank", "_n")
    )


def _index(ids: np.ndarray) -> dict[str, int]:
    return {v: i for i, v in enumerate(ids)}


def load_catalog(spark: SparkSession, ecfg: AppConfig) -> Catalog:
    """Workspace tables → Catalog (videos with features, sorted by id)."""
    store = TableStore(spark, ecfg.storage)
    names = [m.name for m in ecfg.features.modalities]
    rows = (
        store.read(video_features_spec(ecfg.features.modalities))
        .join(store.read(VIDEO_SPLITS).select("video_id", "split"), "video_id")
        .join(store.read(VIDEO_STATS).select("video_id", "users"), "video_id", "left")
        .join(store.read(VIDEO_METADATA).select("video_id", "genres"), "video_id", "left")
        .orderBy("video_id")
        .toPandas()
    )
    raw = np.concatenate([np.stack(rows[n]).astype(np.float32) for n in names], axis=1)
    raw /= np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    ids = rows["video_id"].to_numpy()
    index = _index(ids)
    edges = store.read(COWATCH_EDGES).select("video_id", "neighbor_id", "score").toPandas()
    edges = edges[edges["video_id"].isin(index) & edges["neighbor_id"].isin(index)]
    sources, targets = edges["video_id"].map(index).to_numpy(), edges["neighbor_id"].map(index).to_numpy()
    graph = Graph.from_edges(len(ids), sources, targets, edges["score"].to_numpy())
    return Catalog(
        ids=ids,
        split=rows["split"].to_numpy(),
        popularity=rows["users"].fillna(0).to_numpy(dtype=float),
        graph=graph,
        raw=raw,
        genres=[list(g) if g is not None else [] for g in rows["genres"]],
    )


def held_out_neighbours(
    held_out_events: DataFrame, ecfg: AppConfig, index: dict[str, int]
) -> dict[int, set[int]]:
    """Catalog index → indices co-watched with it in the held-out period (graph rule, both directions)."""
    pairs = cowatch_counts(
        kept_history(held_out_events, ecfg.graph.max_history), ecfg.graph.cowatch_window_hours
    )
    strong = (
        pairs.where(F.col("cowatch_users") >= ecfg.graph.min_users).select("video_a", "video_b").toPandas()
    )
    relevant: dict[int, set[int]] = {}
    for a, b in zip(strong["video_a"], strong["video_b"], strict=True):
        if a in index and b in index:
            relevant.setdefault(index[a], set()).add(index[b])
            relevant.setdefault(index[b], set()).add(index[a])
    return relevant


def load_users(split: DataFrame, index: dict[str, int], history: int, min_test_items: int) -> Users:
    """Users with ≥ min_test_items held-out catalog videos: profile (latest training-period watches
    of non-cold videos), every earlier watch (never recommended, cold ones included), held-out set."""
    rows = (
        split.select("user_id", "video_id", F.unix_micros("last_ts").alias("ts"), "held_out", "cold")
        .toPandas()
        .loc[lambda df: df["video_id"].isin(index)]
        .sort_values(["user_id", "ts", "video_id"], ascending=[True, False, False])  # latest first
    )
    user = rows["user_id"].to_numpy()
    item = rows["video_id"].map(index).to_numpy(dtype=int)
    held_out, cold = rows["held_out"].to_numpy(dtype=bool), rows["cold"].to_numpy(dtype=bool)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.array([], dtype=int)
    users = Users([], [], [])
    for start, end in zip(starts, [*starts[1:], len(user)], strict=True):
        own, test_mask = slice(start, end), held_out[start:end]
        test = set(item[own][test_mask].tolist())
        if len(test) >= min_test_items:
            users.history.append(item[own][~(test_mask | cold[own])][:history])
            users.watched.append(item[own][~test_mask])
            users.test.append(test)
    return users


def run_pipeline(
    spark: SparkSession, ecfg: AppConfig, source: DataFrame, split: DataFrame, run_id: str
) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """Training-period pipeline in the workspace (`source`: the dataset's events as read); per fusion:
    method -> (model version, embeddings)."""
    train_events = split.where(~F.col("held_out") & ~F.col("cold")).select("user_id", "video_id")
    ingest_events(spark, ecfg, source.join(train_events, ["user_id", "video_id"], "left_semi"), run_id)
    build_graph(spark, ecfg, run_id)
    ingest_features(spark, ecfg, run_id)
    make_triplets(spark, ecfg, run_id)
    out = {}
    for fusion in ecfg.evaluation.fusions:
        version = f"eval-{ecfg.events.source}-{fusion}-{run_id}"
        fcfg = ecfg.model_copy(
            update={
                "training": ecfg.training.model_copy(update={"fusion": fusion, "model_version": version}),
                "embedding": ecfg.embedding.model_copy(update={"model_version": version}),
            }
        )
        train(spark, fcfg, run_id)
        embed_catalog(spark, fcfg, run_id)
        embeddings, _ = current_embeddings(TableStore(spark, ecfg.storage))
        frame = embeddings.select("video_id", "embedding").toPandas()
        out[f"cdml_{fusion}"] = (version, dict(zip(frame["video_id"], frame["embedding"], strict=True)))
    return out


def evaluate_dataset(
    spark: SparkSession, cfg: AppConfig, dataset: str, run_id: str
) -> tuple[list[dict], dict]:
    """Metric rows (dicts with model_version and dataset) and counts for one dataset."""
    ev, started = cfg.evaluation, time.time()
    ecfg = workspace_config(cfg, dataset)
    source = read_events_source(spark, ecfg).persist()  # read (or generated) once, used three times
    raw_events = validate_events(source, ecfg.events).where(F.col("reason").isNull())
    split = time_split(
        raw_events.select("user_id", "video_id", "event_ts"), ev.test_fraction, ecfg.triplets
    ).persist()
    models = run_pipeline(spark, ecfg, source, split, run_id)
    catalog = load_catalog(spark, ecfg)
    versions = {method: version for method, (version, _) in models.items()}
    vectors = {
        method: np.stack([by_id[v] for v in catalog.ids]).astype(np.float32)
        for method, (_, by_id) in models.items()
    }
    index = _index(catalog.ids)
    held_out = raw_events.join(
        split.where("held_out").select("user_id", "video_id"), ["user_id", "video_id"], "left_semi"
    )
    relevant = held_out_neighbours(held_out, ecfg, index)
    users = load_users(split, index, cfg.recommend.history, ev.min_test_items)
    split.unpersist()
    source.unpersist()
    methods = scorers(catalog, vectors, ev.seed)
    rows: list[MetricRow] = [
        *retrieval(catalog, methods, relevant, ev.ks),
        *recommendation(catalog, methods, users, ev.recommend_k),
        *classification(catalog, vectors, ev.gap_k, ev.seed),
    ]
    counts = {
        "videos": catalog.size,
        "videos_by_split": {s: int((catalog.split == s).sum()) for s in ("train", "validation", "cold_test")},
        "retrieval_queries": len(relevant),
        "users": len(users.test),
        "seconds": round(time.time() - started, 1),
    }
    log.info("evaluate %s: %s", dataset, counts)
    out = [{**asdict(r), "dataset": dataset, "model_version": versions.get(r.method)} for r in rows]
    return out, counts


def _log_mlflow(cfg: AppConfig, metrics: pd.DataFrame, report_dir: str, run_id: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.training.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.training.mlflow.experiment)
    with mlflow.start_run(run_name=f"evaluate-{run_id}"):
        mlflow.log_params({"run_id": run_id, **cfg.evaluation.model_dump()})
        mlflow.log_metrics(
            {
                "/".join(
                    str(x) for x in (r.dataset, r.task, r.method, r.item_split, r.metric, r.k) if pd.notna(x)
                ): r.value
                for r in metrics.itertuples()
            }
        )
        mlflow.log_table(metrics, artifact_file="eval_metrics.json")
        mlflow.log_artifacts(report_dir, artifact_path="report")


def evaluate(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> pd.DataFrame:
    """Job entry: evaluate every configured dataset; replace `eval_metrics`; write the report."""
    ev = cfg.evaluation
    params = {
        k: getattr(cfg, k).model_dump() for k in ("evaluation", "graph", "features", "triplets", "training")
    }
    lineage = Lineage.new("evaluate", params, run_id)
    rows, counts = [], {}
    for dataset in ev.datasets:
        dataset_rows, counts[dataset] = evaluate_dataset(spark, cfg, dataset, lineage.run_id)
        rows += dataset_rows
    metrics = pd.DataFrame(rows)
    store = TableStore(spark, cfg.storage)
    names = [f.name for f in EVAL_METRICS.fields]
    records = [tuple(None if pd.isna(r[n]) else r[n] for n in names) for r in rows]
    schema = T.StructType([T.StructField(f.name, f.dataType, True) for f in EVAL_METRICS.fields])
    store.write(EVAL_METRICS, spark.createDataFrame(records, schema), lineage)
    header = [
        f"run_id `{lineage.run_id}`; table `{store.qualified(EVAL_METRICS)}` v{store.version(EVAL_METRICS)}.",
        f"Protocol: per-user time split (latest {ev.test_fraction:.0%} held out), training-period pipeline per "
        f"dataset, genres {'in' if ev.genres_as_content else 'kept out of'} the content features; see README.",
    ]
    report = write_report(metrics, counts, ev.report_dir, header)
    if cfg.training.mlflow.enabled:
        _log_mlflow(cfg, metrics, ev.report_dir, lineage.run_id)
    log.info("evaluate: %d metric rows in %s; report %s", len(metrics), store.qualified(EVAL_METRICS), report)
    return metrics
