"""`video_embeddings` → `video_neighbors`: top-K by cosine for every video, exact (blocked) or ANN
(faiss HNSW/IVF built once on the driver, broadcast, queried per partition). ANN mode measures its
recall@K against exact search on a sample of queries and logs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.serving.embed import current_embeddings
from cdml_spark.serving.top_k import (
    RESULT_SCHEMA,
    ann_recall,
    ann_search,
    blocked_top_k,
    build_faiss_index,
    cached_index,
    exact_top_k,
)
from cdml_spark.tables import VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS, Lineage, TableStore
from cdml_spark.training.loader import snapshot_files

__all__ = ["build_neighbors"]

log = logging.getLogger(__name__)


def _ann_neighbors(spark: SparkSession, cfg: AppConfig, embeddings) -> tuple[object, float]:
    ann, k = cfg.neighbors.ann, cfg.neighbors.k
    pdf = embeddings.select("video_id", "embedding").orderBy("video_id").toPandas()
    ids = pdf["video_id"].to_numpy(dtype=object)
    matrix = np.stack(pdf["embedding"]).astype(np.float32)
    started = time.time()
    index = build_faiss_index(matrix, ann.index, ann.hnsw_m, ann.ivf_lists)
    log.info(
        "build_neighbors: faiss %s index over %s vectors in %.1fs",
        ann.index,
        f"{len(ids):,}",
        time.time() - started,
    )

    sample = np.random.default_rng(0).permutation(len(ids))[: ann.recall_sample]
    approx, _ = ann_search(index, matrix[sample], k + 1, ann.ef_search, ann.ivf_probe)
    approx_ids = [
        [ids[p] for p in row if p >= 0 and p != q][:k] for row, q in zip(approx, sample, strict=False)
    ]
    exact, _ = exact_top_k(matrix[sample], [{ids[q]} for q in sample], [(ids, matrix)], k)
    recall = ann_recall(np.array(approx_ids, dtype=object), exact)
    log.info("build_neighbors: ANN recall@%d vs exact on %d queries = %.4f", k, len(sample), recall)

    import faiss

    blob = spark.sparkContext.broadcast(faiss.serialize_index(index))
    id_table = spark.sparkContext.broadcast(ids)

    def task(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            q = np.stack(batch["embedding"]).astype(np.float32)
            positions, scores = ann_search(cached_index(blob), q, k + 1, ann.ef_search, ann.ivf_probe)
            rows = []
            for qid, pos_row, score_row in zip(batch["video_id"], positions, scores, strict=False):
                found = [(id_table.value[p], s) for p, s in zip(pos_row, score_row, strict=False) if p >= 0]
                found = [(n, s) for n, s in found if n != qid][:k]
                rows += [(qid, n, r + 1, float(s)) for r, (n, s) in enumerate(found)]
            yield pd.DataFrame(rows, columns=["query_id", "neighbor_id", "rank", "score"])

    return embeddings.select("video_id", "embedding").mapInPandas(task, RESULT_SCHEMA), recall


def build_neighbors(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> dict:
    """Job entry: replace `video_neighbors` from the current `video_embeddings`."""
    start = time.time()
    store = TableStore(spark, cfg.storage)
    embeddings, version = current_embeddings(store)
    lineage = Lineage.new(
        "build_neighbors",
        {"neighbors": cfg.neighbors.model_dump(), "embeddings": store.version(VIDEO_EMBEDDINGS)},
        run_id,
    )
    recall = None
    if cfg.neighbors.mode == "exact":
        queries = embeddings.select(
            F.col("video_id").alias("query_id"),
            F.col("embedding").alias("vector"),
            F.array("video_id").alias("exclude"),
        )
        files = snapshot_files(
            spark, store.location(VIDEO_EMBEDDINGS), table=store.qualified(VIDEO_EMBEDDINGS)
        )
        result = blocked_top_k(spark, queries, files, cfg.neighbors.k, cfg.neighbors.block_size)
    else:
        result, recall = _ann_neighbors(spark, cfg, embeddings)
    rows = result.select(F.col("query_id").alias("video_id"), "neighbor_id", "rank", "score").withColumn(
        "model_version", F.lit(version)
    )
    store.write(VIDEO_NEIGHBORS, rows, lineage)
    count = store.read(VIDEO_NEIGHBORS).count()
    seconds = time.time() - start
    log.info(
        "build_neighbors: %s rows (%s mode, k=%d) in %.1fs",
        f"{count:,}",
        cfg.neighbors.mode,
        cfg.neighbors.k,
        seconds,
    )
    return {"rows": count, "mode": cfg.neighbors.mode, "recall": recall, "seconds": seconds}
