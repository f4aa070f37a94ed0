"""Guarded replaces: a job never swaps a good table for an empty, mostly-quarantined or much smaller one."""

from __future__ import annotations

import sys

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdml_spark.errors import RefusedWrite
from cdml_spark.events import ingest_events, read_events_source
from cdml_spark.tables import (
    VIDEO_STATS,
    WATCH_EVENTS,
    WATCH_EVENTS_QUARANTINE,
    Lineage,
    TableStore,
)
from tests.test_jobs import run

HEADER = "user_id,video_id,event_ts,watch_seconds\n"
GOOD = HEADER + "u1,a,2026-02-01 10:00:00,30\nu2,b,2026-02-01 11:00:00,40\n"
BAD = HEADER + "".join(f"u{i},v{i},not a time,10\n" for i in range(6))


def _csv(cfg_factory, path):
    return cfg_factory("events.source=path", f"events.path={path}", "events.format=csv")


def test_all_bad_input_leaves_watch_events_and_exits_2(spark, cfg_factory, tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(GOOD)
    bad.write_text(BAD)
    cfg = _csv(cfg_factory, good)
    assert ingest_events(spark, cfg, read_events_source(spark, cfg)).written == 2
    store = TableStore(spark, cfg.storage)
    before = store.version(WATCH_EVENTS)

    result = run(
        [sys.executable, "jobs/ingest_events.py"],
        cfg.storage.tables_root,
        f"storage.database={cfg.storage.database}",
        "events.source=path",
        f"events.path={bad}",
        "events.format=csv",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "RefusedWrite" in x)
    assert "6 of 6 input rows invalid" in line and "events.max_quarantine_fraction=0.01" in line
    assert store.version(WATCH_EVENTS) == before
    assert sorted(r.video_id for r in store.read(WATCH_EVENTS).collect()) == ["a", "b"]
    # the refused input's rows and reasons are kept for inspection
    reasons = store.read(WATCH_EVENTS_QUARANTINE).groupBy("reason").count().collect()
    assert [(r["reason"], r["count"]) for r in reasons] == [("invalid_event_ts", 6)]


def test_quarantine_share_limit(spark, cfg_factory, tmp_path):
    src = tmp_path / "mixed.csv"
    src.write_text(GOOD + "u3,c,never,5\n")  # 1 of 3 rows invalid
    cfg = _csv(cfg_factory, src)
    with pytest.raises(RefusedWrite, match="1 of 3 input rows invalid"):
        ingest_events(spark, cfg, read_events_source(spark, cfg))
    assert not TableStore(spark, cfg.storage).exists(WATCH_EVENTS)
    lenient = cfg.model_copy(
        update={"events": cfg.events.model_copy(update={"max_quarantine_fraction": 0.5})}
    )
    report = ingest_events(spark, lenient, read_events_source(spark, lenient))
    assert (report.written, report.quarantined) == (2, {"invalid_event_ts": 1})
    meta = TableStore(spark, cfg.storage).commit_inputs(WATCH_EVENTS)
    assert meta["rows"] == 2 and meta["input_rows"] == 3 and meta["quarantined"] == {"invalid_event_ts": 1}


def test_empty_input_is_refused(spark, cfg_factory, tmp_path):
    src = tmp_path / "empty.csv"
    src.write_text(HEADER)
    cfg = _csv(cfg_factory, src)
    with pytest.raises(RefusedWrite, match="the input has 0 rows"):
        ingest_events(spark, cfg, read_events_source(spark, cfg))


def _stats(spark, n: int):
    return spark.range(n).select(
        F.format_string("v%d", "id").alias("video_id"),
        F.lit(1).alias("events"),
        F.lit(1).alias("users"),
        F.lit(1).alias("user_days"),
        F.lit(0).alias("neighbors"),
        F.current_timestamp().alias("first_watch"),
        F.current_timestamp().alias("last_watch"),
    )


def test_shrink_and_empty_results_are_refused(spark, cfg_factory):
    cfg = cfg_factory()
    store = TableStore(spark, cfg.storage)
    lineage = Lineage.new("test", {})
    assert store.write(VIDEO_STATS, _stats(spark, 10), lineage) == 10
    version = store.version(VIDEO_STATS)
    with pytest.raises(RefusedWrite, match=r"4 new rows < storage.min_row_ratio=0.5 × 10 rows of v\d+"):
        store.write(VIDEO_STATS, _stats(spark, 4), lineage)
    with pytest.raises(RefusedWrite, match="the job produced 0 rows; it stays at v"):
        store.write(VIDEO_STATS, _stats(spark, 0), lineage)
    assert (store.version(VIDEO_STATS), store.read(VIDEO_STATS).count()) == (version, 10)
    assert store.write(VIDEO_STATS, _stats(spark, 5), lineage) == 5  # exactly half is allowed
    shrink = TableStore(spark, cfg.storage.model_copy(update={"min_row_ratio": 0.0}))
    assert shrink.write(VIDEO_STATS, _stats(spark, 1), lineage) == 1  # the deliberate shrink
    # unguarded tables (quarantines, reports) may be emptied: a clean input has no bad rows
    empty = spark.createDataFrame([], T.StructType(list(WATCH_EVENTS_QUARANTINE.fields)))
    assert store.write(WATCH_EVENTS_QUARANTINE, empty, lineage) == 0
