"""Co-watch graph: `watch_events` → `cowatch_edges` + `video_stats`, over a window of UTC days.

Definition (mirrored by the brute-force reference in tests):
1. Per (user, day, video) keep the latest watch that day; per (user, day) keep the `max_history`
   most recent distinct videos (ties: smaller video key first). A heavy day cannot skew a task.
2. A user co-watches videos i ≠ j on day d when a kept watch of i and a kept watch of j are at most
   `cowatch_window_hours` apart and the later of the two is on day d (a pair across midnight
   belongs to the later watch's day). c_ij = number of (user, day) that co-watch i and j.
3. Video i is *exposed* on (user, day d) when it is kept on d, or kept earlier with a kept watch of
   the user on d at most the window after it (it could pair with that watch). c_i = number of such
   (user, day). Whoever co-watches i and j on d has both exposed on d, so c_ij ≤ min(c_i, c_j).
4. Pairs with c_ij ≥ `min_users` are scored with the cosine s_ij = c_ij / √(c_i·c_j) ∈ [0, 1]:
   symmetric, and it divides out popularity (a blockbuster co-occurs with everything) without PMI's
   bias toward rare pairs, which `min_users` alone would have to fight.
5. Each pair is considered in both directions; for each video the `max_neighbors` best neighbours
   (score desc, then c_ij desc, then neighbor_id asc — deterministic) are kept as directed rows.

The window is the days [as_of − window_days + 1, as_of] (`graph.as_of`: default the latest event's
day; `graph.window_days`: null = every day up to as_of); counts of its first days may use watches up
to ⌈window_hours / 24⌉ days before it. Why per (user, day): every count is a sum over days, so a
window's graph is the sum of its days' counts — `graph.mode=incremental` (`cdml_spark.graph_daily`)
keeps them per day and computes only new or changed days, and gives the same edges as the full
recompute (`graph.mode=full`, this module). A user who comes back to a pair on several days counts
once per day: repeated co-watching is stronger evidence than a single session.

Videos are 64-bit keys (`xxhash64(video_id)`, stable across runs) from the first projection on, so
no shuffle carries a video id string; `video_keys` is the dictionary back to ids (collisions are
refused). How it runs: events are shuffled once, by user; each task then holds whole users, and
steps 1–3 run there on Arrow/numpy columns (`mapInArrow`), never as a self-join. In full mode videos that
cannot reach `min_users` are dropped before pairing; pairs are generated only inside the window
(time-sorted rows, increasing offsets until none is inside) and counted per task; a second shuffle
(by pair code) brings each pair's counts together and numpy sums them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig, GraphConfig
from cdml_spark.errors import VideoKeyCollision
from cdml_spark.tables import COWATCH_EDGES, VIDEO_KEYS, VIDEO_STATS, WATCH_EVENTS, Lineage, TableStore

__all__ = [
    "DayRange",
    "GraphReport",
    "build_graph",
    "exposures",
    "graph_edges",
    "history",
    "pair_counts",
    "sorted_keys",
    "video_dictionary",
    "video_key",
    "with_ids",
]

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
EPOCH = date(1970, 1, 1)
_FAR = 1_000_000  # days: an unbounded side of the window (year ±2700, no overflow in micros)
_HISTORY_SCHEMA = "user int, key long, day int, ts_us long, kept boolean"
_PAIR_SCHEMA = "day int, pair long, users long"
_SUM_SCHEMA = "day int, key_a long, key_b long, cowatch_user_days long"


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
            f"{self.events:,} events -> {self.history_rows:,} exposed (user, day, video) -> "
            f"{self.pairs:,} pairs with >= min_users co-watching user-days -> {self.edges:,} edge rows "
            f"for {self.videos_with_neighbors:,} videos in {self.seconds:.1f}s "
            f"({self.events / max(self.seconds, 1e-9):,.0f} events/s)"
        )


@dataclass(frozen=True)
class DayRange:
    """Days counted (`first`..`last`, days since 1970-01-01, inclusive) and the earlier days whose
    watches they may pair with (`lookback`)."""

    first: int
    last: int
    lookback: int

    @classmethod
    def of(cls, params: GraphConfig, events: DataFrame) -> DayRange:
        """The window of `params`: it ends at as_of, else (with window_days) at the latest event's day,
        else it is unbounded (no scan of `events` for its latest day)."""
        last = (params.as_of - EPOCH).days if params.as_of else None
        if last is None and params.window_days:
            last = latest_event_day(events)
        last = _FAR if last is None else last
        first = last - params.window_days + 1 if params.window_days else -_FAR
        return cls(first, last, lookback_days(params))

    def events(self, events: DataFrame) -> DataFrame:
        """The events these days' counts read (lookback included)."""
        micros = F.unix_micros("event_ts")
        start, end = (self.first - self.lookback) * DAY_US, (self.last + 1) * DAY_US
        return events.where((micros >= F.lit(start)) & (micros < F.lit(end)))

    def counted(self, events: DataFrame) -> DataFrame:
        """The events on the counted days themselves (what `video_stats` describes)."""
        return DayRange(self.first, self.last, 0).events(events)

    def describe(self) -> str:
        def text(day: int) -> str:
            return "any" if abs(day) >= _FAR else str(EPOCH + timedelta(days=day))

        return f"{text(self.first)}..{text(self.last)}"


def lookback_days(params: GraphConfig) -> int:
    """Days before a day that its pairs and exposures can reach."""
    return math.ceil(params.cowatch_window_hours / 24)


def window_us(params: GraphConfig) -> int:
    return max(1, round(params.cowatch_window_hours * 3600 * 1_000_000))


def _table(batches: Iterator[pa.RecordBatch]) -> pa.Table | None:
    """A task's Arrow batches as one table (None for an empty partition)."""
    batches = list(batches)
    return pa.Table.from_batches(batches) if batches and sum(b.num_rows for b in batches) else None


def _codes(values: pa.ChunkedArray) -> np.ndarray:
    """Each row's value as an int code, equal codes for equal values (sorting ints beats strings)."""
    return pc.dictionary_encode(values).combine_chunks().indices.to_numpy().astype(np.int64)


def _packed(columns: list[np.ndarray]) -> np.ndarray | None:
    """One int64 per row that orders rows as `columns` do lexicographically (mixed radix over each
    column's value range), or None when the ranges need more than 63 bits."""
    code, capacity = np.zeros(len(columns[0]), np.int64), 1
    for column in columns:
        low, high = int(column.min()), int(column.max())
        capacity *= high - low + 1
        if capacity >= 2**63:
            return None
        code = code * (high - low + 1) + (column.astype(np.int64) - low)
    return code


def group_sum(
    columns: list[np.ndarray], weights: np.ndarray | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct rows of `columns` (sorted) and per row the sum of `weights` (default: the count).
    One int64 sort when the columns pack into 63 bits (3-5× faster than a lexsort), else a lexsort."""
    if not len(columns[0]):
        return columns, np.zeros(0, np.int64)
    packed = _packed(columns)
    order = np.lexsort(columns[::-1]) if packed is None else np.argsort(packed)
    ordered = [c[order] for c in columns]
    if packed is None:
        changed = np.any([c[1:] != c[:-1] for c in ordered], axis=0)
    else:
        changed = np.diff(packed[order]) != 0
    starts = np.flatnonzero(np.r_[True, changed])
    weight = weights[order] if weights is not None else np.ones(len(order), np.int64)
    return [c[starts] for c in ordered], np.add.reduceat(weight, starts)


def _member(rows: list[np.ndarray], table: list[np.ndarray]) -> np.ndarray:
    """For each row of `rows` (columns), whether it occurs among the rows of `table`."""
    n = len(rows[0])
    tag = np.r_[np.zeros(n, np.int8), np.ones(len(table[0]), np.int8)]
    columns = [np.r_[a, b] for a, b in zip(rows, table, strict=True)]
    order = np.lexsort((tag, *columns[::-1]))  # a row sorts just before its equal table row
    ordered = [c[order] for c in columns]
    equal_next = np.r_[np.all([c[1:] == c[:-1] for c in ordered], axis=0), False] if len(order) > 1 else False
    member = np.zeros(len(tag), bool)
    member[order] = equal_next & np.r_[tag[order][1:] == 1, False]
    return member[:n]


def _user_day(user: np.ndarray, day: np.ndarray) -> np.ndarray:
    """(user, day) as one int64 (user codes and days since 1970 are both below 2^31)."""
    return user * (1 << 32) + day


def _history_in_task(
    batches: Iterator[pa.RecordBatch], max_history: int, window: int
) -> Iterator[pa.RecordBatch]:
    """One task's events (whole users; user_id, key, ts_us) → the exposed (user, day, video) rows:
    `kept` ones (step 1; ts_us = that day's latest watch) and carried exposures (step 3). `user` is
    the user's number within the task (the later steps run on the same tasks), `key` the video's."""
    events = _table(batches)
    if events is None:
        return
    user = _codes(events["user_id"])
    video = events["key"].to_numpy()
    ts = events["ts_us"].to_numpy()
    day = np.floor_divide(ts, DAY_US)
    order = np.lexsort((-ts, video, day, user))  # per (user, day, video): latest watch first
    user, day, video, ts = user[order], day[order], video[order], ts[order]
    latest = np.r_[True, (user[1:] != user[:-1]) | (day[1:] != day[:-1]) | (video[1:] != video[:-1])]
    user, day, video, ts = user[latest], day[latest], video[latest], ts[latest]
    order = np.lexsort((video, -ts, day, user))  # per (user, day): most recent first
    user, day, video, ts = user[order], day[order], video[order], ts[order]
    position = np.arange(len(user))
    group_start = np.r_[True, (user[1:] != user[:-1]) | (day[1:] != day[:-1])]
    kept = position - np.maximum.accumulate(np.where(group_start, position, 0)) < max_history
    user, day, video, ts = user[kept], day[kept], video[kept], ts[kept]
    c_user, c_day, c_video = _carried(user, day, video, ts, window)
    out = pa.table(
        {
            "user": np.r_[user, c_user].astype(np.int32),
            "key": np.r_[video, c_video],
            "day": np.r_[day, c_day].astype(np.int32),
            "ts_us": np.r_[ts, np.zeros(len(c_user), np.int64)],
            "kept": np.arange(len(user) + len(c_user)) < len(user),
        }
    )
    yield from out.to_batches(max_chunksize=1 << 16)


def _carried(
    user: np.ndarray, day: np.ndarray, video: np.ndarray, ts: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3's exposures on later days: (user, day, video) where the video is not kept that day but
    a kept watch of it lies at most `window` before the user's first kept watch of the day. The kept
    rows come sorted by (user, day, ts desc)."""
    key = _user_day(user, day)
    last_of_group = np.r_[key[1:] != key[:-1], True]
    groups, first_watch = key[last_of_group], ts[last_of_group]  # ascending keys; earliest watch
    found = []
    for ahead in range(1, math.ceil(window / DAY_US) + 1):
        target = _user_day(user, day + ahead)
        at = np.minimum(np.searchsorted(groups, target), len(groups) - 1)
        hit = (groups[at] == target) & (first_watch[at] - ts <= window)
        found.append((user[hit], day[hit] + ahead, video[hit]))
    carried, _ = group_sum([np.concatenate(parts) for parts in zip(*found, strict=True)])
    kept_there = _member(carried, [user, day, video])
    return tuple(c[~kept_there] for c in carried)


def _pairs_in_task(
    batches: Iterator[pa.RecordBatch], keys: np.ndarray, window: int
) -> Iterator[pa.RecordBatch]:
    """One task's kept rows (whole users; user, key, ts_us) → per (day, pair) the users who
    co-watch the pair that day (step 2), for pairs of videos both in `keys` (sorted). A pair is
    coded as position(a) · len(keys) + position(b) with a < b in key order; its day is the later
    watch's."""
    rows = _table(batches)
    if rows is None:
        return
    rows = rows.filter(pc.is_in(rows["key"], value_set=pa.array(keys)))
    if rows.num_rows < 2:
        return
    user = rows["user"].to_numpy()
    ts = rows["ts_us"].to_numpy()
    order = np.lexsort((ts, user))
    user, ts = user[order], ts[order]
    dense = np.searchsorted(keys, rows["key"].to_numpy()[order])  # key order == dense order
    found = []
    for offset in range(1, len(ts)):
        near = (user[offset:] == user[:-offset]) & (ts[offset:] - ts[:-offset] <= window)
        if not near.any():  # time-sorted: larger offsets are farther apart
            break
        near &= dense[offset:] != dense[:-offset]  # the same video kept on two days is no pair
        first, second = dense[:-offset][near], dense[offset:][near]
        pair = np.minimum(first, second) * len(keys) + np.maximum(first, second)
        found.append((user[offset:][near], np.floor_divide(ts[offset:][near], DAY_US), pair))
    if found:
        (_, day, pair), _ = group_sum([np.concatenate(parts) for parts in zip(*found, strict=True)])
        (day, pair), users = group_sum([day, pair])  # once per (user, day) above, counted here
        yield pa.RecordBatch.from_pydict({"day": day.astype(np.int32), "pair": pair, "users": users})


def _sum_pairs_in_task(
    batches: Iterator[pa.RecordBatch], keys: np.ndarray, min_users: int, by_day: bool
) -> Iterator[pa.RecordBatch]:
    """All per-task counts of some pairs (repartitioned by pair) → day (-1 unless `by_day`), key_a,
    key_b, cowatch_user_days of the pairs (per day, or over all days) with ≥ `min_users`."""
    counts = _table(batches)
    if counts is None:
        return
    day, pair, users = (counts[c].to_numpy() for c in ("day", "pair", "users"))
    if by_day:
        (day, pair), total = group_sum([day, pair], users)
    else:
        (pair,), total = group_sum([pair], users)
        day = np.full(len(pair), -1, np.int32)
    strong = total >= min_users
    pair = pair[strong]
    yield pa.RecordBatch.from_pydict(
        {
            "day": day[strong].astype(np.int32),
            "key_a": keys[pair // len(keys)],
            "key_b": keys[pair % len(keys)],
            "cowatch_user_days": total[strong],
        }
    )


def history(events: DataFrame, params: GraphConfig, partitions: int) -> DataFrame:
    """user, key, day, ts_us, kept: the exposed (user, day, video) rows (steps 1 and 3) of `events`,
    each task holding whole users (`user` numbers them within the task)."""
    micros = events.select("user_id", video_key(), F.unix_micros("event_ts").alias("ts_us"))
    window = window_us(params)
    return micros.repartition(partitions, "user_id").mapInArrow(
        lambda batches: _history_in_task(batches, params.max_history, window), _HISTORY_SCHEMA
    )


def video_key() -> Column:
    """`key`: the 64-bit key of `video_id` (Spark's xxhash64, seed 42: the same on every run)."""
    return F.xxhash64("video_id").alias("key")


def video_dictionary(events: DataFrame) -> tuple[DataFrame, int]:
    """(video_id, key, events: the videos in `events` and their event counts, persisted; the number
    of events), from one aggregation; refuses two ids with one key (`VideoKeyCollision`)."""
    videos = (
        events.groupBy("video_id")
        .agg(F.count(F.lit(1)).alias("events"))
        .select("video_id", video_key(), "events")
    ).persist()
    ids, keys, total = videos.agg(F.count(F.lit(1)), F.countDistinct("key"), F.sum("events")).first()
    if ids != keys:
        collided = (
            videos.groupBy("key")
            .agg(F.sort_array(F.collect_set("video_id")).alias("ids"))
            .where("size(ids) > 1")
        ).first()
        videos.unpersist()
        raise VideoKeyCollision(f"{ids:,} video ids map to {keys:,} hash keys, e.g. {collided['ids']}")
    return videos, total or 0


def sorted_keys(videos: DataFrame) -> np.ndarray:
    """The sorted keys (column `key`) of `videos`, for pair codes."""
    keys = np.array(sorted(r["key"] for r in videos.select("key").collect()), dtype=np.int64)
    if len(keys) ** 2 >= 2**63:
        raise ValueError(f"{len(keys):,} videos: pair codes would overflow 64 bits")
    return keys


def pair_counts(
    rows: DataFrame, keys: np.ndarray, params: GraphConfig, partitions: int, counted: Column, by_day: bool
) -> DataFrame:
    """day, key_a, key_b, cowatch_user_days (step 2) from the kept `history` rows `rows`, for the
    pairs of `keys` on the days where `counted` (a condition on `day`) holds: per day (`by_day`) or
    summed over those days, keeping pairs with ≥ `min_users` (day = -1)."""
    shared = rows.sparkSession.sparkContext.broadcast(keys)
    window = window_us(params)
    min_users = 1 if by_day else params.min_users
    kept = rows.where("kept").select("user", "key", "ts_us")
    return (
        kept.mapInArrow(lambda batches: _pairs_in_task(batches, shared.value, window), _PAIR_SCHEMA)
        .where(counted)
        .repartition(partitions, "pair")
        .mapInArrow(lambda batches: _sum_pairs_in_task(batches, shared.value, min_users, by_day), _SUM_SCHEMA)
    )


def exposures(rows: DataFrame, counted: Column, by_day: bool) -> DataFrame:
    """key, (day,) user_days: c_i (step 3) from `history` rows, per day or over the counted days."""
    return (
        rows.where(counted)
        .groupBy("key", *(["day"] if by_day else []))
        .agg(F.count(F.lit(1)).alias("user_days"))
    )


def with_ids(pairs: DataFrame, videos: DataFrame) -> DataFrame:
    """`pairs` (key_a, key_b, cowatch_user_days) as video_a, video_b, cowatch_user_days, given
    `videos` (video_id, key)."""
    ids_a = videos.select(F.col("key").alias("key_a"), F.col("video_id").alias("video_a"))
    ids_b = videos.select(F.col("key").alias("key_b"), F.col("video_id").alias("video_b"))
    return pairs.join(ids_a, "key_a").join(ids_b, "key_b").select("video_a", "video_b", "cowatch_user_days")


def per_user_partitions(spark: SparkSession, events: int, params: GraphConfig) -> int:
    """Tasks for the per-user step over `events` events: enough that none holds more than
    `events_per_task` of them."""
    minimum = int(spark.conf.get("spark.sql.shuffle.partitions"))
    return max(minimum, math.ceil(events / params.events_per_task))


def latest_event_day(events: DataFrame) -> int | None:
    """Days since 1970 of the latest event (None without events)."""
    latest = events.agg(F.max(F.unix_micros("event_ts"))).first()[0]
    return None if latest is None else latest // DAY_US


def _window_counts(
    events: DataFrame, params: GraphConfig, days: DayRange
) -> tuple[DataFrame, DataFrame, list]:
    """Full mode: (pairs: video_a, video_b, cowatch_user_days with ≥ min_users; user_days: key,
    video_id, user_days; the cached frames) over the window `days`."""
    events = days.events(events)
    dictionary, event_count = video_dictionary(events)
    partitions = per_user_partitions(events.sparkSession, event_count, params)
    rows = history(events, params, partitions).persist()
    counted = F.col("day").between(days.first, days.last)
    user_days = exposures(rows, counted, by_day=False).join(dictionary.drop("events"), "key").persist()
    videos = user_days.where(F.col("user_days") >= params.min_users)
    pairs = pair_counts(rows, sorted_keys(videos), params, partitions, counted, by_day=False)
    return with_ids(pairs, videos).persist(), user_days, [rows, user_days, dictionary]


def graph_edges(events: DataFrame, params: GraphConfig) -> DataFrame:
    """The whole graph rule on `events` (full mode, unpersisted): directed top-N rows with cosine scores."""
    days = DayRange.of(params, events)
    pairs, user_days, _ = _window_counts(events, params, days)
    return _top_neighbors(pairs, user_days, params)


def _top_neighbors(pairs: DataFrame, user_days: DataFrame, params: GraphConfig) -> DataFrame:
    """Directed, ranked top-N rows with cosine scores (see module docstring) of `pairs`, which hold
    only pairs with >= min_users co-watching user-days."""
    both = pairs.select(
        F.col("video_a").alias("video_id"), F.col("video_b").alias("neighbor_id"), "cowatch_user_days"
    ).unionByName(
        pairs.select(
            F.col("video_b").alias("video_id"), F.col("video_a").alias("neighbor_id"), "cowatch_user_days"
        )
    )
    vu = user_days.select("video_id", F.col("user_days").alias("video_user_days"))
    nu = user_days.select(
        F.col("video_id").alias("neighbor_id"), F.col("user_days").alias("neighbor_user_days")
    )
    scored = (
        both.join(vu, "video_id")
        .join(nu, "neighbor_id")
        .withColumn(
            "score",
            F.col("cowatch_user_days") / F.sqrt(F.col("video_user_days") * F.col("neighbor_user_days")),
        )
    )
    order = Window.partitionBy("video_id").orderBy(
        F.col("score").desc(), F.col("cowatch_user_days").desc(), F.col("neighbor_id")
    )
    return scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= params.max_neighbors)


def _video_stats(counted_events: DataFrame, user_days: DataFrame, edges: DataFrame) -> DataFrame:
    base = counted_events.groupBy("video_id").agg(
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("user_id").alias("users"),
        F.min("event_ts").alias("first_watch"),
        F.max("event_ts").alias("last_watch"),
    )
    neighbors = edges.groupBy("video_id").agg(F.count(F.lit(1)).alias("neighbors"))
    return (
        base.join(user_days.select("video_id", "user_days"), "video_id", "left")
        .join(neighbors, "video_id", "left")
        .fillna(0, subset=["user_days", "neighbors"])
    )


def record_video_keys(store: TableStore, videos: DataFrame, lineage: Lineage) -> int:
    """Add the (key, video_id) rows of `videos` that `video_keys` lacks (one MERGE; nothing when none
    is new); refuses a key that `video_keys` holds for another id. Returns the rows added."""
    if not store.exists(VIDEO_KEYS):
        return store.write(VIDEO_KEYS, videos, lineage)
    held = store.read(VIDEO_KEYS).select("key", F.col("video_id").alias("held_id"))
    known = videos.join(held, "key", "left").persist()
    try:
        clash = known.where(F.col("held_id").isNotNull() & (F.col("held_id") != F.col("video_id"))).first()
        if clash:
            raise VideoKeyCollision(
                f"{clash['video_id']!r} has the key {clash['key']} that video_keys holds for {clash['held_id']!r}"
            )
        return store.upsert(
            VIDEO_KEYS, known.where(F.col("held_id").isNull()).drop("held_id"), lineage, ["key"]
        )
    finally:
        known.unpersist()


def build_graph(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> GraphReport:
    """Job entry: replace `cowatch_edges` and `video_stats` with the graph of the current
    `watch_events` over the window (`graph.mode`: full recompute, or per-day counts kept up to date)."""
    start = time.time()
    params = cfg.graph
    store = TableStore(spark, cfg.storage)
    events = store.read(WATCH_EVENTS).select("user_id", "video_id", "event_ts")
    input_version = store.version(WATCH_EVENTS)
    days = DayRange.of(params, events)
    lineage = Lineage.new(
        "build_graph",
        {"graph": params.model_dump(), "watch_events_version": input_version, "days": days.describe()},
        run_id,
    )
    log.info(
        "build_graph: watch_events v%s, days %s, %s mode, params %s, run_id=%s",
        input_version,
        days.describe(),
        params.mode,
        params,
        lineage.run_id,
    )
    if params.mode == "incremental":
        from cdml_spark.graph_daily import daily_window_counts

        pairs, user_days, cached = daily_window_counts(store, events, params, days, lineage)
    else:
        pairs, user_days, cached = _window_counts(events, params, days)
    record_video_keys(store, user_days.select("key", "video_id"), lineage)
    store.write(COWATCH_EDGES, _top_neighbors(pairs, user_days, params), lineage)
    pair_count = pairs.count()
    written_edges = store.read(COWATCH_EDGES)
    store.write(VIDEO_STATS, _video_stats(days.counted(events), user_days, written_edges), lineage)

    stats = (
        store.read(VIDEO_STATS)
        .agg(
            F.sum("events").alias("events"),
            F.sum("user_days").alias("history_rows"),
            F.sum("neighbors").alias("edges"),
            F.sum((F.col("neighbors") > 0).cast("long")).alias("with_neighbors"),
        )
        .first()
    )
    for cached_frame in (*cached, pairs):
        cached_frame.unpersist()
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
