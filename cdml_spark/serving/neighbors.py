"""`video_embeddings` → `video_neighbors`: top-K by cosine for every video, exact (blocked) or ANN
(faiss HNSW/IVF built once on the driver, broadcast, queried per partition). ANN mode measures its
recall@K against exact search on a sample of queries and logs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.serving.embed import current_embeddings
from cdml_spark.serving.neighbor_updates import (
    NeighborUpdate,
    entering,
    hashed,
    merged,
    plan_update,
    search_settings,
)
from cdml_spark.serving.top_k import (
    RESULT_SCHEMA,
    ann_recall,
    ann_top_k,
    blocked_top_k,
    build_faiss_index,
    cached_index,
    candidate_matrix,
    exact_top_k,
    result_batch,
    vectors,
)
from cdml_spark.tables import VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS, Lineage, TableStore
from cdml_spark.training.loader import snapshot_files

__all__ = ["build_neighbors", "neighbor_search"]

log = logging.getLogger(__name__)


def _valid(positions: np.ndarray) -> list[np.ndarray]:
    return [row[row >= 0] for row in positions]


def _ann_neighbors(
    spark: SparkSession, cfg: AppConfig, embeddings: DataFrame, files: list[str]
) -> tuple[DataFrame, float]:
    ann, k = cfg.neighbors.ann, cfg.neighbors.k
    ids, matrix = candidate_matrix(tuple(files))
    started = time.time()
    index = build_faiss_index(matrix, ann.index, ann.hnsw_m, ann.ivf_lists)
    log.info(
        "build_neighbors: faiss %s index over %s vectors in %.1fs",
        ann.index,
        f"{len(ids):,}",
        time.time() - started,
    )

    sample = np.random.default_rng(0).permutation(len(ids))[: ann.recall_sample]
    itself = (np.arange(len(sample)), sample)
    approx, _ = ann_top_k(index, matrix[sample], itself, k, ann.ef_search, ann.ivf_probe)
    exact, _ = exact_top_k(matrix[sample], itself, matrix, k, cfg.neighbors.block_size)
    recall = ann_recall(_valid(approx), _valid(exact))
    log.info("build_neighbors: ANN recall@%d vs exact on %d queries = %.4f", k, len(sample), recall)

    import faiss

    blob = spark.sparkContext.broadcast(faiss.serialize_index(index))
    id_table = spark.sparkContext.broadcast(ids)

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            query_ids = batch.column("video_id")
            own = pc.index_in(query_ids, value_set=id_table.value).fill_null(-1).to_numpy()
            positions, scores = ann_top_k(
                cached_index(blob),
                vectors(batch.column("embedding")),
                (np.arange(len(own)), own.astype(np.int64)),
                k,
                ann.ef_search,
                ann.ivf_probe,
            )
            yield result_batch(query_ids, id_table.value, positions, scores)

    return embeddings.select("video_id", "embedding").mapInArrow(task, RESULT_SCHEMA), recall


def neighbor_search(
    spark: SparkSession, cfg: AppConfig, store: TableStore, embeddings: DataFrame
) -> tuple[DataFrame, float | None]:
    """(RESULT_SCHEMA rows: every video's top-K among `embeddings`, ANN recall or None). Exact mode is
    lazy; ANN mode builds its index and measures recall here, its search stays lazy."""
    files = snapshot_files(spark, store.location(VIDEO_EMBEDDINGS), table=store.qualified(VIDEO_EMBEDDINGS))
    if cfg.neighbors.mode == "ann":
        return _ann_neighbors(spark, cfg, embeddings, files)
    queries = embeddings.select(
        F.col("video_id").alias("query_id"),
        F.col("embedding").alias("vector"),
        F.array("video_id").alias("exclude"),
    )
    return blocked_top_k(queries, files, cfg.neighbors.k, cfg.neighbors.block_size), None


def build_neighbors(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> dict:
    """Job entry: `video_neighbors` of the current `video_embeddings`: rebuilt in full, or (same model
    and search settings, `neighbors.incremental`) updated where embeddings changed (neighbor_updates)."""
    start = time.time()
    store = TableStore(spark, cfg.storage)
    embeddings, version = current_embeddings(store)
    embeddings_version = store.version(VIDEO_EMBEDDINGS)
    lineage = Lineage.new(
        "build_neighbors", {"neighbors": cfg.neighbors.model_dump(), "embeddings": embeddings_version}, run_id
    )
    inputs = {"search": search_settings(cfg), "embeddings_version": embeddings_version}
    update = plan_update(store, cfg, embeddings, version)
    recall = None
    if update is None:
        result, recall = neighbor_search(spark, cfg, store, embeddings)
        store.write(VIDEO_NEIGHBORS, _rows(result, embeddings, version), lineage, inputs=inputs)
    else:
        _apply(spark, cfg, store, embeddings, version, update, lineage, inputs)
    count = store.read(VIDEO_NEIGHBORS).count()
    seconds = time.time() - start
    log.info(
        "build_neighbors: %s rows (%s mode, k=%d, %s) in %.1fs",
        f"{count:,}",
        cfg.neighbors.mode,
        cfg.neighbors.k,
        "full rebuild" if update is None else "incremental",
        seconds,
    )
    return {
        "rows": count,
        "mode": cfg.neighbors.mode,
        "update": "full" if update is None else "incremental",
        "recall": recall,
        "seconds": seconds,
    }


def _rows(result: DataFrame, embeddings: DataFrame, version: str) -> DataFrame:
    """`video_neighbors` rows from RESULT_SCHEMA rows, with the query's embedding hash."""
    return result.join(
        hashed(embeddings).select(F.col("video_id").alias("query_id"), "embedding_hash"), "query_id"
    ).select(
        F.col("query_id").alias("video_id"),
        "neighbor_id",
        "rank",
        "score",
        F.lit(version).alias("model_version"),
        "embedding_hash",
    )


def _apply(
    spark: SparkSession,
    cfg: AppConfig,
    store: TableStore,
    embeddings: DataFrame,
    version: str,
    update: NeighborUpdate,
    lineage: Lineage,
    inputs: dict,
) -> None:
    """Search `update.research` again, merge the changed videos into the other lists they enter, delete
    the removed videos' lists and the ranks a list no longer fills: one MERGE."""
    k = cfg.neighbors.k
    lists = store.read(VIDEO_NEIGHBORS)
    searched, _ = neighbor_search(
        spark, cfg, store, embeddings.join(update.research, "video_id", "left_semi")
    )
    others = embeddings.join(update.research, "video_id", "left_anti")
    gained = entering(
        spark,
        lists.join(others, "video_id", "left_semi"),
        others,
        update.changed,
        k,
        cfg.neighbors.block_size,
    )
    rows = _rows(searched.unionByName(merged(lists, gained, k)), embeddings, version).persist()
    stale = lists.join(
        rows.select("video_id").distinct().unionByName(update.removed), "video_id", "left_semi"
    )
    deleted = stale.select("video_id", "rank").join(rows, ["video_id", "rank"], "left_anti")
    store.upsert(VIDEO_NEIGHBORS, rows, lineage, ["video_id", "rank"], deleted=deleted, inputs=inputs)
    rows.unpersist()
    update.research.unpersist()
