"""`watch_events` + `video_embeddings` → `user_recommendations` (the paper's method).

A user is their `recommend.history` most recently watched distinct videos that have embeddings; a
candidate's score is its mean cosine similarity to them, which for unit vectors is the dot product
with the mean history embedding. Every video the user ever watched is excluded; the top `k` of the
whole catalog are kept (full scoring, exact blocked search — no candidate restriction).
"""

from __future__ import annotations

import logging
import time

from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.serving.embed import current_embeddings
from cdml_spark.serving.top_k import blocked_top_k
from cdml_spark.tables import USER_RECOMMENDATIONS, VIDEO_EMBEDDINGS, WATCH_EVENTS, Lineage, TableStore
from cdml_spark.training.loader import snapshot_files

__all__ = ["recommend"]

log = logging.getLogger(__name__)


def _user_queries(events: DataFrame, embeddings: DataFrame, history: int) -> DataFrame:
    """query_id (user), vector (mean of the recent history's embeddings), exclude (all watched)."""
    latest = events.groupBy("user_id", "video_id").agg(F.max("event_ts").alias("ts"))
    watched = latest.groupBy("user_id").agg(F.collect_list("video_id").alias("exclude"))
    with_emb = latest.join(embeddings.select("video_id", "embedding"), "video_id")
    recency = Window.partitionBy("user_id").orderBy(F.desc("ts"), "video_id")
    recent = with_emb.withColumn("_n", F.row_number().over(recency)).where(F.col("_n") <= history)
    means = recent.groupBy("user_id").agg(Summarizer.mean(array_to_vector("embedding")).alias("mean"))
    return means.join(watched, "user_id").select(
        F.col("user_id").alias("query_id"), vector_to_array("mean", "float32").alias("vector"), "exclude"
    )


def recommend(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> dict:
    """Job entry: replace `user_recommendations`."""
    start = time.time()
    store = TableStore(spark, cfg.storage)
    embeddings, version = current_embeddings(store)
    lineage = Lineage.new(
        "recommend",
        {
            "recommend": cfg.recommend.model_dump(),
            "embeddings": store.version(VIDEO_EMBEDDINGS),
            "watch_events": store.version(WATCH_EVENTS),
        },
        run_id,
    )
    queries = _user_queries(store.read(WATCH_EVENTS), embeddings, cfg.recommend.history)
    files = snapshot_files(spark, store.location(VIDEO_EMBEDDINGS), table=store.qualified(VIDEO_EMBEDDINGS))
    result = blocked_top_k(queries, files, cfg.recommend.k, cfg.neighbors.block_size)
    rows = result.select(
        F.col("query_id").alias("user_id"), F.col("neighbor_id").alias("video_id"), "rank", "score"
    ).withColumn("model_version", F.lit(version))
    store.write(USER_RECOMMENDATIONS, rows, lineage)
    written = store.read(USER_RECOMMENDATIONS)
    users = written.select("user_id").distinct().count()
    seconds = time.time() - start
    log.info(
        "recommend: %s rows for %s users (history %d, k %d) in %.1fs",
        f"{written.count():,}",
        f"{users:,}",
        cfg.recommend.history,
        cfg.recommend.k,
        seconds,
    )
    return {"users": users, "seconds": seconds}
