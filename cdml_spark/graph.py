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

How it runs: events are shuffled once, by user; each task then holds whole users, and steps 1–2 run
there on Arrow/numpy columns (`mapInArrow`), never as a self-join. Videos that cannot reach
`min_users` are dropped before pairing; pairs are generated only inside the window (time-sorted
rows, offsets 1..max_history−1) and counted per task as one 64-bit code per pair; a second shuffle
(by pair) brings each pair's per-task counts together, numpy sums them, and keys go back to ids
only for the pairs that pass `min_users`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig, GraphConfig
from cdml_spark.errors import VideoKeyCollision
from cdml_spark.tables import COWATCH_EDGES, VIDEO_STATS, WATCH_EVENTS, Lineage, TableStore

__all__ = ["GraphReport", "build_graph", "graph_edges"]

log = logging.getLogger(__name__)

_WATCHED_SCHEMA = "user_id string, video_id string, ts_us long, first_us long, events long, kept boolean"
_PAIR_SCHEMA = "pair long, users long"
_STRONG_SCHEMA = "key_a long, key_b long, cowatch_users long"


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


def _table(batches: Iterator[pa.RecordBatch]) -> pa.Table | None:
    """A task's Arrow batches as one table (None for an empty partition)."""
    batches = list(batches)
    return pa.Table.from_batches(batches) if batches and sum(b.num_rows for b in batches) else None


def _user_codes(users: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(codes, names): each row's user as an int32 code into `names` (sorting ints beats strings)."""
    encoded = pc.dictionary_encode(users).combine_chunks()
    return encoded.indices, encoded.dictionary


def _watched_in_task(batches: Iterator[pa.RecordBatch], max_history: int) -> Iterator[pa.RecordBatch]:
    """One task's events (whole users) → one row per (user, video): latest and first watch, events,
    and `kept` = among the user's `max_history` most recent distinct videos (step 1)."""
    events = _table(batches)
    if events is None:
        return
    codes, names = _user_codes(events["user_id"])
    per_pair = (
        pa.table({"user": codes, "video_id": events["video_id"], "ts_us": events["ts_us"]})
        .group_by(["user", "video_id"])
        .aggregate([("ts_us", "max"), ("ts_us", "min"), ("ts_us", "count")])
    )
    order = pc.sort_indices(
        per_pair, [("user", "ascending"), ("ts_us_max", "descending"), ("video_id", "ascending")]
    )
    per_pair = per_pair.take(order)
    user = per_pair["user"].to_numpy()
    position = np.arange(len(user))
    first_of_user = np.maximum.accumulate(np.where(np.r_[True, user[1:] != user[:-1]], position, 0))
    watched = pa.table(
        {
            "user_id": names.take(per_pair["user"]),
            "video_id": per_pair["video_id"],
            "ts_us": per_pair["ts_us_max"],
            "first_us": per_pair["ts_us_min"],
            "events": per_pair["ts_us_count"],
            "kept": position - first_of_user < max_history,
        }
    )
    yield from watched.to_batches(max_chunksize=1 << 16)


def _pairs_in_task(
    batches: Iterator[pa.RecordBatch], keys: np.ndarray, window_us: int, max_history: int
) -> Iterator[pa.RecordBatch]:
    """One task's kept history (whole users; user_id, key, ts_us) → per-task co-watch counts of the
    pairs whose two videos are both in `keys` (sorted) and in the window (step 2). A pair is coded
    as position(a) · len(keys) + position(b) with a < b in key order."""
    rows = _table(batches)
    if rows is None:
        return
    rows = rows.filter(pc.is_in(rows["key"], value_set=pa.array(keys)))
    if rows.num_rows < 2:
        return
    rows = pa.table({"user": _user_codes(rows["user_id"])[0], "key": rows["key"], "ts_us": rows["ts_us"]})
    rows = rows.take(pc.sort_indices(rows, [("user", "ascending"), ("ts_us", "ascending")]))
    user = rows["user"].to_numpy()
    ts = rows["ts_us"].to_numpy()
    dense = np.searchsorted(keys, rows["key"].to_numpy())  # key order == dense order
    codes = []
    for offset in range(1, min(max_history, len(ts))):  # a user's kept videos are distinct
        inside = (user[offset:] == user[:-offset]) & (ts[offset:] - ts[:-offset] <= window_us)
        if not inside.any():  # time-sorted: larger offsets are farther apart
            break
        first, second = dense[:-offset][inside], dense[offset:][inside]
        codes.append(np.minimum(first, second) * len(keys) + np.maximum(first, second))
    if codes:
        pair, users = np.unique(np.concatenate(codes), return_counts=True)
        yield pa.RecordBatch.from_pydict({"pair": pair, "users": users})


def _strong_pairs_in_task(
    batches: Iterator[pa.RecordBatch], keys: np.ndarray, min_users: int
) -> Iterator[pa.RecordBatch]:
    """All per-task counts of some pairs (repartitioned by pair) → key_a, key_b, cowatch_users of
    those with at least `min_users` co-watchers."""
    counts = _table(batches)
    if counts is None:
        return
    pair, slot = np.unique(counts["pair"].to_numpy(), return_inverse=True)
    users = np.bincount(slot, weights=counts["users"].to_numpy(), minlength=len(pair)).astype(np.int64)
    strong = users >= min_users
    pair = pair[strong]
    yield pa.RecordBatch.from_pydict(
        {"key_a": keys[pair // len(keys)], "key_b": keys[pair % len(keys)], "cowatch_users": users[strong]}
    )


def _watched(events: DataFrame, params: GraphConfig, partitions: int) -> DataFrame:
    """user_id, video_id, ts_us (latest watch), first_us, events, kept (see `_watched_in_task`)."""
    micros = events.select("user_id", "video_id", F.unix_micros("event_ts").alias("ts_us"))
    return micros.repartition(partitions, "user_id").mapInArrow(
        lambda batches: _watched_in_task(batches, params.max_history), _WATCHED_SCHEMA
    )


def _history_users(watched: DataFrame) -> DataFrame:
    """video_id, history_users: users with the video in their kept history (c_i of the cosine)."""
    return watched.where("kept").groupBy("video_id").agg(F.count(F.lit(1)).alias("history_users"))


def _cowatch_counts(watched: DataFrame, users: DataFrame, params: GraphConfig, partitions: int) -> DataFrame:
    """video_a, video_b (a < b in key order), cowatch_users, for the pairs with ≥ `min_users`.
    `watched` must come straight from `_watched` (each task holds whole users); per-task pair counts
    are summed in numpy after one shuffle by pair (no hash aggregation over mostly unique pairs)."""
    videos = users.where(F.col("history_users") >= params.min_users).select(
        "video_id", F.xxhash64("video_id").alias("key")
    )
    keys = np.array(sorted(r["key"] for r in videos.select("key").collect()), dtype=np.int64)
    if len(np.unique(keys)) != len(keys):
        raise VideoKeyCollision(f"{len(keys):,} video ids map to {len(np.unique(keys)):,} hash keys")
    if len(keys) ** 2 >= 2**63:
        raise ValueError(f"{len(keys):,} videos: pair codes would overflow 64 bits")
    shared = watched.sparkSession.sparkContext.broadcast(keys)
    window_us = max(1, round(params.cowatch_window_hours * 3600 * 1_000_000))
    history = watched.where("kept").select("user_id", F.xxhash64("video_id").alias("key"), "ts_us")
    counts = (
        history.mapInArrow(
            lambda batches: _pairs_in_task(batches, shared.value, window_us, params.max_history),
            _PAIR_SCHEMA,
        )
        .repartition(partitions, "pair")
        .mapInArrow(
            lambda batches: _strong_pairs_in_task(batches, shared.value, params.min_users), _STRONG_SCHEMA
        )
    )
    ids_a = videos.select(F.col("key").alias("key_a"), F.col("video_id").alias("video_a"))
    ids_b = videos.select(F.col("key").alias("key_b"), F.col("video_id").alias("video_b"))
    return counts.join(ids_a, "key_a").join(ids_b, "key_b").select("video_a", "video_b", "cowatch_users")


def _partitions(spark: SparkSession, events: DataFrame, params: GraphConfig) -> int:
    """Tasks for the per-user step: enough that none holds more than `events_per_task` events."""
    minimum = int(spark.conf.get("spark.sql.shuffle.partitions"))
    return max(minimum, math.ceil(events.count() / params.events_per_task))


def graph_edges(events: DataFrame, params: GraphConfig) -> DataFrame:
    """The whole graph rule on `events` (unpersisted): directed top-N rows with cosine scores."""
    partitions = _partitions(events.sparkSession, events, params)
    watched = _watched(events, params, partitions)
    users = _history_users(watched)
    return _top_neighbors(_cowatch_counts(watched, users, params, partitions), users, params)


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


def _video_stats(watched: DataFrame, users: DataFrame, edges: DataFrame) -> DataFrame:
    base = watched.groupBy("video_id").agg(
        F.sum("events").alias("events"),
        F.count(F.lit(1)).alias("users"),  # one watched row per (user, video)
        F.expr("timestamp_micros(min(first_us))").alias("first_watch"),
        F.expr("timestamp_micros(max(ts_us))").alias("last_watch"),
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

    partitions = _partitions(spark, events, cfg.graph)
    watched = _watched(events, cfg.graph, partitions).persist()
    users = _history_users(watched).persist()
    pairs = _cowatch_counts(watched, users, cfg.graph, partitions).persist()
    store.write(COWATCH_EDGES, _top_neighbors(pairs, users, cfg.graph), lineage)
    pair_count = pairs.count()
    written_edges = store.read(COWATCH_EDGES)
    store.write(VIDEO_STATS, _video_stats(watched, users, written_edges), lineage)

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
    for cached in (watched, users, pairs):
        cached.unpersist()
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
