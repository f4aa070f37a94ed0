"""Co-watch graph: `watch_events` → `cowatch_edges` + `video_stats`.

Definition (mirrored by the brute-force reference in tests):
1. Per (user, video) keep the latest watch time; per user keep the `max_history` most recent
   distinct videos (ties: smaller video_id first). This bounds a user's pairs to
   max_history·(max_history−1)/2, so a heavy user cannot skew a partition.
2. A user co-watches videos i ≠ j when both are in the kept history and their watch times are at
   most `cowatch_window_hours` apart. `cowatch_users` c_ij = number of such users.
3. Pairs with c_ij ≥ `min_users` are scored with the cosine of the two videos' user sets,
   s_ij = c_ij / √(c_i·c_j), where c_i = users with i in their kept history. Cosine is symmetric,
   in [0, 1], and divides out popularity (a blockbuster co-occurs with everything) without PMI's
   bias toward rare pairs, which `min_users` alone would have to fight.
4. Each pair is considered in both directions; for each video the `max_neighbors` best neighbours
   (score desc, then c_ij desc, then neighbor_id asc — deterministic) are kept as directed rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig, GraphConfig
from cdml_spark.errors import VideoKeyCollision
from cdml_spark.tables import COWATCH_EDGES, VIDEO_STATS, WATCH_EVENTS, Lineage, TableStore

__all__ = ["GraphReport", "build_graph", "graph_edges"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphReport:
    events: int
    history_rows: int
    pairs: int
    edges: int
    videos_with_neighbors: int
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.events:,} events -> {self.history_rows:,} kept (user, video) -> {self.pairs:,} pairs "
            f"with >= min_users co-watchers -> {self.edges:,} edge rows "
            f"for {self.videos_with_neighbors:,} videos in {self.seconds:.1f}s "
            f"({self.events / max(self.seconds, 1e-9):,.0f} events/s)"
        )


def _kept_history(events: DataFrame, max_history: int) -> DataFrame:
    """user_id, video_id, ts_us: each user's `max_history` most recently watched distinct videos."""
    latest = events.groupBy("user_id", "video_id").agg(F.max(F.unix_micros("event_ts")).alias("ts_us"))
    recency = Window.partitionBy("user_id").orderBy(F.col("ts_us").desc(), F.col("video_id"))
    return latest.withColumn("_n", F.row_number().over(recency)).where(F.col("_n") <= max_history).drop("_n")


def _cowatch_counts(history: DataFrame, users: DataFrame, window_hours: float, min_users: int) -> DataFrame:
    """video_a, video_b (a < b in key order), cowatch_users: distinct users who watched both within the
    window, for the pairs with at least `min_users` of them (`users`: `_history_users(history)`).

    Work is kept to what can matter:
    - a-priori pruning: a pair's co-watchers are among each video's history users, so videos with
      fewer than `min_users` of those are never paired;
    - pairs only inside the window: each kept watch falls in a time bucket one window wide, and a row
      meets only rows of its own bucket and the next (an equi-join on user and bucket), instead of all
      of a user's kept videos;
    - the join, the shuffle and the count run on 64-bit hash keys of the ids (a key collision raises);
      ids come back only for the pairs that pass `min_users`."""
    window_us = max(1, int(round(window_hours * 3600 * 1_000_000)))
    key = F.xxhash64("video_id").alias("key")
    videos = users.where(F.col("history_users") >= min_users).select("video_id", key)
    distinct = videos.agg(F.count(F.lit(1)).alias("ids"), F.countDistinct("key").alias("keys")).first()
    if distinct["ids"] != distinct["keys"]:
        raise VideoKeyCollision(f"{distinct['ids']:,} video ids map to {distinct['keys']:,} hash keys")
    keyed = history.join(videos, "video_id").select(
        "user_id", "key", "ts_us", F.floor(F.col("ts_us") / window_us).cast("long").alias("bucket")
    )
    # a meets b in its own bucket (once per pair: a.key < b.key) and in the next one
    a = keyed.withColumn("join_bucket", F.explode(F.array("bucket", F.col("bucket") + 1))).alias("a")
    b = keyed.withColumn("join_bucket", F.col("bucket")).alias("b")
    pairs = a.join(
        b,
        (F.col("a.user_id") == F.col("b.user_id"))
        & (F.col("a.join_bucket") == F.col("b.join_bucket"))
        & (
            ((F.col("a.bucket") == F.col("b.bucket")) & (F.col("a.key") < F.col("b.key")))
            | (F.col("a.bucket") + 1 == F.col("b.bucket"))
        )
        & (F.abs(F.col("a.ts_us") - F.col("b.ts_us")) <= window_us),
    )
    # a user's kept videos are distinct, so each user adds at most one row per pair: count = users
    counts = (
        pairs.groupBy(F.least("a.key", "b.key").alias("key_a"), F.greatest("a.key", "b.key").alias("key_b"))
        .agg(F.count(F.lit(1)).alias("cowatch_users"))
        .where(F.col("cowatch_users") >= min_users)
    )
    ids_a = videos.select(F.col("key").alias("key_a"), F.col("video_id").alias("video_a"))
    ids_b = videos.select(F.col("key").alias("key_b"), F.col("video_id").alias("video_b"))
    return counts.join(ids_a, "key_a").join(ids_b, "key_b").select("video_a", "video_b", "cowatch_users")


def _history_users(history: DataFrame) -> DataFrame:
    """video_id, history_users: users with the video in their kept history (c_i of the cosine)."""
    return history.groupBy("video_id").agg(F.count(F.lit(1)).alias("history_users"))


def graph_edges(events: DataFrame, params: GraphConfig) -> DataFrame:
    """The whole graph rule on `events` (unpersisted): directed top-N rows with cosine scores."""
    history = _kept_history(events, params.max_history)
    users = _history_users(history)
    pairs = _cowatch_counts(history, users, params.cowatch_window_hours, params.min_users)
    return _top_neighbors(pairs, users, params)


def _top_neighbors(pairs: DataFrame, users: DataFrame, params: GraphConfig) -> DataFrame:
    """Directed, ranked top-N rows with cosine scores (see module docstring) of `pairs`, which hold
    only pairs with >= min_users co-watchers."""
    both = pairs.select(
        F.col("video_a").alias("video_id"), F.col("video_b").alias("neighbor_id"), "cowatch_users"
    ).unionByName(
        pairs.select(
            F.col("video_b").alias("video_id"), F.col("video_a").alias("neighbor_id"), "cowatch_users"
        )
    )
    vu = users.select(F.col("video_id"), F.col("history_users").alias("video_users"))
    nu = users.select(F.col("video_id").alias("neighbor_id"), F.col("history_users").alias("neighbor_users"))
    scored = (
        both.join(vu, "video_id")
        .join(nu, "neighbor_id")
        .withColumn("score", F.col("cowatch_users") / F.sqrt(F.col("video_users") * F.col("neighbor_users")))
    )
    order = Window.partitionBy("video_id").orderBy(
        F.col("score").desc(), F.col("cowatch_users").desc(), F.col("neighbor_id")
    )
    return scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= params.max_neighbors)


def _video_stats(events: DataFrame, users: DataFrame, edges: DataFrame) -> DataFrame:
    base = events.groupBy("video_id").agg(
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("user_id").alias("users"),
        F.min("event_ts").alias("first_watch"),
        F.max("event_ts").alias("last_watch"),
    )
    neighbors = edges.groupBy("video_id").agg(F.count(F.lit(1)).alias("neighbors"))
    return (
        base.join(users, "video_id", "left")
        .join(neighbors, "video_id", "left")
        .fillna(0, subset=["history_users", "neighbors"])
    )


def build_graph(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> GraphReport:
    """Job entry: replace `cowatch_edges` and `video_stats` from the current `watch_events`."""
    start = time.time()
    store = TableStore(spark, cfg.storage)
    events = store.read(WATCH_EVENTS).select("user_id", "video_id", "event_ts")
    input_version = store.version(WATCH_EVENTS)
    lineage = Lineage.new(
        "build_graph", {"graph": cfg.graph.model_dump(), "watch_events_version": input_version}, run_id
    )
    log.info("build_graph: watch_events v%s, params %s, run_id=%s", input_version, cfg.graph, lineage.run_id)

    history = _kept_history(events, cfg.graph.max_history).persist()
    users = _history_users(history)
    pairs = _cowatch_counts(history, users, cfg.graph.cowatch_window_hours, cfg.graph.min_users).persist()
    store.write(COWATCH_EDGES, _top_neighbors(pairs, users, cfg.graph), lineage)
    pair_count = pairs.count()
    written_edges = store.read(COWATCH_EDGES)
    store.write(VIDEO_STATS, _video_stats(events, users, written_edges), lineage)

    stats = (
        store.read(VIDEO_STATS)
        .agg(
            F.sum("events").alias("events"),
            F.sum("history_users").alias("history_rows"),
            F.sum("neighbors").alias("edges"),
            F.sum((F.col("neighbors") > 0).cast("long")).alias("with_neighbors"),
        )
        .first()
    )
    history.unpersist()
    pairs.unpersist()
    report = GraphReport(
        events=stats["events"] or 0,
        history_rows=stats["history_rows"] or 0,
        pairs=pair_count,
        edges=stats["edges"] or 0,
        videos_with_neighbors=stats["with_neighbors"] or 0,
        seconds=time.time() - start,
    )
    log.info("build_graph: %s", report.summary())
    return report
