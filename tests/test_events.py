"""Ingest: validation reasons and counts, duplicates, schema errors, sources, MovieLens counts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from pyspark.sql import functions as F

from cdml_spark.events import InputSchemaError, ingest_events, read_events_source, run_ingest
from cdml_spark.tables import WATCH_EVENTS, WATCH_EVENTS_QUARANTINE, Lineage, TableStore

SCHEMA = "user_id string, video_id string, event_ts timestamp, watch_seconds double"
TS = datetime(2026, 3, 1, 12, tzinfo=UTC)
OLD = datetime(1980, 1, 1, tzinfo=UTC)

ROWS = [
    ("u1", "v1", TS, 10.0),  # valid
    ("u1", "v1", TS, 10.0),  # exact duplicate of the first
    ("u1", "v1", TS, 11.0),  # not a duplicate (watch time differs)
    ("u2", "v2", TS, None),  # valid: unknown watch time
    (None, "v1", TS, 1.0),  # null_user_id
    ("  ", "v1", TS, 1.0),  # empty_user_id
    ("u3", None, TS, 1.0),  # null_video_id
    ("u3", "", TS, 1.0),  # empty_video_id
    ("u3", "v3", None, 1.0),  # null_event_ts
    ("u3", "v3", OLD, 1.0),  # event_ts_out_of_range
    ("u3", "v3", TS, float("nan")),  # non_finite_watch_seconds
    ("u3", "v3", TS, float("inf")),  # non_finite_watch_seconds
    ("u3", "v3", TS, -5.0),  # negative_watch_seconds
    (None, None, None, -1.0),  # several problems: the first rule wins (null_user_id)
]


def test_quarantine_reasons_and_counts(spark, cfg_factory):
    cfg = cfg_factory()
    report = ingest_events(spark, cfg, spark.createDataFrame(ROWS, SCHEMA))
    assert report.input_rows == 14
    assert report.written == 3
    assert report.duplicates_dropped == 1
    assert report.quarantined == {
        "null_user_id": 2,
        "empty_user_id": 1,
        "null_video_id": 1,
        "empty_video_id": 1,
        "null_event_ts": 1,
        "event_ts_out_of_range": 1,
        "non_finite_watch_seconds": 2,
        "negative_watch_seconds": 1,
    }
    store = TableStore(spark, cfg.storage)
    events = store.read(WATCH_EVENTS)
    assert sorted((r.user_id, r.watch_seconds) for r in events.collect()) == [
        ("u1", 10.0),
        ("u1", 11.0),
        ("u2", None),
    ]
    assert events.select("event_date").distinct().first()[0].isoformat() == "2026-03-01"
    assert store.read(WATCH_EVENTS_QUARANTINE).where(F.col("run_id") == events.first().run_id).count() == 10


def test_rerun_replaces_instead_of_appending(spark, cfg_factory):
    cfg = cfg_factory()
    df = spark.createDataFrame(ROWS, SCHEMA)
    ingest_events(spark, cfg, df)
    ingest_events(spark, cfg, df)
    store = TableStore(spark, cfg.storage)
    assert store.read(WATCH_EVENTS).count() == 3
    assert store.read(WATCH_EVENTS_QUARANTINE).count() == 10


def test_table_left_by_an_older_layout_is_replaced_once(spark, cfg_factory):
    cfg = cfg_factory()
    store = TableStore(spark, cfg.storage)
    older = dataclasses.replace(WATCH_EVENTS, fields=WATCH_EVENTS.fields[:4], partition_by=("user_id",))
    store.write(older, spark.createDataFrame([("u9", "v9", TS, 1.0)], SCHEMA), Lineage.new("old", {}))
    df = spark.createDataFrame(ROWS, SCHEMA)
    ingest_events(spark, cfg, df)
    ingest_events(spark, cfg, df)
    table = store._delta(WATCH_EVENTS)
    assert table.detail().first()["partitionColumns"] == []
    assert [(f.name, f.nullable) for f in store.read(WATCH_EVENTS).schema] == [
        (f.name, f.nullable) for f in WATCH_EVENTS.schema
    ]  # NOT NULLs kept
    operations = [r.operation for r in table.history().orderBy("version").collect()]
    assert operations.count("REPLACE TABLE") == 1 and operations[-1] == "WRITE"
    assert sorted(r.user_id for r in store.read(WATCH_EVENTS).collect()) == ["u1", "u1", "u2"]


def test_string_and_numeric_inputs_are_parsed(spark, cfg_factory):
    cfg = cfg_factory("events.timestamp_unit=milliseconds")
    df = spark.createDataFrame(
        [(7, 42, 1_767_225_600_000, "12.5"), (7, 43, 1_767_225_600_000, "abc")],
        "user_id long, video_id int, event_ts long, watch_seconds string",
    )
    report = ingest_events(spark, cfg, df)
    assert report.quarantined == {"invalid_watch_seconds": 1}
    row = TableStore(spark, cfg.storage).read(WATCH_EVENTS).first()
    assert (row.user_id, row.video_id, row.watch_seconds) == ("7", "42", 12.5)
    assert row.event_ts.replace(tzinfo=UTC) == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            "user_id string, video_id string, event_ts boolean, watch_seconds double",
            "'event_ts' has type boolean",
        ),
        (
            "user_id double, video_id string, event_ts timestamp, watch_seconds double",
            "'user_id' has type double",
        ),
        (
            "user_id string, video_id string, event_ts timestamp, watch_seconds date",
            "'watch_seconds' has type date",
        ),
    ],
)
def test_wrong_type_fails_before_writing(spark, cfg_factory, schema, message):
    cfg = cfg_factory()
    with pytest.raises(InputSchemaError, match=message):
        ingest_events(spark, cfg, spark.createDataFrame([], schema))
    assert not TableStore(spark, cfg.storage).exists(WATCH_EVENTS)


def test_path_source_with_column_mapping(spark, cfg_factory, tmp_path):
    src = tmp_path / "log.csv"
    src.write_text("viewer,item,when,secs\na,x,2026-02-01 10:00:00,30\nb,x,2026-02-01 11:00:00,-1\n")
    mapping = "{user_id: viewer, video_id: item, event_ts: when, watch_seconds: secs}"
    cfg = cfg_factory(
        "events.source=path", f"events.path={src}", "events.format=csv", f"events.columns={mapping}"
    )
    report = run_ingest(spark, cfg)
    assert (report.written, report.quarantined) == (1, {"negative_watch_seconds": 1})

    missing = cfg_factory(
        "events.source=path",
        f"events.path={src}",
        "events.format=csv",
        "events.columns={user_id: viewer, video_id: video, event_ts: when, watch_seconds: null}",
    )
    with pytest.raises(InputSchemaError, match=r"'video' \(events.columns.video_id\) not found"):
        read_events_source(spark, missing)


def test_movielens_100k_ingest(spark, cfg_factory):
    cfg = cfg_factory("events.source=movielens-100k")
    report = run_ingest(spark, cfg)
    assert (report.input_rows, report.written, report.quarantined) == (100_000, 100_000, {})
    events = TableStore(spark, cfg.storage).read(WATCH_EVENTS)
    counts = events.agg(F.countDistinct("user_id"), F.countDistinct("video_id")).first()
    assert tuple(counts) == (943, 1682)
