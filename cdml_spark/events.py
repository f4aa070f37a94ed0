"""Watch-event ingest: any source → schema check → row validation → `watch_events` + quarantine.

Schema problems (missing column, unusable type) raise `InputSchemaError` before anything is
written. Row problems go to `watch_events_quarantine` with the first rule that failed; exact
duplicates (same user, video, time, watch time) are dropped and counted.

A Delta source is read at one version, which `watch_events`' commit records. With
`events.read=changes` (and `events.mode=append`) ingest reads the source's Change Data Feed from
the version after the one recorded up to the current one, only to learn which UTC dates changed:
the dates of every row inserted, updated (before and after) or deleted. It then replaces exactly
those dates with the source's rows of those dates at the same version. Rows, not changes, are
ingested because append replaces whole dates: ingesting only the changed rows would drop a date's
unchanged rows, and a deleted row would stay. So a rerun changes nothing and `watch_events` ends
equal to what a full read of that version would give on the touched dates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdml_spark.config import AppConfig, EventsConfig
from cdml_spark.datasets import MOVIELENS, movielens_events
from cdml_spark.errors import InputSchemaError, RefusedWrite
from cdml_spark.tables import (
    WATCH_EVENTS,
    WATCH_EVENTS_QUARANTINE,
    Lineage,
    TableStore,
    check_quarantine,
    dates_in,
)

__all__ = ["IngestReport", "ingest_events", "read_events_source", "run_ingest", "validate_events"]

log = logging.getLogger(__name__)

_EVENT_COLUMNS = ("user_id", "video_id", "event_ts", "watch_seconds")


@dataclass(frozen=True)
class IngestReport:
    input_rows: int
    quarantined: dict[str, int]
    duplicates_dropped: int
    outside_dates: int
    written: int
    seconds: float

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(self.quarantined.items())) or "none"
        return (
            f"input {self.input_rows:,} rows; written {self.written:,}; duplicates dropped "
            f"{self.duplicates_dropped:,}; outside events.dates {self.outside_dates:,}; quarantined {sum(self.quarantined.values()):,} ({reasons}); "
            f"{self.seconds:.1f}s ({self.input_rows / max(self.seconds, 1e-9):,.0f} rows/s)"
        )


def read_events_source(spark: SparkSession, cfg: AppConfig, version: int | None = None) -> DataFrame:
    """The configured source with columns renamed to the canonical names (types not yet checked); a
    Delta source at `version` when given (else its current one)."""
    ev = cfg.events
    if ev.source in MOVIELENS:
        return movielens_events(spark, cfg.storage.cache_dir, ev.source)
    if ev.source == "synthetic":
        from cdml_spark.synthetic import generate_events

        return generate_events(spark, ev.synthetic)
    if not ev.path:
        raise InputSchemaError("events.source is 'path' but config key 'events.path' is not set")
    reader = spark.read.format(ev.format)
    if ev.format == "csv":
        reader = reader.option("header", "true")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    raw = reader.load(ev.path)
    if ev.date_column and ev.date_range():
        if ev.date_column not in raw.columns:
            raise InputSchemaError(
                f"events.date_column {ev.date_column!r} not found; input has {raw.columns}"
            )
        first, last = ev.date_range()
        raw = raw.where(F.col(f"`{ev.date_column}`").cast("date").between(first, last))  # partition pruning
    return _rename_columns(raw, ev)


def _rename_columns(raw: DataFrame, ev: EventsConfig, keep: tuple[str, ...] = ()) -> DataFrame:
    """The mapped columns under their canonical names (null watch_seconds when unmapped), plus `keep`."""
    mapping = ev.columns.model_dump()
    for canonical, source in mapping.items():
        if source is not None and source not in raw.columns:
            raise InputSchemaError(
                f"input column {source!r} (events.columns.{canonical}) not found; input has {raw.columns}"
            )
    return raw.select(
        *[
            F.col(f"`{src}`").alias(canonical) if src else F.lit(None).cast("double").alias(canonical)
            for canonical, src in mapping.items()
        ],
        *keep,
    )


def _id(df: DataFrame, name: str) -> Column:
    dtype = df.schema[name].dataType
    if not isinstance(dtype, (T.StringType, T.IntegralType)):
        raise InputSchemaError(f"column {name!r} has type {dtype.simpleString()}; expected string or integer")
    return F.col(name).cast("string")


# an epoch number as text: optional sign, integer or decimal, optional exponent (surrounding
# whitespace is stripped first)
_EPOCH_TEXT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _from_epoch(number: Column, unit: str) -> Column:
    """Timestamp of `number` seconds or milliseconds since the epoch, to the nearest microsecond
    (exact decimal arithmetic; NaN, infinities and overflows give null)."""
    micros_per_unit = 1_000 if unit == "milliseconds" else 1_000_000
    exact = number.cast("decimal(38,9)") * F.lit(micros_per_unit)
    return F.timestamp_micros(F.round(exact, 0).cast("long"))


def _from_text(text: Column, unit: str) -> Column:
    """Row by row: an epoch number (in `unit`) or a date/time string; null when neither parses."""
    stripped = F.regexp_replace(text, r"^\s+|\s+$", "")
    return F.when(stripped.rlike(_EPOCH_TEXT), _from_epoch(stripped, unit)).otherwise(
        F.try_to_timestamp(stripped)
    )


def _timestamp(df: DataFrame, unit: str) -> Column:
    """`event_ts` as a timestamp: timestamps/dates as they are, numbers and numeric strings as
    epoch `unit`, other strings as ISO date/times."""
    dtype = df.schema["event_ts"].dataType
    col = F.col("event_ts")
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return col.cast("timestamp")
    if isinstance(dtype, T.NumericType):
        return _from_epoch(col, unit)
    if isinstance(dtype, T.StringType):
        return _from_text(col, unit)
    raise InputSchemaError(
        f"column 'event_ts' has type {dtype.simpleString()}; expected timestamp, number or string"
    )


def _watch_seconds(df: DataFrame) -> Column:
    dtype = df.schema["watch_seconds"].dataType
    if not isinstance(dtype, (T.NumericType, T.StringType, T.NullType)):
        raise InputSchemaError(f"column 'watch_seconds' has type {dtype.simpleString()}; expected a number")
    return F.col("watch_seconds").cast("double")


def validate_events(df: DataFrame, ev: EventsConfig) -> DataFrame:
    """Canonical typed columns plus `reason` (null for a valid row). Schema errors raise here."""
    typed = df.select(
        _id(df, "user_id").alias("user_id"),
        _id(df, "video_id").alias("video_id"),
        _timestamp(df, ev.timestamp_unit).alias("event_ts"),
        _watch_seconds(df).alias("watch_seconds"),
        F.col("event_ts").isNotNull().alias("_ts_given"),
        F.col("watch_seconds").isNotNull().alias("_ws_given"),
    )
    lo, hi = (F.lit(t if t.tzinfo else t.replace(tzinfo=UTC)) for t in (ev.min_event_ts, ev.max_event_ts))
    ws = F.col("watch_seconds")
    rules = [
        (F.col("user_id").isNull(), "null_user_id"),
        (F.trim("user_id") == "", "empty_user_id"),
        (F.col("video_id").isNull(), "null_video_id"),
        (F.trim("video_id") == "", "empty_video_id"),
        (~F.col("_ts_given"), "null_event_ts"),
        (F.col("event_ts").isNull(), "invalid_event_ts"),
        ((F.col("event_ts") < lo) | (F.col("event_ts") > hi), "event_ts_out_of_range"),
        (F.col("_ws_given") & ws.isNull(), "invalid_watch_seconds"),
        (F.isnan(ws) | (F.abs(ws) == float("inf")), "non_finite_watch_seconds"),
        (ws < 0, "negative_watch_seconds"),
    ]
    reason = F.lit(None).cast("string")
    for condition, name in reversed(rules):
        reason = F.when(F.coalesce(condition, F.lit(False)), F.lit(name)).otherwise(reason)
    return typed.select(*_EVENT_COLUMNS, reason.alias("reason"))


def ingest_events(
    spark: SparkSession,
    cfg: AppConfig,
    source: DataFrame,
    run_id: str | None = None,
    inputs: dict | None = None,
    changed_dates: list[date] | None = None,
) -> IngestReport:
    """Validate `source` (canonical column names) and write `watch_events` and its quarantine:
    `events.mode=replace` replaces the table; `append` replaces only the UTC dates the input holds
    (all of `events.dates` when set; exactly `changed_dates` when given, which the input must hold
    only rows of), so rerunning a day changes nothing. Valid events outside `events.dates` are
    skipped and counted. `inputs` (e.g. the source version read) go into both commits."""
    start = time.time()
    ev = cfg.events
    checked = validate_events(source, ev).withColumn("event_date", F.to_date("event_ts"))  # raises first
    dates = ev.date_range()
    outside = F.lit(False)
    if dates:
        outside = F.col("reason").isNull() & ~F.col("event_date").between(*dates)
    store = TableStore(spark, cfg.storage)
    lineage = Lineage.new("ingest_events", ev.model_dump(), run_id)
    valid = (
        checked.where(F.col("reason").isNull() & ~outside)
        .drop("reason")
        .dropDuplicates(list(_EVENT_COLUMNS))
        .repartitionByRange("event_ts")  # files cover disjoint time ranges: time filters skip files
    )
    log.info("ingest: source=%s mode=%s dates=%s run_id=%s", ev.source, ev.mode, ev.dates, lineage.run_id)
    counted = checked.groupBy("reason", outside.alias("outside")).count().collect()
    quarantined: dict[str, int] = {}
    for r in counted:
        if r["reason"] is not None:
            quarantined[r["reason"]] = r["count"]
    input_rows = sum(r["count"] for r in counted)
    outside_rows = sum(r["count"] for r in counted if r["outside"])
    counts = {"input_rows": input_rows, "quarantined": quarantined, "outside_dates": outside_rows}
    if input_rows:  # the quarantine always describes the latest input, refused or not
        store.write(
            WATCH_EVENTS_QUARANTINE,
            checked.where(F.col("reason").isNotNull()).drop("event_date"),
            lineage,
            inputs=inputs,
            counts=counts,
        )
    check_quarantine(
        store.qualified(WATCH_EVENTS),
        input_rows,
        quarantined,
        ev.max_quarantine_fraction,
        "events.max_quarantine_fraction",
    )
    replaced = None
    if ev.mode == "append" and store.exists(WATCH_EVENTS):
        replaced = dates_in("event_date", changed_dates) if changed_dates else _replaced_dates(valid, dates)
    written = store.write(WATCH_EVENTS, valid, lineage, inputs=inputs, counts=counts, replace_where=replaced)
    report = IngestReport(
        input_rows=input_rows,
        quarantined=quarantined,
        duplicates_dropped=input_rows - outside_rows - written - sum(quarantined.values()),
        outside_dates=outside_rows,
        written=written,
        seconds=time.time() - start,
    )
    log.info("ingest: %s%s", report.summary(), f"; replaced {replaced}" if replaced else "")
    return report


def _replaced_dates(valid: DataFrame, dates: tuple[date, date] | None) -> str:
    """The `watch_events` rows an append replaces: `events.dates`, else the input's own dates."""
    if dates:
        return f"event_date BETWEEN DATE'{dates[0]}' AND DATE'{dates[1]}'"
    present = sorted(r["event_date"] for r in valid.select("event_date").distinct().collect())
    if not present:
        raise RefusedWrite("watch_events not changed: the input has no valid event to append")
    return dates_in("event_date", present)


def run_ingest(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> IngestReport:
    """Job entry: read the configured source and ingest it (a Delta source: see `_ingest_delta`)."""
    ev = cfg.events
    if ev.source == "path" and ev.format == "delta":
        return _ingest_delta(spark, cfg, run_id)
    return ingest_events(spark, cfg, read_events_source(spark, cfg), run_id)


_NEW_VALUES = ("insert", "update_postimage")  # the change types that hold a row's values after a commit
_GONE = ("DELTA_MISSING_CHANGE_DATA", "FileNotFoundException")  # change data not (or no longer) kept


def _ingest_delta(spark: SparkSession, cfg: AppConfig, run_id: str | None) -> IngestReport:
    """Ingest a Delta source at its current version v, recorded in `watch_events`' commit as
    `events_source_version` (with the table's id, and `events_source_synced`: watch_events then holds
    all the source's rows of v). With `events.read=changes` and a synced version recorded for this
    table, only the dates changed since are read (module docstring); none changed: nothing written."""
    start, ev = time.time(), cfg.events
    table_id, version, cdf = _source_table(spark, ev.path)
    inputs = {
        "events_source_id": table_id,
        "events_source_version": version,
        "events_source_synced": ev.dates is None,
    }
    since = None
    if ev.read == "changes":
        if not cdf:
            raise InputSchemaError(
                f"events.read=changes: the source {ev.path} has no Change Data Feed; enable it with "
                f"ALTER TABLE delta.`{ev.path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true), "
                "then ingest once with --set events.read=full"
            )
        since = _synced_version(TableStore(spark, cfg.storage), table_id)
    if since is None:
        return ingest_events(spark, cfg, read_events_source(spark, cfg, version), run_id, inputs)
    changed = _changed_dates(spark, ev, since, version) if since < version else []
    if not changed:
        log.info("ingest: no change in %s since v%s: watch_events left as it is", ev.path, since)
        return IngestReport(
            input_rows=0,
            quarantined={},
            duplicates_dropped=0,
            outside_dates=0,
            written=0,
            seconds=time.time() - start,
        )
    rows = read_events_source(spark, cfg, version)
    rows = rows.where(_event_date(rows, ev).isin(changed))
    return ingest_events(spark, cfg, rows, run_id, inputs, changed)


def _source_table(spark: SparkSession, path: str) -> tuple[str, int, bool]:
    """The Delta table at `path`: (its id, current version, whether it keeps a Change Data Feed)."""
    if not DeltaTable.isDeltaTable(spark, path):
        raise InputSchemaError(f"events.format=delta but events.path {path} is not a Delta table")
    table = DeltaTable.forPath(spark, path)
    detail = table.detail().first()
    cdf = detail["properties"].get("delta.enableChangeDataFeed", "false").lower() == "true"
    return detail["id"], table.history(1).first()["version"], cdf


def _synced_version(store: TableStore, table_id: str) -> int | None:
    """The source version the last ingest into `watch_events` synced it with, if that was this table."""
    noted = store.commit_inputs(WATCH_EVENTS) if store.exists(WATCH_EVENTS) else {}
    if noted.get("events_source_id") != table_id or not noted.get("events_source_synced"):
        log.info("ingest: no synced version of this source recorded in watch_events: reading all of it")
        return None
    return noted["events_source_version"]


def _event_date(df: DataFrame, ev: EventsConfig) -> Column:
    """UTC date of `df`'s (canonical) event_ts, as `validate_events` parses it; null if it does not parse."""
    return F.to_date(_timestamp(df, ev.timestamp_unit))


def _changed_dates(spark: SparkSession, ev: EventsConfig, since: int, version: int) -> list[date]:
    """The UTC dates of the rows that the source's commits since+1 .. version inserted, updated or
    deleted (its Change Data Feed); the counts per change type are logged."""
    feed = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", since + 1)
        .option("endingVersion", version)
    )
    try:
        changes = _rename_columns(feed.load(ev.path), ev, keep=("_change_type",))
        counted = changes.groupBy("_change_type", _event_date(changes, ev).alias("day")).count().collect()
    except Exception as exc:  # Delta's errors reach Python as AnalysisException or Py4JJavaError
        if not any(mark in str(exc) for mark in _GONE):
            raise
        raise InputSchemaError(
            f"events.read=changes: the change data of {ev.path} from v{since + 1} is not kept (recorded "
            "before the Change Data Feed was enabled, or vacuumed); ingest once with --set events.read=full"
        ) from None
    per_type: dict[str, int] = {}
    for r in counted:
        per_type[r["_change_type"]] = per_type.get(r["_change_type"], 0) + r["count"]
    undated = sum(r["count"] for r in counted if r["day"] is None and r["_change_type"] in _NEW_VALUES)
    changed = sorted({r["day"] for r in counted if r["day"] is not None})
    log.info(
        "ingest: %s v%s..v%s changed %s rows (%s without a valid event_ts, not ingested) on %d dates",
        ev.path,
        since + 1,
        version,
        ", ".join(f"{k}={v:,}" for k, v in sorted(per_type.items())) or "no",
        f"{undated:,}",
        len(changed),
    )
    return changed
