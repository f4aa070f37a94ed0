"""`graph.mode=incremental`: the co-watch graph's counts kept per UTC day.

Under graph.py's definition every count belongs to one day, and day d's counts depend only on the
events of days d − lookback .. d (lookback = ⌈window_hours / 24⌉). So each day of the window keeps
its pair counts (`cowatch_daily_pairs`) and exposures (`cowatch_daily_videos`), and `cowatch_days`
records the hash each day was computed from: the graph parameters that shape a day's counts and,
for each of those input days, its event count and the XOR of its rows' hashes (`watch_events` has no
duplicate rows). A run recomputes only the window's days that are missing or whose hash changed
(an appended, re-ingested or corrected day, or the day after it), replaces them in place (Delta
replaceWhere on the day partition), drops days that left the window, and brings the window's sums
up to date: `cowatch_window_pairs` gains the changed days' new counts and loses their old ones
(instead of re-summing every day), c_i is summed again (videos × days is small). The result is the
same pairs and c_i that the full mode computes from the events.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import date, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cdml_spark.config import GraphConfig
from cdml_spark.errors import VideoKeyCollision
from cdml_spark.graph import (
    DAY_US,
    EPOCH,
    DayRange,
    exposures,
    history,
    lookback_days,
    pair_counts,
    per_user_partitions,
    sorted_keys,
    video_dictionary,
    with_ids,
)
from cdml_spark.tables import (
    COWATCH_DAILY_PAIRS,
    COWATCH_DAILY_VIDEOS,
    COWATCH_DAYS,
    COWATCH_WINDOW_PAIRS,
    Lineage,
    TableStore,
    dates_in,
)

__all__ = ["daily_window_counts"]

log = logging.getLogger(__name__)

_DAYS_SCHEMA = "day date, inputs_hash string, events long"


def _event_day() -> Column:
    return F.expr(f"unix_micros(event_ts) div {DAY_US}").cast("int")


def _day_fingerprints(events: DataFrame, days: DayRange) -> dict[int, tuple[int, int]]:
    """day → (events, XOR of their row hashes), for the days the window's counts read."""
    rows = (
        days.events(events)
        .groupBy(_event_day().alias("day"))
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.expr("bit_xor(xxhash64(user_id, video_id, event_ts))").alias("xor"),
        )
        .collect()
    )
    return {r["day"]: (r["events"], r["xor"]) for r in rows}


def _inputs_hash(
    day: int, fingerprints: dict[int, tuple[int, int]], params: GraphConfig, lookback: int
) -> str:
    inputs = [params.max_history, params.cowatch_window_hours]
    inputs += [(d, *fingerprints.get(d, (0, 0))) for d in range(day - lookback, day + 1)]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]


def _as_date(day: int) -> date:
    return EPOCH + timedelta(days=day)


def _compute_days(
    store: TableStore,
    events: DataFrame,
    params: GraphConfig,
    stale: list[int],
    dropped: list[int],
    lineage: Lineage,
) -> None:
    """Replace the per-day rows of `stale` days with fresh counts and delete those of `dropped` days."""
    lookback = lookback_days(params)
    needed = sorted({d - k for d in stale for k in range(lookback + 1)})
    source = events.where(_event_day().isin(needed)) if needed else events.limit(0)
    dictionary, event_count = video_dictionary(source)
    partitions = per_user_partitions(store.spark, event_count, params)
    rows = history(source, params, partitions).persist()
    counted = F.col("day").isin(stale) if stale else F.lit(False)
    keys = sorted_keys(rows.where("kept").select("key").distinct())
    pairs = pair_counts(rows, keys, params, partitions, counted, by_day=True).select(
        F.expr("date_from_unix_date(day)").alias("day"),
        "key_a",
        "key_b",
        F.col("cowatch_user_days").alias("cowatch_users"),
    )
    exposed = (
        exposures(rows, counted, by_day=True)
        .join(dictionary.drop("events"), "key")
        .select(
            F.expr("date_from_unix_date(day)").alias("day"),
            "video_id",
            "key",
            F.col("user_days").alias("exposed_users"),
        )
    )
    replaced = dates_in("day", [_as_date(d) for d in sorted({*stale, *dropped})])
    store.write(COWATCH_DAILY_PAIRS, pairs, lineage, replace_where=replaced)
    store.write(COWATCH_DAILY_VIDEOS, exposed, lineage, replace_where=replaced)
    rows.unpersist()
    dictionary.unpersist()


def daily_window_counts(
    store: TableStore, events: DataFrame, params: GraphConfig, days: DayRange, lineage: Lineage
) -> tuple[DataFrame, DataFrame, list[DataFrame]]:
    """Bring the per-day tables up to date for the window `days`, then (pairs: video_a, video_b,
    cowatch_user_days with ≥ min_users; user_days: video_id, key, user_days; the cached frames)."""
    fingerprints = _day_fingerprints(events, days)
    window = sorted(
        {d + k for d in fingerprints for k in range(days.lookback + 1) if days.first <= d + k <= days.last}
    )
    wanted = {d: _inputs_hash(d, fingerprints, params, days.lookback) for d in window}
    held = {}
    if store.exists(COWATCH_DAYS):
        held = {(r["day"] - EPOCH).days: r["inputs_hash"] for r in store.read(COWATCH_DAYS).collect()}
    stale = [d for d in window if held.get(d) != wanted[d]]
    dropped = sorted(set(held) - set(wanted))
    log.info(
        "build_graph (incremental): %d days in the window %s; %d to compute, %d to drop, %d kept",
        len(window),
        days.describe(),
        len(stale),
        len(dropped),
        len(window) - len(stale),
    )
    before = store.version(COWATCH_DAILY_PAIRS) if store.exists(COWATCH_DAILY_PAIRS) else None
    if stale or dropped:
        _compute_days(store, events, params, stale, dropped, lineage)
        status = [(_as_date(d), wanted[d], fingerprints.get(d, (0, 0))[0]) for d in window]
        store.write(COWATCH_DAYS, store.spark.createDataFrame(status, _DAYS_SCHEMA), lineage)

    user_days = (  # the per-day tables hold exactly the window's days
        store.read(COWATCH_DAILY_VIDEOS)
        .groupBy("video_id", "key")
        .agg(F.sum("exposed_users").alias("user_days"))
        .persist()
    )
    keys = user_days.select("key").distinct().count()
    if keys != user_days.count():
        raise VideoKeyCollision(f"{user_days.count():,} video ids in the window map to {keys:,} hash keys")
    totals = _window_totals(store, before, sorted({*stale, *dropped}), lineage)
    pairs = totals.where(F.col("cowatch_user_days") >= params.min_users)
    return with_ids(pairs, user_days).persist(), user_days, [user_days]


def _window_totals(store: TableStore, before: int | None, changed: list[int], lineage: Lineage) -> DataFrame:
    """`cowatch_window_pairs` brought up to the current `cowatch_daily_pairs`. When it holds the sums
    of version `before` (the one this run's day updates started from), it is updated by the changed
    days' new rows minus their old rows (read at `before`); otherwise (first run, or a run that failed
    between the two writes) it is summed again from every day held."""
    now = store.version(COWATCH_DAILY_PAIRS)
    noted = store.commit_inputs(COWATCH_WINDOW_PAIRS) if store.exists(COWATCH_WINDOW_PAIRS) else {}
    if noted.get("daily_pairs_version") == now:
        return store.read(COWATCH_WINDOW_PAIRS)
    counts = F.col("cowatch_users").alias("n")
    if before is not None and noted.get("daily_pairs_version") == before and changed:
        on_changed_days = dates_in("day", [_as_date(d) for d in changed])
        added = store.read(COWATCH_DAILY_PAIRS).where(on_changed_days).select("key_a", "key_b", counts)
        removed = store.read(COWATCH_DAILY_PAIRS, version=before).where(on_changed_days)
        held = store.read(COWATCH_WINDOW_PAIRS).select(
            "key_a", "key_b", F.col("cowatch_user_days").alias("n")
        )
        terms = held.unionByName(added).unionByName(removed.select("key_a", "key_b", (-counts).alias("n")))
        method = "delta"
    else:
        terms = store.read(COWATCH_DAILY_PAIRS).select("key_a", "key_b", counts)
        method = "resum"
    totals = terms.groupBy("key_a", "key_b").agg(F.sum("n").alias("cowatch_user_days"))
    inputs = {"daily_pairs_version": now, "method": method, "changed_days": len(changed)}
    store.write(COWATCH_WINDOW_PAIRS, totals.where("cowatch_user_days > 0"), lineage, inputs=inputs)
    log.info(
        "build_graph (incremental): window pair sums %s",
        "updated by the changed days" if method == "delta" else "summed again",
    )
    return store.read(COWATCH_WINDOW_PAIRS)
