"""What the training driver prepares besides the triplet files: consistency checks, the in-memory
catalog (train + validation videos), the validation queries and the co-watch pairs a miner must
never pick as negatives."""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.errors import StaleTriplets
from cdml_spark.tables import COWATCH_EDGES, VIDEO_SPLITS, TableSpec, TableStore, video_features_spec
from cdml_spark.training.loader import FeatureTable

__all__ = ["check_inputs", "cowatch_keys", "training_catalog", "validation_queries"]


def check_inputs(store: TableStore, triplets: TableSpec, cfg: AppConfig) -> None:
    """The current `video_features` and `cowatch_edges` must be the versions `make_triplets` read,
    and every video in a triplet must have features; otherwise one line says what to rerun."""
    recorded = store.commit_inputs(triplets)
    features = video_features_spec(cfg.features.modalities)
    if not recorded:
        raise StaleTriplets(
            f"{store.qualified(triplets)} records no input versions (written by an older version): "
            "rerun make_triplets"
        )
    changed = {  # OPTIMIZE/VACUUM commits (jobs/maintain_tables.py) leave an input current
        k: (recorded.get(k), store.version(spec))
        for k, spec in (("video_features", features), ("cowatch_edges", COWATCH_EDGES))
        if not isinstance(recorded.get(k), int) or store.data_changed_since(spec, recorded[k])
    }
    if recorded.get("feature_version") != cfg.features.version:
        changed["feature_version"] = (recorded.get("feature_version"), cfg.features.version)
    if changed:
        detail = ", ".join(f"{k} {old} -> now {new}" for k, (old, new) in changed.items())
        raise StaleTriplets(f"triplets were built from other inputs ({detail}): rerun make_triplets")
    ids = store.read(triplets).select(
        F.explode(F.array("anchor_id", "positive_id", "negative_id")).alias("video_id")
    )
    unknown = ids.distinct().join(store.read(features).select("video_id"), "video_id", "left_anti").limit(3)
    missing = [r["video_id"] for r in unknown.collect()]
    if missing:
        raise StaleTriplets(f"videos in triplets have no features: {missing}: rerun make_triplets")


def _keyed(df: DataFrame, *cols: str) -> DataFrame:
    return df.select(*cols, *[F.xxhash64(c).alias(f"{c}_key") for c in cols])


def training_catalog(store: TableStore, cfg: AppConfig) -> tuple[FeatureTable, np.ndarray]:
    """(features of the train and validation videos sorted by key, their splits)."""
    names = [m.name for m in cfg.features.modalities]
    rows = (
        store.read(video_features_spec(cfg.features.modalities))
        .join(
            store.read(VIDEO_SPLITS).where(F.col("split") != "cold_test").select("video_id", "split"),
            "video_id",
        )
        .select(F.xxhash64("video_id").alias("key"), "video_id", "split", *names)
        .orderBy("key")
        .toPandas()
    )
    table = FeatureTable(
        keys=rows["key"].to_numpy(np.int64),
        vectors={
            n: np.stack(rows[n]).astype(np.float32) if len(rows) else np.zeros((0, 1), np.float32)
            for n in names
        },
    )
    return table, rows["split"].to_numpy(object)


def cowatch_keys(store: TableStore) -> tuple[np.ndarray, np.ndarray]:
    """(video key, neighbour key) of every `cowatch_edges` row."""
    pdf = _keyed(store.read(COWATCH_EDGES), "video_id", "neighbor_id").toPandas()
    return pdf["video_id_key"].to_numpy(np.int64), pdf["neighbor_id_key"].to_numpy(np.int64)


def validation_queries(
    catalog: FeatureTable, splits: np.ndarray, edges: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(query rows, relevant rows per query): validation videos and their co-watch neighbours in the
    catalog (edges in either direction)."""
    left, right = edges
    both_a, both_b = np.concatenate([left, right]), np.concatenate([right, left])
    known = np.isin(both_a, catalog.keys) & np.isin(both_b, catalog.keys)
    rows_a, rows_b = catalog.positions(both_a[known]), catalog.positions(both_b[known])
    pairs = np.unique(np.stack([rows_a, rows_b], axis=1), axis=0) if len(rows_a) else np.zeros((0, 2), int)
    is_query = splits[pairs[:, 0]] == "validation"
    pairs = pairs[is_query]
    queries, starts = np.unique(pairs[:, 0], return_index=True)
    relevant = np.split(pairs[:, 1], starts[1:]) if len(queries) else []
    return queries, relevant
