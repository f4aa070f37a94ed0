"""What the demo prints at the end: table sizes, quarantine counts, and "videos like X" with titles."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.datasets import MOVIELENS, movielens_items
from cdml_spark.tables import (
    ALL_TABLE_NAMES,
    COWATCH_EDGES,
    VIDEO_STATS,
    WATCH_EVENTS_QUARANTINE,
    TableSpec,
    TableStore,
)

log = logging.getLogger(__name__)


def _titles(spark: SparkSession, cfg: AppConfig) -> DataFrame | None:
    if cfg.events.source not in MOVIELENS:
        return None
    items = movielens_items(spark, cfg.storage.cache_dir, cfg.events.source)
    return items.select(
        "video_id", F.concat_ws(" ", "title", F.concat(F.lit("("), "year", F.lit(")"))).alias("title")
    )


def summary(
    spark: SparkSession, cfg: AppConfig, run_id: str | None = None, examples: int = 3, top: int = 5
) -> str:
    """Print (and return) the summary of the tables that exist."""
    store = TableStore(spark, cfg.storage)
    lines = ["tables:"]
    for spec in map(TableSpec, ALL_TABLE_NAMES):
        if store.exists(spec):
            lines.append(
                f"  {store.qualified(spec):<32} {store.read(spec).count():>12,} rows  (v{store.version(spec)})"
            )
    if store.exists(WATCH_EVENTS_QUARANTINE):
        for row in store.read(WATCH_EVENTS_QUARANTINE).groupBy("reason").count().orderBy("reason").collect():
            lines.append(f"  quarantined {row['reason']}: {row['count']:,}")
    if store.exists(COWATCH_EDGES):
        titles = _titles(spark, cfg)
        popular = store.read(VIDEO_STATS).orderBy(F.desc("users"), "video_id").limit(examples).collect()
        for video in popular:
            edges = store.read(COWATCH_EDGES).where(F.col("video_id") == video["video_id"])
            if titles is not None:
                edges = edges.join(titles.withColumnRenamed("video_id", "neighbor_id"), "neighbor_id", "left")
            else:
                edges = edges.withColumn("title", F.col("neighbor_id"))
            name = video["video_id"]
            if titles is not None:
                name = (titles.where(F.col("video_id") == name).first() or {"title": name})["title"]
            lines.append(f'videos like "{name}" ({video["users"]:,} viewers):')
            for e in edges.orderBy("rank").limit(top).collect():
                lines.append(
                    f"  {e['rank']:>2}. {e['title']}  (score {e['score']:.3f}, {e['cowatch_users']:,} co-watchers)"
                )
    text = "\n".join(lines)
    print(text)
    return text
