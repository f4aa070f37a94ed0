"""Ingest: validation reasons and counts, duplicates, schema errors, sources, MovieLens counts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from cdml_spark.config import load_config
from cdml_spark.errors import ConfigError, InputSchemaError, RefusedWrite
from cdml_spark.events import ingest_events, read_events_source, run_ingest, validate_events
from cdml_spark.tables import WATCH_EVENTS, WATCH_EVENTS_QUARANTINE, Lineage, TableStore
from tests.conftest import LOCAL_CONF

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


LENIENT = "events.max_quarantine_fraction=1"  # these inputs are mostly bad rows on purpose


def test_quarantine_reasons_and_counts(spark, cfg_factory):
    cfg = cfg_factory(LENIENT)
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
    cfg = cfg_factory(LENIENT)
    df = spark.createDataFrame(ROWS, SCHEMA)
    ingest_events(spark, cfg, df)
    ingest_events(spark, cfg, df)
    store = TableStore(spark, cfg.storage)
    assert store.read(WATCH_EVENTS).count() == 3
    assert store.read(WATCH_EVENTS_QUARANTINE).count() == 10


def test_table_left_by_an_older_layout_is_replaced_once(spark, cfg_factory):
    cfg = cfg_factory(LENIENT)
    store = TableStore(spark, cfg.storage)
    older = dataclasses.replace(WATCH_EVENTS, fields=WATCH_EVENTS.fields[:4], partition_by=("user_id",))
    store.write(older, spark.createDataFrame([("u9", "v9", TS, 1.0)], SCHEMA), Lineage.new("old", {}))
    df = spark.createDataFrame(ROWS, SCHEMA)
    ingest_events(spark, cfg, df)
    ingest_events(spark, cfg, df)
    table = store.delta_table(WATCH_EVENTS)
    assert table.detail().first()["partitionColumns"] == []
    assert [(f.name, f.nullable) for f in store.read(WATCH_EVENTS).schema] == [
        (f.name, f.nullable) for f in WATCH_EVENTS.schema
    ]  # NOT NULLs kept
    operations = [r.operation for r in table.history().orderBy("version").collect()]
    assert operations.count("REPLACE TABLE") == 1 and operations[-1] == "WRITE"
    assert sorted(r.user_id for r in store.read(WATCH_EVENTS).collect()) == ["u1", "u1", "u2"]


def test_string_and_numeric_inputs_are_parsed(spark, cfg_factory):
    cfg = cfg_factory(LENIENT, "events.timestamp_unit=milliseconds")
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
        LENIENT, "events.source=path", f"events.path={src}", "events.format=csv", f"events.columns={mapping}"
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


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HEADER = "user_id,video_id,event_ts,watch_seconds\n"


def _micros(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def _epoch_s(seconds: int, micros: int = 0) -> int:
    """Microseconds since the epoch of `seconds` (+ `micros`), the Python way."""
    return _micros(datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros))


def _parsed(
    spark, cfg_factory, path, fmt: str, unit: str = "seconds"
) -> dict[str, tuple[int | None, str | None]]:
    """user_id -> (event_ts in microseconds since the epoch, reason), through the real reader path."""
    cfg = cfg_factory(
        "events.source=path", f"events.path={path}", f"events.format={fmt}", f"events.timestamp_unit={unit}"
    )
    checked = validate_events(read_events_source(spark, cfg), cfg.events)
    rows = checked.select("user_id", F.unix_micros("event_ts").alias("us"), "reason").collect()
    return {r.user_id: (r.us, r.reason) for r in rows}


def test_csv_epoch_seconds_are_parsed_row_by_row(spark, cfg_factory, tmp_path):
    src = tmp_path / "log.csv"
    lines = ["a,v,1700000000,1", 'b,v," 1767225600 ",1', "c,v,+1700000000.25,1", "d,v,1.7e9,1"]
    lines += ["e,v,2026-02-01T10:00:00Z,1", "f,v,17000x,1", "g,v,-1,1"]
    src.write_text(HEADER + "\n".join(lines) + "\n")
    assert _parsed(spark, cfg_factory, src, "csv") == {
        "a": (_epoch_s(1_700_000_000), None),
        "b": (_epoch_s(1_767_225_600), None),
        "c": (_epoch_s(1_700_000_000, 250_000), None),
        "d": (_epoch_s(1_700_000_000), None),
        "e": (_micros(datetime(2026, 2, 1, 10, tzinfo=UTC)), None),  # ISO in the same column
        "f": (None, "invalid_event_ts"),
        "g": (_epoch_s(-1), "event_ts_out_of_range"),
    }


def test_csv_epoch_milliseconds(spark, cfg_factory, tmp_path):
    src = tmp_path / "log.csv"
    lines = ["a,v,1700000000123,1", "b,v,1767225600000.5,1", "c,v,2026-02-01 10:00:00,1", "d,v,soon,1"]
    src.write_text(HEADER + "\n".join(lines) + "\n")
    assert _parsed(spark, cfg_factory, src, "csv", "milliseconds") == {
        "a": (_epoch_s(1_700_000_000, 123_000), None),
        "b": (_epoch_s(1_767_225_600, 500), None),
        "c": (_micros(datetime(2026, 2, 1, 10, tzinfo=UTC)), None),
        "d": (None, "invalid_event_ts"),
    }


def test_csv_iso_strings(spark, cfg_factory, tmp_path):
    src = tmp_path / "log.csv"
    values = ["2026-02-01 10:00:00", "2026-02-01T10:00:00.123456Z", "2026-02-01T11:00:00+01:00", "2026-02-01"]
    lines = [f"u{i},v,{value},1" for i, value in enumerate(values)] + ["bad,v,yesterday,1", "none,v,,1"]
    src.write_text(HEADER + "\n".join(lines) + "\n")
    expected = {
        "u0": (_micros(datetime(2026, 2, 1, 10, tzinfo=UTC)), None),
        "u1": (_micros(datetime(2026, 2, 1, 10, 0, 0, 123_456, tzinfo=UTC)), None),
        "u2": (_micros(datetime.fromisoformat(values[2])), None),  # 10:00 UTC
        "u3": (_micros(datetime(2026, 2, 1, tzinfo=UTC)), None),
        "bad": (None, "invalid_event_ts"),
        "none": (None, "null_event_ts"),
    }
    assert _parsed(spark, cfg_factory, src, "csv") == expected


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_numeric_epoch_seconds_in_parquet_and_delta(spark, cfg_factory, tmp_path, fmt):
    rows = [("a", 1_700_000_000.0), ("b", 1_767_225_600.5), ("c", 1_700_000_000.123456), ("d", float("nan"))]
    df = spark.createDataFrame(
        [(u, "v", ts, 1.0) for u, ts in rows],
        "user_id string, video_id string, event_ts double, watch_seconds double",
    )
    df.write.format(fmt).save(str(tmp_path / "src"))
    assert _parsed(spark, cfg_factory, tmp_path / "src", fmt) == {
        "a": (_epoch_s(1_700_000_000), None),
        "b": (_epoch_s(1_767_225_600, 500_000), None),
        "c": (_epoch_s(1_700_000_000, 123_456), None),
        "d": (None, "invalid_event_ts"),
    }


def test_append_replaces_only_its_dates_and_reads_only_requested_partitions(spark, cfg_factory, tmp_path):
    """events.mode=append: a day's rerun changes nothing, a corrected day replaces only that day,
    events outside events.dates are counted and skipped, and a date-partitioned source is pruned."""
    day = [TS + timedelta(days=d) for d in range(3)]
    rows = [
        (f"u{i}", f"v{i % 3}", day[d] + timedelta(minutes=i), 5.0, str(day[d].date()))
        for d in range(3)
        for i in range(4)
    ]
    src = str(tmp_path / "log")
    spark.createDataFrame(rows, SCHEMA + ", date string").write.partitionBy("date").parquet(src)
    source = ["events.source=path", f"events.path={src}", "events.date_column=date"]
    store = TableStore(spark, cfg_factory().storage)

    def ingest(dates: str, *extra: str):
        return run_ingest(spark, cfg_factory(*source, "events.mode=append", f"events.dates={dates}", *extra))

    assert ingest(f"{day[0].date()}..{day[1].date()}").written == 8
    version = store.version(WATCH_EVENTS)
    report = ingest(str(day[2].date()))
    assert (report.input_rows, report.written, report.outside_dates) == (4, 4, 0)  # one partition read
    assert store.read(WATCH_EVENTS).count() == 12 and store.version(WATCH_EVENTS) == version + 1
    before = sorted(store.read(WATCH_EVENTS).drop("run_id", "built_at", "params_hash").collect())
    ingest(str(day[2].date()))  # rerun of the same day
    assert sorted(store.read(WATCH_EVENTS).drop("run_id", "built_at", "params_hash").collect()) == before

    # a correction of day 1 from another source (no date column): day 1 only, other rows skipped
    corrected = spark.createDataFrame([("u9", "v9", day[1], 1.0), ("u8", "v8", day[0], 1.0)], SCHEMA)
    correction = ["events.mode=append", f"events.dates={day[1].date()}", LENIENT]
    with pytest.raises(RefusedWrite, match="where event_date BETWEEN"):  # 1 row for 4: the guard holds
        ingest_events(spark, cfg_factory(*correction), corrected)
    report = ingest_events(spark, cfg_factory(*correction, "storage.min_row_ratio=0"), corrected)
    assert (report.written, report.outside_dates) == (1, 1)
    per_day = {
        r["event_date"]: r["count"] for r in store.read(WATCH_EVENTS).groupBy("event_date").count().collect()
    }
    assert per_day == {day[0].date(): 4, day[1].date(): 1, day[2].date(): 4}


CHANGES = ["events.source=path", "events.format=delta", "events.mode=append", "events.read=changes"]


def _events(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.select("user_id", "video_id", "event_ts", "watch_seconds").collect())


def test_delta_source_read_by_change_feed(spark, cfg_factory, tmp_path):
    """events.read=changes: the first run reads the whole source; later runs replace exactly the dates
    that inserts, updates and deletes touched (their unchanged rows kept), and leave the others and,
    with nothing changed, the whole table as they were."""
    day = [TS + timedelta(days=d) for d in range(4)]
    rows = [(f"u{i}", f"v{i % 3}", day[d] + timedelta(minutes=i), 5.0) for d in range(3) for i in range(4)]
    src = str(tmp_path / "source")
    spark.createDataFrame(rows, SCHEMA).write.format("delta").option(
        "delta.enableChangeDataFeed", "true"
    ).save(src)
    cfg = cfg_factory(*CHANGES, f"events.path={src}")
    store = TableStore(spark, cfg.storage)

    def source_version() -> int:
        return DeltaTable.forPath(spark, src).history(1).first()["version"]

    assert run_ingest(spark, cfg).written == 12
    assert _events(store.read(WATCH_EVENTS)) == _events(spark.read.format("delta").load(src))
    first_run = store.read(WATCH_EVENTS).first()["run_id"]

    new = [(f"u{i}", "v9", day[3] + timedelta(minutes=i), 2.0) for i in range(2)]
    spark.createDataFrame(new, SCHEMA).write.format("delta").mode("append").save(src)
    source = DeltaTable.forPath(spark, src)
    source.update(
        f"user_id = 'u1' AND event_ts = TIMESTAMP'{rows[1][2].isoformat()}'", {"watch_seconds": "7.0"}
    )
    source.delete(f"user_id = 'u2' AND event_ts = TIMESTAMP'{rows[6][2].isoformat()}'")
    report = run_ingest(spark, cfg)
    assert (report.input_rows, report.written) == (4 + 3 + 2, 9)  # days 0, 1 and 3; day 2 not read
    held = store.read(WATCH_EVENTS)
    assert _events(held) == _events(spark.read.format("delta").load(src))
    untouched = held.where(F.col("event_date") == day[2].date())
    assert {r.run_id for r in untouched.collect()} == {first_run}
    assert store.commit_inputs(WATCH_EVENTS)["events_source_version"] == source_version()

    version = store.version(WATCH_EVENTS)
    report = run_ingest(spark, cfg)
    assert (report.input_rows, report.written) == (0, 0)
    assert store.version(WATCH_EVENTS) == version


def test_change_feed_read_needs_the_feed_enabled(spark, cfg_factory, tmp_path):
    """A source without the feed, or without change data since the recorded version: one line each."""
    src = str(tmp_path / "source")
    spark.createDataFrame(ROWS[:1], SCHEMA).write.format("delta").save(src)
    cfg = cfg_factory(*CHANGES, f"events.path={src}")
    with pytest.raises(
        InputSchemaError, match=r"no Change Data Feed; enable it with ALTER TABLE .*--set events.read=full$"
    ):
        run_ingest(spark, cfg)
    assert not TableStore(spark, cfg.storage).exists(WATCH_EVENTS)

    run_ingest(spark, cfg_factory(*CHANGES, f"events.path={src}", "events.read=full"))  # records v0
    spark.createDataFrame(ROWS[:1], SCHEMA).write.format("delta").mode("append").save(src)  # v1: no feed
    spark.sql(f"ALTER TABLE delta.`{src}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    with pytest.raises(InputSchemaError, match=r"change data of .* from v1 is not kept"):
        run_ingest(spark, cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["events.source=synthetic", "events.mode=append"],
            "needs events.source=path, events.format=delta and events.mode=append",
        ),
        ([*CHANGES[:2], "events.mode=replace"], r"\(got source=path, format=delta, mode=replace\)"),
        ([*CHANGES[:3], "events.dates=yesterday"], "unset events.dates"),
    ],
)
def test_change_feed_read_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LOCAL_CONF, [*overrides, "events.read=changes", "events.path=/x"])
