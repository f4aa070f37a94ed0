"""Evaluation protocols: the train/held-out splits (time split, user hold-out), their workspaces, the
held-out truth (co-watch graph, users) and the catalog the tasks rank. Described in `evaluation.run`."""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig, GraphConfig, TripletsConfig, UserHoldoutConfig
from cdml_spark.datasets import MOVIELENS
from cdml_spark.evaluation.tasks import (
    Catalog,
    Graph,
    Users,
)
from cdml_spark.graph import graph_edges
from cdml_spark.tables import (
    COWATCH_EDGES,
    VIDEO_METADATA,
    VIDEO_SPLITS,
    VIDEO_STATS,
    TableStore,
    video_features_spec,
)
from cdml_spark.triplets import assign_splits, hash_uniform, read_holdout

__all__ = [
    "Protocol",
    "catalog_graph",
    "held_out_events",
    "held_out_neighbours",
    "index_of",
    "load_catalog",
    "load_users",
    "protocol_split",
    "time_split",
    "training_events",
    "user_holdout_split",
    "workspace_config",
]


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
            # the protocol reads the whole dataset and builds its graph from scratch, whatever the
            # scheduled (daily, incremental) configuration says
            "events": cfg.events.model_copy(update={"source": dataset, "mode": "replace", "dates": None}),
            "graph": cfg.graph.model_copy(update={"mode": "full", "window_days": None, "as_of": None}),
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


def index_of(ids: np.ndarray) -> dict[str, int]:
    return {v: i for i, v in enumerate(ids)}


def load_catalog(spark: SparkSession, ecfg: AppConfig) -> Catalog:
    """Workspace tables → Catalog (videos with features, sorted by id)."""
    store = TableStore(spark, ecfg.storage)
    names = [m.name for m in ecfg.features.modalities]
    rows = (
        store.read(video_features_spec(ecfg.features.modalities))
        .join(store.read(VIDEO_SPLITS).select("video_id", "split"), "video_id")
        .join(store.read(VIDEO_STATS).select("video_id", "users", "user_days"), "video_id", "left")
        .join(store.read(VIDEO_METADATA).select("video_id", "genres"), "video_id", "left")
        .orderBy("video_id")
        .toPandas()
    )
    raw = np.concatenate([np.stack(rows[n]).astype(np.float32) for n in names], axis=1)
    raw /= np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    ids = rows["video_id"].to_numpy()
    index = index_of(ids)
    graph = catalog_graph(store.read(COWATCH_EDGES), index)
    return Catalog(
        ids=ids,
        split=rows["split"].to_numpy(),
        popularity=rows["users"].fillna(0).to_numpy(dtype=float),
        support=rows["user_days"].fillna(0).to_numpy(dtype=float),
        graph=graph,
        raw=raw,
        genres=[list(g) if g is not None else [] for g in rows["genres"]],
    )


def catalog_graph(edges: DataFrame, index: dict[str, int]) -> Graph:
    """`Graph` of the rows of `edges` (video_id, neighbor_id, score) whose two videos are in `index`."""
    rows = edges.select("video_id", "neighbor_id", "score").toPandas()
    rows = rows[rows["video_id"].isin(index) & rows["neighbor_id"].isin(index)]
    sources, targets = rows["video_id"].map(index).to_numpy(), rows["neighbor_id"].map(index).to_numpy()
    return Graph.from_edges(len(index), sources, targets, rows["score"].to_numpy())


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
