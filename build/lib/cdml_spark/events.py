"""Watch-event ingest: any source → schema check → row validation → `watch_events` + quarantine.

Schema problems (missing column, unusable type) raise `InputSchemaError` before anything is
written. Row problems go to `watch_events_quarantine` with the first rule that failed; exact
duplicates (same user, video, time, watch time) are dropped and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date

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


def read_events_source(spark: SparkSession, cfg: AppConfig) -> DataFrame:
    """The configured source with columns renamed to the canonical names (types not yet checked)."""
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
    raw = reader.load(ev.path)
    if ev.date_column and ev.date_range():
        if ev.date_column not in raw.columns:
            raise InputSchemaError(
                f"events.date_column {ev.date_column!r} not found; input has {raw.columns}"
            )
        first, last = ev.date_range()
        raw = raw.where(F.col(f"`{ev.date_column}`").cast("date").between(first, last))  # partition pruning
    return _rename_columns(raw, ev)


def _rename_columns(raw: DataFrame, ev: EventsConfig) -> DataFrame:
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
        ]
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
    spark: SparkSession, cfg: AppConfig, source: DataFrame, run_id: str | None = None
) -> IngestReport:
    """Validate `source` (canonical column names) and write `watch_events` and its quarantine:
    `events.mode=replace` replaces the table; `append` replaces only the UTC dates the input holds
    (all of `events.dates` when set), so rerunning a day changes nothing. Valid events outside
    `events.dates` are skipped and counted."""
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
            counts=counts,
        )
    check_quarantine(
        store.qualified(WATCH_EVENTS),
        input_rows,
        quarantined,
        ev.max_quarantine_fraction,
        "events.max_quarantine_fraction",
    )
    replaced = _replaced_dates(valid, dates) if ev.mode == "append" and store.exists(WATCH_EVENTS) else None
    written = store.write(WATCH_EVENTS, valid, lineage, counts=counts, replace_where=replaced)
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
    """Job entry: read the configured source and ingest it."""
    return ingest_events(spark, cfg, read_events_source(spark, cfg), run_id)
