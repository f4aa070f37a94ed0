"""`neighbors.incremental`: bring `video_neighbors` up to date after some embeddings changed.

Each list records the hash of its query's embedding (`embedding_hash`), so the table itself says
which embeddings it was built from. Against the current `video_embeddings` (same model, same search
settings) a video is *changed* when its embedding is new or differs, *dirty* when its old embedding is
gone (changed or removed). Then:
- a changed video's list, and every list that holds a dirty video, is searched again in full;
- every other list can only gain changed videos: its top-K among the changed videos (exact) is merged
  with the list as it is, and written only where one enters it;
- the lists of removed videos are deleted.
All of it is one MERGE on (video_id, rank). The result equals a full rebuild's (tested); when most
lists would be searched again, the caller rebuilds in full instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.serving.top_k import RESULT_SCHEMA, exact_top_k, one_thread_per_task, result_batch, vectors
from cdml_spark.tables import VIDEO_NEIGHBORS, TableStore

__all__ = ["NeighborUpdate", "entering", "hashed", "merged", "plan_update", "search_settings"]

log = logging.getLogger(__name__)

_COLUMNS = [c.split()[0] for c in RESULT_SCHEMA.split(", ")]
_RESEARCH_SHARE = 0.5  # above this share of lists to search again, a full rebuild is cheaper


@dataclass(frozen=True)
class NeighborUpdate:
    """What changed since the lists were built: `changed` (video_id, embedding) new or different
    embeddings, `research` (video_id) lists to search in full, `removed` (video_id) lists to delete."""

    changed: DataFrame
    research: DataFrame
    removed: DataFrame


def hashed(embeddings: DataFrame) -> DataFrame:
    return embeddings.withColumn("embedding_hash", F.xxhash64("embedding"))


def plan_update(
    store: TableStore, cfg: AppConfig, embeddings: DataFrame, version: str
) -> NeighborUpdate | None:
    """The update of the current `video_neighbors` to `embeddings` (model `version`), or None when a full
    rebuild is due: incremental mode off, no table, another model or search setting, or too many lists."""
    if not (cfg.neighbors.incremental and store.exists(VIDEO_NEIGHBORS)):
        return None
    if store.commit_inputs(VIDEO_NEIGHBORS).get("search") != search_settings(cfg):
        return None
    lists = store.read(VIDEO_NEIGHBORS)
    held = lists.select("video_id", "embedding_hash", "model_version").distinct()
    if [r["model_version"] for r in held.select("model_version").distinct().collect()] != [version]:
        return None
    current = hashed(embeddings).select("video_id", "embedding", "embedding_hash")
    changed = current.join(held, ["video_id", "embedding_hash"], "left_anti").select("video_id", "embedding")
    dirty = held.join(current, ["video_id", "embedding_hash"], "left_anti").select("video_id")
    holding_dirty = lists.join(dirty.withColumnRenamed("video_id", "neighbor_id"), "neighbor_id", "left_semi")
    research = (
        changed.select("video_id")
        .union(holding_dirty.select("video_id"))
        .distinct()
        .join(current, "video_id", "left_semi")
        .persist()
    )
    total, again = current.count(), research.count()
    if again > _RESEARCH_SHARE * total:
        log.info("build_neighbors: %s of %s lists changed: full rebuild", f"{again:,}", f"{total:,}")
        research.unpersist()
        return None
    removed = dirty.join(current, "video_id", "left_anti")
    return NeighborUpdate(changed, research, removed)


def search_settings(cfg: AppConfig) -> dict:
    """The settings a list depends on besides the embeddings (a change means a full rebuild)."""
    return cfg.neighbors.model_dump(exclude={"incremental", "block_size"})


def entering(
    spark: SparkSession, lists: DataFrame, queries: DataFrame, changed: DataFrame, k: int, block_size: int
) -> DataFrame:
    """RESULT_SCHEMA rows of the changed videos that may enter a query's current list (score at least
    its K-th, or the list is shorter than K); `queries` (video_id, embedding): lists not searched again."""
    rows = changed.orderBy("video_id").collect()
    if not rows:
        return spark.createDataFrame([], RESULT_SCHEMA)
    ids = pa.array([r["video_id"] for r in rows], pa.string())
    matrix = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    shared = spark.sparkContext.broadcast((ids, matrix))
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        one_thread_per_task()
        for batch in batches:
            ids, matrix = shared.value
            found = exact_top_k(vectors(batch.column("embedding")), none, matrix, k, block_size)
            yield result_batch(batch.column("video_id"), ids, *found)

    best = queries.select("video_id", "embedding").mapInArrow(task, RESULT_SCHEMA)
    floor = lists.groupBy("video_id").agg(F.count("*").alias("size"), F.min("score").alias("kth"))
    return (
        best.join(floor.withColumnRenamed("video_id", "query_id"), "query_id")
        .where((F.col("size") < k) | (F.col("score") >= F.col("kth")))
        .select(*_COLUMNS)
    )


def merged(lists: DataFrame, gained: DataFrame, k: int) -> DataFrame:
    """RESULT_SCHEMA rows: the top K of each gaining query's current list plus what it gains, by score
    descending then neighbour id (the full search's order)."""
    queries = gained.select("query_id").distinct()
    current = lists.select(F.col("video_id").alias("query_id"), "neighbor_id", "score").join(
        queries, "query_id", "left_semi"
    )
    pool = current.unionByName(gained.select("query_id", "neighbor_id", "score"))
    order = Window.partitionBy("query_id").orderBy(F.desc("score"), "neighbor_id")
    ranked = pool.withColumn("rank", F.row_number().over(order))
    return ranked.where(F.col("rank") <= k).select(*_COLUMNS)
