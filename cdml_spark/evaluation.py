"""Offline evaluation (`jobs/evaluate.py`): for each dataset in `evaluation.datasets` and each protocol
in `evaluation.protocols`, run the real pipeline in a workspace of its own
(`<evaluation.workspace>/<dataset>/<protocol>`) on the protocol's *training events* only, then score
CDML and baselines on what those events did not contain.

`time_split` (retrieval, recommendation, classification):
1. Per user, the latest ⌊test_fraction · n⌋ of their n distinct videos (by last watch time, ties by a
   hash of user and video) are held out; everything earlier is the training period. Cold-test videos
   (the triplet split's hash rule with `evaluation.cold_fraction`) lose all their training-period
   watches, so they are truly cold: no co-watch edges, no popularity, no triplets — only content.
2. The training-period events go through ingest → build_graph → ingest_features (genres kept out of
   the inputs unless `evaluation.genres_as_content`) → make_triplets → train (+ embed) once per fusion.
3. Held-out co-watch graph: the whole `cowatch_edges` rule (window, min_users, cosine top
   `max_neighbors`) on the held-out events. Retrieval: query = a video with held-out neighbours,
   relevant = its top neighbours; warm = split
   train (trained on), cold = split cold_test (never in a triplet).
4. Recommendation: users with ≥ `min_test_items` held-out videos; profile = their `recommend.history`
   latest training-period videos; training-period watches are never recommended.
5. Classification: genres (MovieLens) or latent topic (synthetic), fit on train videos, scored on
   cold_test videos.

`user_holdout` (retrieval only):
1. Users with hash_uniform(`user_holdout.salt`, user_id) < `user_holdout.user_fraction` are held out,
   with all their events. Cold videos: the triplet split rule with `user_holdout.cold_fraction`; they
   have no training event at all.
2. Training events = the other users' events on non-cold videos, through the same pipeline (genres in
   the content features when `user_holdout.genres_as_content`: this protocol scores no genre task).
3. Truth = the held-out users' co-watch graph (same rule, every one of their events, cold videos
   included); retrieval as in the time split (warm = split train watched in training, cold = cold_test).

Nothing is tuned on the truth. The metric definitions are in `cdml_spark.metrics`; methods in
`cdml_spark.eval_tasks`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdml_spark.config import AppConfig, GraphConfig, TripletsConfig, UserHoldoutConfig
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
from cdml_spark.graph import build_graph, graph_edges
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
from cdml_spark.triplets import assign_splits, hash_uniform, make_triplets, read_holdout

log = logging.getLogger(__name__)

Protocol = Literal["time_split", "user_holdout"]


def workspace_config(cfg: AppConfig, dataset: str, protocol: Protocol) -> AppConfig:
    """`cfg` re-pointed at the (dataset, protocol) workspace: its own tables, database and model
    directory, the protocol's cold share (`triplets.cold_fraction`) and content features."""
    ev = cfg.evaluation
    root = os.path.join(ev.workspace, dataset, protocol)
    slug = f"{dataset}_{protocol}".replace("-", "_")
    holdout = protocol == "user_holdout"
    genres = ev.user_holdout.genres_as_content if holdout else ev.genres_as_content
    storage = cfg.storage.model_copy(
        update={
            "database": f"{cfg.storage.database}_eval_{slug}",
            "tables_root": None if cfg.storage.tables_root is None else os.path.join(root, "tables"),
        }
    )
    features = cfg.features.model_copy(
        update={
            "source": "movielens" if dataset in MOVIELENS else "synthetic",
            "genres_as_content": genres,
            "version": f"{cfg.features.version}{'' if genres else '-nogenres'}",
        }
    )
    training = cfg.training.model_copy(
        update={
            "model_dir": os.path.join(root, "models"),
            "checkpoint_dir": os.path.join(root, "checkpoints"),
            "mlflow": cfg.training.mlflow.model_copy(update={"enabled": False}),
        }
    )
    triplets = cfg.triplets.model_copy(
        update={
            "cold_fraction": ev.user_holdout.cold_fraction if holdout else ev.cold_fraction,
            # a previous model's neighbours were trained on the truth too: no hard negatives
            "hard_negatives_from": None,
        }
    )
    return cfg.model_copy(
        update={
            "storage": storage,
            "events": cfg.events.model_copy(update={"source": dataset}),
            "features": features,
            "triplets": triplets,
            "training": training,
        }
    )


def _latest_with_cold(events: DataFrame, triplets: TripletsConfig) -> DataFrame:
    """user_id, video_id, last_ts, cold (the video's triplet split is cold_test)."""
    latest = events.groupBy("user_id", "video_id").agg(F.max("event_ts").alias("last_ts"))
    videos = assign_splits(
        latest.select("video_id").distinct(),
        triplets,
        read_holdout(latest.sparkSession, triplets.holdout_path),
    )
    return latest.join(videos.select("video_id", (F.col("split") == "cold_test").alias("cold")), "video_id")


def time_split(events: DataFrame, test_fraction: float, triplets: TripletsConfig) -> DataFrame:
    """user_id, video_id, last_ts, held_out (per user, the latest ⌊test_fraction · n⌋ of n distinct
    videos by last watch, ties in hash order), cold (the video's triplet split is cold_test)."""
    latest = _latest_with_cold(events, triplets)
    # same-second ties (frequent in MovieLens) broken by a hash, not by id order
    tie = F.xxhash64("user_id", "video_id")
    recency = Window.partitionBy("user_id").orderBy(F.desc("last_ts"), F.desc(tie))
    return (
        latest.withColumn("_rank", F.row_number().over(recency))
        .withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy("user_id")))
        .withColumn("held_out", F.col("_rank") <= F.floor(F.col("_n") * F.lit(test_fraction)))
        .drop("_rank", "_n")
    )


def user_holdout_split(events: DataFrame, params: UserHoldoutConfig, triplets: TripletsConfig) -> DataFrame:
    """user_id, video_id, last_ts, held_out (every pair of a user with hash_uniform(salt, user_id) <
    user_fraction), cold (the triplet split rule with `params.cold_fraction` says cold_test)."""
    rule = triplets.model_copy(update={"cold_fraction": params.cold_fraction})
    held = hash_uniform(F.lit(params.salt), F.col("user_id")) < params.user_fraction
    return _latest_with_cold(events, rule).withColumn("held_out", held)


def protocol_split(events: DataFrame, ecfg: AppConfig, protocol: Protocol) -> DataFrame:
    """The protocol's split of `events` (user_id, video_id, last_ts, held_out, cold)."""
    if protocol == "user_holdout":
        return user_holdout_split(events, ecfg.evaluation.user_holdout, ecfg.triplets)
    return time_split(events, ecfg.evaluation.test_fraction, ecfg.triplets)


def training_events(source: DataFrame, split: DataFrame) -> DataFrame:
    """The rows of `source` whose (user, video) pair is in training: not held out, video not cold."""
    pairs = split.where(~F.col("held_out") & ~F.col("cold")).select("user_id", "video_id")
    return source.join(pairs, ["user_id", "video_id"], "left_semi")


def held_out_events(events: DataFrame, split: DataFrame) -> DataFrame:
    """The rows of `events` whose (user, video) pair is held out (cold videos included)."""
    pairs = split.where(F.col("held_out")).select("user_id", "video_id")
    return events.join(pairs, ["user_id", "video_id"], "left_semi")


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


def held_out_neighbours(events: DataFrame, graph: GraphConfig, index: dict[str, int]) -> dict[int, set[int]]:
    """Truth graph of `events` (the held-out period, or the held-out users): catalog index → the
    indices of its `max_neighbors` best neighbours under the whole `cowatch_edges` rule (kept history,
    window, min_users, cosine ranking). Without the cosine top-N, "co-watched by ≥ min_users" links
    a video to most of the popular catalog: random ranking scored NDCG@10 0.19 on ML-1M."""
    edges = graph_edges(events, graph).select("video_id", "neighbor_id").toPandas()
    relevant: dict[int, set[int]] = {}
    for a, b in zip(edges["video_id"], edges["neighbor_id"], strict=True):
        if a in index and b in index:
            relevant.setdefault(index[a], set()).add(index[b])
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
    spark: SparkSession, ecfg: AppConfig, source: DataFrame, split: DataFrame, protocol: Protocol, run_id: str
) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """The pipeline on the split's training events in the workspace (`source`: the dataset's events as
    read); per fusion: method -> (model version, embeddings)."""
    ingest_events(spark, ecfg, training_events(source, split), run_id)
    build_graph(spark, ecfg, run_id)
    ingest_features(spark, ecfg, run_id)
    make_triplets(spark, ecfg, run_id)
    out = {}
    for fusion in ecfg.evaluation.fusions:
        version = f"eval-{ecfg.events.source}-{protocol}-{fusion}-{run_id}"
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


def _model_vectors(
    models: dict[str, tuple[str, dict[str, np.ndarray]]], catalog: Catalog
) -> dict[str, np.ndarray]:
    """method -> [N, d] embeddings in catalog order."""
    return {
        method: np.stack([by_id[v] for v in catalog.ids]).astype(np.float32)
        for method, (_, by_id) in models.items()
    }


def _users_counts(split: DataFrame) -> dict[str, int]:
    """Held-out and training users of a split (user-held-out protocol)."""
    per_user = split.groupBy("user_id").agg(F.max(F.col("held_out").cast("int")).alias("held"))
    row = per_user.agg(F.count(F.lit(1)).alias("users"), F.sum("held").alias("held")).first()
    held = int(row["held"] or 0)
    return {"held_out_users": held, "training_users": int(row["users"]) - held}


def _score(
    cfg: AppConfig,
    protocol: Protocol,
    catalog: Catalog,
    vectors: dict[str, np.ndarray],
    relevant: dict[int, set[int]],
    split: DataFrame,
) -> tuple[list[MetricRow], dict]:
    """The protocol's tasks and counts: retrieval; plus recommendation and classification for the
    time split (the user-held-out protocol scores retrieval only)."""
    ev = cfg.evaluation
    methods = scorers(catalog, vectors, ev.seed)
    rows = retrieval(catalog, methods, relevant, ev.ks)
    counts = {
        "videos": catalog.size,
        "videos_by_split": {s: int((catalog.split == s).sum()) for s in ("train", "validation", "cold_test")},
        "retrieval_queries": len(relevant),
    }
    if protocol == "user_holdout":
        return rows, {**counts, **_users_counts(split)}
    users = load_users(split, _index(catalog.ids), cfg.recommend.history, ev.min_test_items)
    rows += recommendation(catalog, methods, users, ev.recommend_k)
    rows += classification(catalog, vectors, ev.gap_k, ev.seed)
    return rows, {**counts, "users": len(users.test)}


def evaluate_protocol(
    spark: SparkSession,
    cfg: AppConfig,
    dataset: str,
    protocol: Protocol,
    events: tuple[DataFrame, DataFrame],
    run_id: str,
) -> tuple[list[dict], dict]:
    """Metric rows (dicts with model_version, dataset, protocol) and counts for one (dataset, protocol)
    workspace. `events`: the dataset's events as read, and their valid rows."""
    started = time.time()
    source, valid = events
    ecfg = workspace_config(cfg, dataset, protocol)
    split = protocol_split(valid.select("user_id", "video_id", "event_ts"), ecfg, protocol).persist()
    models = run_pipeline(spark, ecfg, source, split, protocol, run_id)
    catalog = load_catalog(spark, ecfg)
    vectors = _model_vectors(models, catalog)
    relevant = held_out_neighbours(held_out_events(valid, split), ecfg.graph, _index(catalog.ids))
    rows, counts = _score(cfg, protocol, catalog, vectors, relevant, split)
    split.unpersist()
    counts["seconds"] = round(time.time() - started, 1)
    log.info("evaluate %s / %s: %s", dataset, protocol, counts)
    versions = {method: version for method, (version, _) in models.items()}
    meta = {"dataset": dataset, "protocol": protocol}
    return [{**asdict(r), **meta, "model_version": versions.get(r.method)} for r in rows], counts


def evaluate_dataset(
    spark: SparkSession, cfg: AppConfig, dataset: str, run_id: str
) -> tuple[list[dict], dict[str, dict]]:
    """Metric rows and counts (by protocol) of every configured protocol on one dataset; the events
    are read (or generated) once."""
    ecfg = workspace_config(cfg, dataset, cfg.evaluation.protocols[0])
    source = read_events_source(spark, ecfg).persist()
    valid = validate_events(source, ecfg.events).where(F.col("reason").isNull())
    rows, counts = [], {}
    for protocol in cfg.evaluation.protocols:
        protocol_rows, counts[protocol] = evaluate_protocol(
            spark, cfg, dataset, protocol, (source, valid), run_id
        )
        rows += protocol_rows
    source.unpersist()
    return rows, counts


def _log_mlflow(cfg: AppConfig, metrics: pd.DataFrame, report_dir: str, run_id: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.training.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.training.mlflow.experiment)
    keys = ("dataset", "protocol", "task", "method", "item_split", "metric", "k")
    with mlflow.start_run(run_name=f"evaluate-{run_id}"):
        mlflow.log_params({"run_id": run_id, **cfg.evaluation.model_dump()})
        mlflow.log_metrics(
            {
                "/".join(str(r[k]) for k in keys if pd.notna(r[k])): r["value"]
                for r in metrics.to_dict("records")
            }
        )
        mlflow.log_table(metrics, artifact_file="eval_metrics.json")
        mlflow.log_artifacts(report_dir, artifact_path="report")


def _protocol_header(cfg: AppConfig) -> list[str]:
    """One report line per configured protocol."""
    ev, uh = cfg.evaluation, cfg.evaluation.user_holdout
    lines = {
        "time_split": f"time_split: per-user time split (latest {ev.test_fraction:.0%} held out), "
        f"{ev.cold_fraction:.0%} of videos cold, genres {'in' if ev.genres_as_content else 'kept out of'} "
        "the content features; retrieval, recommendation, classification.",
        "user_holdout": f"user_holdout: {uh.user_fraction:.0%} of users held out (salted hash), their co-watch "
        f"graph is the truth; {uh.cold_fraction:.0%} of videos cold (no training event), genres "
        f"{'in' if uh.genres_as_content else 'kept out of'} the content features; retrieval only.",
    }
    return [f"- {lines[p]}" for p in ev.protocols]


def evaluate(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> pd.DataFrame:
    """Job entry: evaluate every configured dataset × protocol; replace `eval_metrics`; write the report."""
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
        "",
        "Protocols (per dataset, each in its own workspace running the real pipeline; see README):",
        *_protocol_header(cfg),
    ]
    report = write_report(metrics, counts, ev.report_dir, header)
    if cfg.training.mlflow.enabled:
        _log_mlflow(cfg, metrics, ev.report_dir, lineage.run_id)
    log.info("evaluate: %d metric rows in %s; report %s", len(metrics), store.qualified(EVAL_METRICS), report)
    return metrics
