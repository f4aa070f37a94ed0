"""`cowatch_edges` + `video_neighbors` → `related_videos`: one ranked list per video, co-watch neighbours
where the video's co-watch support is strong, embedding neighbours where it is not (`blend`).

Candidates of a video: its `cowatch_edges` rows ∪ its `video_neighbors` rows; each is scored with the
exact embedding cosine (the `video_embeddings` snapshot, read once per Python worker) and its co-watch
score (0 outside `cowatch_edges`). A video outside both lists has co-watch score 0 and a cosine below
every listed embedding neighbour, so (with exact neighbours) the `neighbors.k` rows kept are the top
`neighbors.k` of the blend over the whole catalog. Videos in `related.exclude_table` get no
rows and are dropped from every candidate list (a list can then be shorter)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.errors import InputSchemaError
from cdml_spark.serving.blend import blend, cowatch_weight
from cdml_spark.serving.embed import current_embeddings
from cdml_spark.serving.top_k import candidate_matrix
from cdml_spark.tables import (
    COWATCH_EDGES,
    RELATED_VIDEOS,
    VIDEO_EMBEDDINGS,
    VIDEO_NEIGHBORS,
    VIDEO_STATS,
    Lineage,
    TableStore,
)
from cdml_spark.training.loader import snapshot_files

__all__ = ["build_related", "related_candidates"]

log = logging.getLogger(__name__)

_SCORED = "video_id string, neighbor_id string, score double, source string, cowatch_weight double"


def related_candidates(store: TableStore, exclude: DataFrame | None) -> DataFrame:
    """video_id, neighbor_id, cowatch (0 outside cowatch_edges), support (user_days, 0 if none),
    source (cowatch / embedding / both); pairs naming a video of `exclude` (video_id) dropped."""
    cowatch = store.read(COWATCH_EDGES).select(
        "video_id", "neighbor_id", F.col("score").alias("cowatch"), F.lit(True).alias("in_cowatch")
    )
    embedding = store.read(VIDEO_NEIGHBORS).select(
        "video_id", "neighbor_id", F.lit(True).alias("in_embedding")
    )
    support = store.read(VIDEO_STATS).select("video_id", F.col("user_days").alias("support"))
    pairs = (
        cowatch.join(embedding, ["video_id", "neighbor_id"], "full")
        .join(support, "video_id", "left")
        .select(
            "video_id",
            "neighbor_id",
            F.coalesce("cowatch", F.lit(0.0)).alias("cowatch"),
            F.coalesce("support", F.lit(0)).alias("support"),
            F.when(F.col("in_cowatch") & F.col("in_embedding"), "both")
            .when(F.col("in_cowatch"), "cowatch")
            .otherwise("embedding")
            .alias("source"),
        )
    )
    if exclude is None:
        return pairs
    for column in ("video_id", "neighbor_id"):
        pairs = pairs.join(exclude.select(F.col("video_id").alias(column)), column, "left_anti")
    return pairs


def _excluded(spark: SparkSession, table: str | None) -> DataFrame | None:
    """The distinct ids of `related.exclude_table` (None when unset)."""
    if table is None:
        return None
    rows = spark.table(table)
    if "video_id" not in rows.columns:
        raise InputSchemaError(
            f"related.exclude_table {table} has no video_id column (columns: {rows.columns})"
        )
    return rows.select(F.col("video_id").cast("string")).where(F.col("video_id").isNotNull()).distinct()


def _scored(pairs: DataFrame, files: tuple[str, ...], half_weight: float) -> DataFrame:
    """`pairs` with the blended score and w(s), from the embedding snapshot in `files` (pairs naming a
    video without an embedding are dropped)."""

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids, matrix = candidate_matrix(files)
            rows = pc.index_in(batch.column("video_id"), value_set=ids)
            cols = pc.index_in(batch.column("neighbor_id"), value_set=ids)
            known = pc.and_(rows.is_valid(), cols.is_valid())
            batch, rows, cols = batch.filter(known), rows.filter(known), cols.filter(known)
            a, b = rows.to_numpy(zero_copy_only=False), cols.to_numpy(zero_copy_only=False)
            cosine = np.einsum("ij,ij->i", matrix[a], matrix[b])
            support = batch.column("support").to_numpy(zero_copy_only=False)
            cowatch = batch.column("cowatch").to_numpy(zero_copy_only=False)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("video_id"),
                    batch.column("neighbor_id"),
                    pa.array(blend(cowatch, cosine, support, half_weight)),
                    batch.column("source"),
                    pa.array(cowatch_weight(support, half_weight)),
                ],
                names=["video_id", "neighbor_id", "score", "source", "cowatch_weight"],
            )

    return pairs.mapInArrow(task, _SCORED)


def build_related(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> dict:
    """Job entry: replace `related_videos` from the current co-watch graph, embeddings and neighbours."""
    start, related = time.time(), cfg.related
    store = TableStore(spark, cfg.storage)
    _, version = current_embeddings(store)
    inputs = (COWATCH_EDGES, VIDEO_STATS, VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS)
    lineage = Lineage.new(
        "build_related",
        {"related": related.model_dump(), **{t.name: store.version(t) for t in inputs}},
        run_id,
    )
    files = snapshot_files(spark, store.location(VIDEO_EMBEDDINGS), table=store.qualified(VIDEO_EMBEDDINGS))
    pairs = related_candidates(store, _excluded(spark, related.exclude_table))
    order = Window.partitionBy("video_id").orderBy(F.desc("score"), "neighbor_id")
    rows = (
        _scored(pairs, tuple(files), related.support_half_weight)
        .withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= cfg.neighbors.k)
        .withColumn("model_version", F.lit(version))
    )
    count = store.write(RELATED_VIDEOS, rows, lineage)
    sources = {
        r["source"]: r["count"] for r in store.read(RELATED_VIDEOS).groupBy("source").count().collect()
    }
    seconds = time.time() - start
    log.info("build_related: %s rows (by source %s) in %.1fs", f"{count:,}", sources, seconds)
    return {"rows": count, "sources": sources, "seconds": seconds}
