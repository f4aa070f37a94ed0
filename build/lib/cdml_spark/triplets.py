"""`cowatch_edges` + `video_features` → `video_splits` + `triplets`.

Negatives are sampled here, once per make_triplets run (`triplets.negative_sampling`,
`negatives_per_positive`, `popularity_beta`, `negative_oversample`, `hard_negatives_*`); at training
time the in-batch miner (`training.miner`, `cdml_spark/training/mining.py`) re-picks them from each
step's pool, under the same co-watch rule.

- Split: a video's split comes from u = xxhash64(split_salt, video_id) mapped to [0, 1):
  u < cold_fraction → cold_test; < cold + validation → validation; else train. Ids in the
  optional holdout file are cold_test whatever their hash. Only videos with features get a split.
- Positives: for each anchor in train (validation), its co-watch edges to train (train or
  validation) videos; up to `positives_per_anchor` drawn without replacement with probability
  ∝ edge weight (Efraimidis–Spirakis keys −ln(u)/w, smallest first).
- Negatives: `negatives_per_positive` per (anchor, positive), drawn from the same candidate videos
  uniformly or ∝ (users + 1)^β; never the anchor, the positive, or any video joined to the anchor
  by a `cowatch_edges` row (either direction): `negative_oversample` candidates are drawn per
  negative wanted, then filtered (a pair left short gets fewer negatives).
- Hard negatives (optional): with `hard_negatives_from` set to a previous model's `video_neighbors`
  table (its version is recorded with the triplets' inputs), up to `hard_negatives_per_positive`
  of the negatives are the anchor's embedding neighbours under that model (same rules: allowed
  split, not a co-watch neighbour), the rest random.
- All randomness is a hash of (seed, ids, draw index), so the same inputs and seed give the same
  triplets whatever the partitioning. Cold-test videos never appear in any triplet.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
from pyspark import Broadcast
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig, TripletsConfig
from cdml_spark.tables import (
    COWATCH_EDGES,
    VIDEO_NEIGHBORS,
    VIDEO_SPLITS,
    VIDEO_STATS,
    Lineage,
    TableStore,
    triplets_spec,
    video_features_spec,
)

__all__ = ["assign_splits", "hash_uniform", "make_triplets", "read_holdout"]

log = logging.getLogger(__name__)

_TRIPLET_FILES = 8
_MASK53 = (1 << 53) - 1


def hash_uniform(*cols: Column) -> Column:
    """Deterministic uniform [0, 1) from the hash of the given columns."""
    return F.xxhash64(*cols).bitwiseAND(F.lit(_MASK53)).cast("double") / float(1 << 53)


def assign_splits(videos: DataFrame, cfg: TripletsConfig, holdout: DataFrame | None) -> DataFrame:
    """video_id, split for each id in `videos`."""
    u = hash_uniform(F.lit(cfg.split_salt), F.col("video_id"))
    split = (
        F.when(u < cfg.cold_fraction, "cold_test")
        .when(u < cfg.cold_fraction + cfg.validation_fraction, "validation")
        .otherwise("train")
    )
    out = videos.select("video_id").withColumn("split", split)
    if holdout is not None:
        held = holdout.select("video_id").distinct().withColumn("_held", F.lit(True))
        out = out.join(held, "video_id", "left").select(
            "video_id", F.when(F.col("_held"), "cold_test").otherwise(F.col("split")).alias("split")
        )
    return out


def read_holdout(spark: SparkSession, path: str | None) -> DataFrame | None:
    if path is None:
        return None
    if not os.path.exists(path):
        raise FileNotFoundError(f"triplets.holdout_path {path} does not exist")
    lines = spark.read.text(path).select(F.trim("value").alias("video_id"))
    return lines.where(F.col("video_id") != "")


def _sample_positives(edges: DataFrame, splits: DataFrame, cfg: TripletsConfig) -> DataFrame:
    """anchor_id, positive_id, edge_weight, split: weighted sample of each anchor's edges."""
    anchor = splits.select(F.col("video_id").alias("anchor_id"), F.col("split"))
    positive = splits.select(F.col("video_id").alias("positive_id"), F.col("split").alias("_ps"))
    pairs = (
        edges.select(
            F.col("video_id").alias("anchor_id"),
            F.col("neighbor_id").alias("positive_id"),
            F.col(cfg.weight).cast("double").alias("edge_weight"),
        )
        .join(anchor, "anchor_id")
        .join(positive, "positive_id")
        .where(
            ((F.col("split") == "train") & (F.col("_ps") == "train"))
            | ((F.col("split") == "validation") & (F.col("_ps") != "cold_test"))
        )
        .where(F.col("edge_weight") > 0)
    )
    key = -F.log(hash_uniform(F.lit(cfg.seed), F.lit("pos"), "anchor_id", "positive_id") + 1e-300) / F.col(
        "edge_weight"
    )
    order = Window.partitionBy("anchor_id").orderBy(key, "positive_id")
    ranked = pairs.withColumn("_n", F.row_number().over(order))
    return ranked.where(F.col("_n") <= cfg.positives_per_anchor).select(
        "anchor_id", "positive_id", "edge_weight", "split"
    )


def _candidate_table(candidates: DataFrame, cfg: TripletsConfig) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted, cumulative sampling distribution) of the negative candidates (driver-side)."""
    pdf = candidates.select("video_id", "users").orderBy("video_id").toPandas()
    if cfg.negative_sampling == "uniform":
        weights = np.ones(len(pdf))
    else:
        weights = (pdf["users"].to_numpy(dtype=np.float64) + 1.0) ** cfg.popularity_beta
    cdf = np.cumsum(weights)
    return pdf["video_id"].to_numpy(dtype=object), cdf / cdf[-1]


def _inverse_cdf_sampler(table: Broadcast):
    """pandas UDF: uniform u in [0, 1) → the candidate id whose cumulative-weight slot holds u."""

    @F.pandas_udf("string")
    def draw(u: pd.Series) -> pd.Series:
        ids, cdf = table.value
        idx = np.minimum(np.searchsorted(cdf, u.to_numpy(), side="right"), len(ids) - 1)
        return pd.Series(ids[idx])

    return draw


def _hard_candidates(
    positives: DataFrame, splits: DataFrame, previous: DataFrame, cfg: TripletsConfig
) -> DataFrame:
    """Up to `hard_negatives_per_positive` of the anchor's neighbours in a previous model's
    `video_neighbors`, as draws with negative `_j` (so they are preferred), from allowed splits."""
    allowed = splits.select(F.col("video_id").alias("negative_id"), F.col("split").alias("_ns"))
    hard = (
        positives.join(
            previous.select(F.col("video_id").alias("anchor_id"), F.col("neighbor_id").alias("negative_id")),
            "anchor_id",
        )
        .join(allowed, "negative_id")
        .where(
            (F.col("_ns") == "train") | ((F.col("split") == "validation") & (F.col("_ns") == "validation"))
        )
    )
    u = hash_uniform(F.lit(cfg.seed), F.lit("hard"), "anchor_id", "positive_id", "negative_id")
    order = Window.partitionBy("anchor_id", "positive_id").orderBy(u, "negative_id")
    return (
        hard.withColumn("_j", -F.row_number().over(order))
        .where(F.col("_j") >= -cfg.hard_negatives_per_positive)
        .drop("_ns")
    )


def _sample_negatives(
    spark: SparkSession,
    positives: DataFrame,
    splits: DataFrame,
    edges: DataFrame,
    cfg: TripletsConfig,
    previous_neighbors: DataFrame | None = None,
) -> DataFrame:
    """Adds negative_id: `negatives_per_positive` rows per positive (see module docstring)."""
    parts = (
        [] if previous_neighbors is None else [_hard_candidates(positives, splits, previous_neighbors, cfg)]
    )
    for split, allowed in (("train", ["train"]), ("validation", ["train", "validation"])):
        ids, cdf = _candidate_table(splits.where(F.col("split").isin(allowed)), cfg)
        if len(ids) == 0:
            continue
        draw = _inverse_cdf_sampler(spark.sparkContext.broadcast((ids, cdf)))
        draws = F.explode(
            F.sequence(F.lit(0), F.lit(cfg.negatives_per_positive * cfg.negative_oversample - 1))
        )
        cand = positives.where(F.col("split") == split).select("*", draws.alias("_j"))
        u = hash_uniform(F.lit(cfg.seed), F.lit("neg"), "anchor_id", "positive_id", "_j")
        parts.append(cand.withColumn("negative_id", draw(u)))
    if not parts:
        return positives.withColumn("negative_id", F.lit(None).cast("string")).limit(0)
    cand = parts[0]
    for part in parts[1:]:
        cand = cand.unionByName(part)
    neighbours = edges.select(F.col("video_id").alias("anchor_id"), F.col("neighbor_id").alias("negative_id"))
    neighbours = neighbours.unionByName(
        edges.select(F.col("neighbor_id").alias("anchor_id"), F.col("video_id").alias("negative_id"))
    ).distinct()
    clean = cand.where(
        (F.col("negative_id") != F.col("anchor_id")) & (F.col("negative_id") != F.col("positive_id"))
    )
    clean = clean.join(neighbours, ["anchor_id", "negative_id"], "left_anti")
    # a repeated draw of the same negative for one (anchor, positive) counts once
    first = Window.partitionBy("anchor_id", "positive_id", "negative_id").orderBy("_j")
    clean = clean.withColumn("_first", F.row_number().over(first)).where(F.col("_first") == 1)
    keep = Window.partitionBy("anchor_id", "positive_id").orderBy("_j")
    return (
        clean.withColumn("_k", F.row_number().over(keep))
        .where(F.col("_k") <= cfg.negatives_per_positive)
        .drop("_j", "_k", "_first")
    )


def _materialize(triplets: DataFrame, features: DataFrame, names: list[str]) -> DataFrame:
    """Join the three videos' vectors: anchor_<m>, positive_<m>, negative_<m> per modality."""
    out = triplets
    for role in ("anchor", "positive", "negative"):
        renamed = features.select(
            F.col("video_id").alias(f"{role}_id"), *[F.col(n).alias(f"{role}_{n}") for n in names]
        )
        out = out.join(renamed, f"{role}_id")
    return out


def make_triplets(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> dict:
    """Job entry: write `video_splits` and `triplets`; log counts and sampling stats."""
    start = time.time()
    tcfg, modalities = cfg.triplets, cfg.features.modalities
    store = TableStore(spark, cfg.storage)
    features_spec = video_features_spec(modalities)
    features = store.read(features_spec)
    names = [m.name for m in modalities]
    missing = [n for n in names if n not in features.columns]
    if missing:
        raise FileNotFoundError(f"video_features lacks modalities {missing}: rerun ingest_features")
    edges = store.read(COWATCH_EDGES)
    inputs = {
        "cowatch_edges": store.version(COWATCH_EDGES),
        "video_features": store.version(features_spec),
        "feature_version": cfg.features.version,
    }
    previous = None
    if tcfg.hard_negatives_from:
        previous, version = store.read_external(VIDEO_NEIGHBORS, tcfg.hard_negatives_from)
        inputs["hard_negatives_from"] = {"path": tcfg.hard_negatives_from, "version": version}
        log.info(
            "make_triplets: up to %d hard negatives per positive from %s (v%d)",
            tcfg.hard_negatives_per_positive,
            tcfg.hard_negatives_from,
            version,
        )
    lineage = Lineage.new(
        "make_triplets",
        {"triplets": tcfg.model_dump(), "modalities": [m.model_dump() for m in modalities], "inputs": inputs},
        run_id,
    )

    users = store.read(VIDEO_STATS).select("video_id", "users")
    splits = assign_splits(features, tcfg, read_holdout(spark, tcfg.holdout_path))
    splits = splits.join(users, "video_id", "left").fillna(0, subset=["users"])
    store.write(VIDEO_SPLITS, splits, lineage)
    splits = store.read(VIDEO_SPLITS)

    positives = _sample_positives(edges, splits, tcfg)
    triplets = _sample_negatives(spark, positives, splits, edges, tcfg, previous)
    spec = triplets_spec(modalities, tcfg.materialize_features)
    if tcfg.materialize_features:
        triplets = _materialize(triplets, features, names)
    triplets = triplets.select(
        "*", *[F.xxhash64(f"{role}_id").alias(f"{role}_key") for role in ("anchor", "positive", "negative")]
    )
    # round-robin into >= _TRIPLET_FILES files per split: Petastorm shards row groups across ranks
    triplets = triplets.repartition(max(_TRIPLET_FILES, cfg.spark.shuffle_partitions))
    store.write(spec, triplets, lineage, inputs)

    written = store.read(spec)
    by_split = {r["split"]: r["count"] for r in written.groupBy("split").count().collect()}
    split_sizes = {r["split"]: r["count"] for r in splits.groupBy("split").count().collect()}
    feature_ids = splits.select("video_id")
    edges_total = edges.count()
    edges_without = (
        edges.join(feature_ids, "video_id", "left_anti").count()
        + edges.join(
            feature_ids.withColumnRenamed("video_id", "neighbor_id"), "neighbor_id", "left_anti"
        ).count()
    )
    pop = written.join(users.withColumnRenamed("video_id", "positive_id"), "positive_id", "left").agg(
        F.avg("users").alias("positive_users")
    )
    neg = written.join(users.withColumnRenamed("video_id", "negative_id"), "negative_id", "left").agg(
        F.avg("users").alias("negative_users")
    )
    stats = {
        "videos_by_split": split_sizes,
        "triplets_by_split": by_split,
        "anchors": written.select("anchor_id").distinct().count(),
        "edges": edges_total,
        "edge_rows_dropped_no_features": edges_without,
        "mean_users_positive": pop.first()["positive_users"],
        "mean_users_negative": neg.first()["negative_users"],
        "seconds": time.time() - start,
    }
    log.info("make_triplets: %s", stats)
    return stats
