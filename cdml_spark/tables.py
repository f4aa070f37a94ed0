"""The one place that names tables and their schemas, and reads/writes them as Delta.

Locally (`storage.tables_root` set) each table is a Delta folder `<tables_root>/<name>` registered
in the session catalog as `<database>.<name>`; on Unity Catalog (`tables_root: null`) it is the
managed table `<catalog>.<schema>.<name>`. A table is created once (empty, with its comment) and every write
is one atomic overwrite commit: a failed job leaves the previous version readable, a rerun replaces
(never appends), and the table id stays stable for streaming and change-feed readers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdml_spark.config import Modality, StorageConfig
from cdml_spark.errors import RefusedWrite

__all__ = [
    "ALL_TABLE_NAMES",
    "COWATCH_DAILY_PAIRS",
    "COWATCH_DAILY_VIDEOS",
    "COWATCH_DAYS",
    "COWATCH_WINDOW_PAIRS",
    "COWATCH_EDGES",
    "EVAL_METRICS",
    "FAULT_HOLD_ENV",
    "RELATED_VIDEOS",
    "USER_RECOMMENDATIONS",
    "VIDEO_EMBEDDINGS",
    "VIDEO_FEATURES_QUARANTINE",
    "VIDEO_KEYS",
    "VIDEO_METADATA",
    "VIDEO_NEIGHBORS",
    "VIDEO_SPLITS",
    "VIDEO_STATS",
    "WATCH_EVENTS",
    "WATCH_EVENTS_QUARANTINE",
    "Lineage",
    "TableSpec",
    "TableStore",
    "check_quarantine",
    "dates_in",
    "quote_dotted",
    "triplets_spec",
    "video_features_spec",
]

log = logging.getLogger(__name__)


def _field(name: str, dtype: T.DataType, comment: str, nullable: bool = True) -> T.StructField:
    return T.StructField(name, dtype, nullable, metadata={"comment": comment})


_LINEAGE_FIELDS = [
    _field("run_id", T.StringType(), "Id of the job run that wrote this row", False),
    _field("params_hash", T.StringType(), "SHA-256 prefix of the job's parameters", False),
    _field("built_at", T.TimestampType(), "UTC time the writing job started", False),
]


@dataclass(frozen=True)
class TableSpec:
    name: str
    comment: str = ""
    fields: tuple[T.StructField, ...] = ()
    partition_by: tuple[str, ...] = ()
    guarded: bool = True  # writes refuse an empty or much smaller result (quarantines, reports: False)

    @property
    def schema(self) -> T.StructType:
        return T.StructType([*self.fields, *_LINEAGE_FIELDS])


WATCH_EVENTS = TableSpec(
    "watch_events",
    "Validated, de-duplicated watch events: one row per (user, video, time) watch.",
    (
        _field("user_id", T.StringType(), "User id (source id as string)", False),
        _field("video_id", T.StringType(), "Video id (source id as string)", False),
        _field("event_ts", T.TimestampType(), "Watch time, UTC", False),
        _field("watch_seconds", T.DoubleType(), "Seconds watched; null = unknown (e.g. MovieLens)"),
        _field("event_date", T.DateType(), "UTC date of event_ts", False),
    ),
    # not partitioned (Databricks: no partitions under ~1 TB; daily ones are tiny files): files are
    # range-partitioned by event_ts, so time filters skip files by their min/max statistics
)

WATCH_EVENTS_QUARANTINE = TableSpec(
    "watch_events_quarantine",
    "Input watch events rejected by validation, with the first failed rule in `reason`.",
    (
        _field("user_id", T.StringType(), "User id as read (may be null/empty)"),
        _field("video_id", T.StringType(), "Video id as read (may be null/empty)"),
        _field("event_ts", T.TimestampType(), "Watch time as read, UTC"),
        _field("watch_seconds", T.DoubleType(), "Seconds watched as read"),
        _field("reason", T.StringType(), "Rule that rejected the row", False),
    ),
    guarded=False,
)

COWATCH_EDGES = TableSpec(
    "cowatch_edges",
    "Co-watch graph over the window's days: for each video its top-N co-watched videos (directed, ranked).",
    (
        _field("video_id", T.StringType(), "The video", False),
        _field("neighbor_id", T.StringType(), "A co-watched video", False),
        _field("rank", T.IntegerType(), "1 = strongest neighbour of video_id", False),
        _field(
            "cowatch_user_days", T.LongType(), "(user, day)s that watched both within the window hours", False
        ),
        _field(
            "score", T.DoubleType(), "cowatch_user_days / sqrt(video_user_days * neighbor_user_days)", False
        ),
        _field("video_user_days", T.LongType(), "(user, day)s with video_id exposed (see graph.py)", False),
        _field("neighbor_user_days", T.LongType(), "(user, day)s with neighbor_id exposed", False),
    ),
)

VIDEO_STATS = TableSpec(
    "video_stats",
    "Per-video watch statistics over the co-watch graph's window of days.",
    (
        _field("video_id", T.StringType(), "The video", False),
        _field("events", T.LongType(), "Watch events", False),
        _field("users", T.LongType(), "Distinct users", False),
        _field("user_days", T.LongType(), "(user, day)s with the video exposed (c_i of the cosine)", False),
        _field("first_watch", T.TimestampType(), "Earliest watch, UTC", False),
        _field("last_watch", T.TimestampType(), "Latest watch, UTC", False),
        _field("neighbors", T.LongType(), "Rows for this video in cowatch_edges", False),
    ),
)

VIDEO_KEYS = TableSpec(
    "video_keys",
    "Dictionary of the 64-bit video keys the graph computes with (key_a, key_b, key columns): every "
    "video a build_graph run has counted, added once and never changed (collisions are refused).",
    (
        _field("key", T.LongType(), "xxhash64 of video_id (Spark's; the same on every run)", False),
        _field("video_id", T.StringType(), "The video", False),
    ),
)

COWATCH_DAILY_PAIRS = TableSpec(
    "cowatch_daily_pairs",
    "graph.mode=incremental: per UTC day, users who co-watched each pair that day (all pairs, no threshold).",
    (
        _field("day", T.DateType(), "Day of the pair's later watch", False),
        _field("key_a", T.LongType(), "xxhash64 of one video id (key_a < key_b)", False),
        _field("key_b", T.LongType(), "xxhash64 of the other video id", False),
        _field("cowatch_users", T.LongType(), "Users who co-watched the pair that day", False),
    ),
    partition_by=("day",),
    guarded=False,  # a day may have no pairs
)

COWATCH_WINDOW_PAIRS = TableSpec(
    "cowatch_window_pairs",
    "graph.mode=incremental: each pair's co-watching user-days summed over the days held in "
    "cowatch_daily_pairs (the window); updated by the days added and removed, not re-summed.",
    (
        _field("key_a", T.LongType(), "xxhash64 of one video id (key_a < key_b)", False),
        _field("key_b", T.LongType(), "xxhash64 of the other video id", False),
        _field("cowatch_user_days", T.LongType(), "Sum of cowatch_users over the window's days (> 0)", False),
    ),
    guarded=False,  # its size follows the window, and it is rebuilt from cowatch_daily_pairs if in doubt
)

COWATCH_DAILY_VIDEOS = TableSpec(
    "cowatch_daily_videos",
    "graph.mode=incremental: per UTC day, users with each video exposed that day (graph.py, step 3).",
    (
        _field("day", T.DateType(), "The day", False),
        _field("video_id", T.StringType(), "The video", False),
        _field("key", T.LongType(), "xxhash64 of video_id (the key in cowatch_daily_pairs)", False),
        _field("exposed_users", T.LongType(), "Users with the video exposed that day", False),
    ),
    partition_by=("day",),
    guarded=False,
)

COWATCH_DAYS = TableSpec(
    "cowatch_days",
    "graph.mode=incremental: the days held in cowatch_daily_* and the inputs each was computed from.",
    (
        _field("day", T.DateType(), "The day", False),
        _field(
            "inputs_hash", T.StringType(), "Hash of the graph parameters and of the day's input events", False
        ),
        _field("events", T.LongType(), "watch_events rows on the day", False),
    ),
    guarded=False,
)

VIDEO_FEATURES_QUARANTINE = TableSpec(
    "video_features_quarantine",
    "Feature rows (or frames) rejected by validation, with the reason and the modality at fault.",
    (
        _field("video_id", T.StringType(), "Video id as read (may be null)"),
        _field("reason", T.StringType(), "missing_video_id, missing_vector, wrong_dimension, ...", False),
        _field("modality", T.StringType(), "Modality whose vector failed (null for id problems)"),
    ),
    guarded=False,
)

VIDEO_SPLITS = TableSpec(
    "video_splits",
    "Train / validation / cold_test split of every video with features (hash of id + salt, holdout file).",
    (
        _field("video_id", T.StringType(), "The video", False),
        _field("split", T.StringType(), "train, validation or cold_test", False),
        _field("users", T.LongType(), "Distinct users who watched it (0 = never watched)", False),
    ),
)

_FEATURE_DOC = "Content vector for modality"


def video_features_spec(modalities: Iterable[Modality]) -> TableSpec:
    """`video_features`: one array<float> column per configured modality."""
    return TableSpec(
        "video_features",
        "Video-level content features, one vector column per modality.",
        (
            _field("video_id", T.StringType(), "The video", False),
            *[
                _field(m.name, T.ArrayType(T.FloatType()), f"{_FEATURE_DOC} {m.name} ({m.dim}-d)", False)
                for m in modalities
            ],
            _field("feature_version", T.StringType(), "features.version of the run that computed it", False),
            _field(
                "inputs_hash",
                T.LongType(),
                "xxhash64 of the video's feature inputs (ingest_features recomputes the video when it changes)",
                False,
            ),
        ),
    )


def triplets_spec(modalities: Iterable[Modality], materialize: bool) -> TableSpec:
    """`triplets`: ids, split, and (materialised form) the three feature vectors per modality."""
    vectors = [
        _field(f"{role}_{m.name}", T.ArrayType(T.FloatType()), f"{role}'s {m.name} vector ({m.dim}-d)", False)
        for role in ("anchor", "positive", "negative")
        for m in modalities
    ]
    return TableSpec(
        "triplets",
        "Training triplets (anchor, co-watched positive, non-neighbour negative) for CDML.",
        (
            _field("anchor_id", T.StringType(), "Anchor video", False),
            _field("positive_id", T.StringType(), "A co-watch neighbour of the anchor", False),
            _field("negative_id", T.StringType(), "A sampled video that is not a co-watch neighbour", False),
            _field(
                "split", T.StringType(), "train or validation (the anchor's split; partition column)", False
            ),
            _field("edge_weight", T.DoubleType(), "Weight of the (anchor, positive) edge", False),
            *[
                _field(f"{role}_key", T.LongType(), f"xxhash64 of {role}_id (integer id for training)", False)
                for role in ("anchor", "positive", "negative")
            ],
            *(vectors if materialize else []),
        ),
        partition_by=("split",),
    )


VIDEO_METADATA = TableSpec(
    "video_metadata",
    "Titles and genres of the catalog, for people reading results (MovieLens item files).",
    (
        _field("video_id", T.StringType(), "The video", False),
        _field("title", T.StringType(), "Title with year, e.g. 'Toy Story (1995)'", False),
        _field("genres", T.ArrayType(T.StringType()), "Genres"),
    ),
)

VIDEO_EMBEDDINGS = TableSpec(
    "video_embeddings",
    "CDML embedding of every video with features (cold ones included), unit L2 norm.",
    (
        _field("video_id", T.StringType(), "The video", False),
        _field("embedding", T.ArrayType(T.FloatType()), "Unit-norm embedding; cosine = dot product", False),
        _field("model_version", T.StringType(), "Model that produced it", False),
        _field("features_hash", T.LongType(), "xxhash64 of the feature vectors it was computed from", False),
    ),
)

VIDEO_NEIGHBORS = TableSpec(
    "video_neighbors",
    "For each video its top-K most similar videos by embedding cosine.",
    (
        _field("video_id", T.StringType(), "The query video", False),
        _field("neighbor_id", T.StringType(), "A similar video", False),
        _field("rank", T.IntegerType(), "1 = most similar", False),
        _field("score", T.FloatType(), "Cosine similarity", False),
        _field("model_version", T.StringType(), "Model of the embeddings", False),
        _field(
            "embedding_hash", T.LongType(), "xxhash64 of the query video's embedding the list is for", False
        ),
    ),
)

RELATED_VIDEOS = TableSpec(
    "related_videos",
    "For each video its top-K related videos: co-watch and embedding neighbours in one list, weighted by "
    "the video's co-watch support (cdml_spark/serving/blend.py).",
    (
        _field("video_id", T.StringType(), "The query video", False),
        _field("neighbor_id", T.StringType(), "A related video", False),
        _field("rank", T.IntegerType(), "1 = most related", False),
        _field(
            "score",
            T.DoubleType(),
            "w · co-watch cosine (0 if not a co-watch neighbour) + (1 − w) · embedding cosine",
            False,
        ),
        _field(
            "source",
            T.StringType(),
            "cowatch, embedding or both: the neighbour lists (cowatch_edges, video_neighbors) it is in",
            False,
        ),
        _field(
            "cowatch_weight",
            T.DoubleType(),
            "w = s / (s + related.support_half_weight), s = video_stats.user_days of video_id",
            False,
        ),
        _field("model_version", T.StringType(), "Model of the embeddings", False),
    ),
)

USER_RECOMMENDATIONS = TableSpec(
    "user_recommendations",
    "Top-K unwatched videos per user by mean cosine to the user's most recent watches.",
    (
        _field("user_id", T.StringType(), "The user", False),
        _field("video_id", T.StringType(), "Recommended video (never one the user watched)", False),
        _field("rank", T.IntegerType(), "1 = best", False),
        _field("score", T.FloatType(), "Mean cosine similarity to the user's recent history", False),
        _field("model_version", T.StringType(), "Model of the embeddings", False),
    ),
)

EVAL_METRICS = TableSpec(
    "eval_metrics",
    "Offline evaluation (jobs/evaluate.py): retrieval, recommendation and genre classification "
    "metrics of CDML and baselines per dataset and protocol; definitions in cdml_spark/evaluation/metrics.py.",
    (
        _field("model_version", T.StringType(), "CDML model evaluated (null for baselines)"),
        _field("dataset", T.StringType(), "events.source evaluated, e.g. movielens-1m", False),
        _field(
            "protocol",
            T.StringType(),
            "time_split (per user, the latest watches held out) or user_holdout (held-out users' "
            "co-watch graph, retrieval only); see README Evaluation",
            False,
        ),
        _field("task", T.StringType(), "retrieval, recommendation or classification", False),
        _field(
            "method",
            T.StringType(),
            "random, popularity, raw_features, cooccurrence_cf, cdml_early, ...",
            False,
        ),
        _field("item_split", T.StringType(), "warm or cold (queries / candidates, see README), all", False),
        _field("metric", T.StringType(), "ndcg, map, recall, gap", False),
        _field("k", T.IntegerType(), "Cut-off; null = none (classification MAP)"),
        _field("value", T.DoubleType(), "Metric value", False),
        _field("support", T.LongType(), "Queries, users or videos averaged over", False),
    ),
    guarded=False,
)

# every table, in pipeline order (the two spec factories' names do not depend on their arguments)
ALL_TABLE_NAMES = tuple(
    spec.name
    for spec in (
        WATCH_EVENTS,
        WATCH_EVENTS_QUARANTINE,
        COWATCH_EDGES,
        VIDEO_STATS,
        VIDEO_KEYS,
        COWATCH_DAILY_PAIRS,
        COWATCH_WINDOW_PAIRS,
        COWATCH_DAILY_VIDEOS,
        COWATCH_DAYS,
        video_features_spec(()),
        VIDEO_FEATURES_QUARANTINE,
        VIDEO_SPLITS,
        triplets_spec((), materialize=False),
        VIDEO_METADATA,
        VIDEO_EMBEDDINGS,
        VIDEO_NEIGHBORS,
        RELATED_VIDEOS,
        USER_RECOMMENDATIONS,
        EVAL_METRICS,
    )
)

_RETENTION_PROPERTIES = ("delta.logRetentionDuration", "delta.deletedFileRetentionDuration")
# commits that leave the rows as they were (a recorded input version stays current across them)
_NON_DATA_OPERATIONS = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "REORG"}
)


def _retention_properties(hours: int) -> dict[str, str]:
    """Delta table properties that keep `hours` of history (log entries and removed data files)."""
    return {key: f"interval {hours} hours" for key in _RETENTION_PROPERTIES}


def _quote(part: str) -> str:
    return "`" + part.replace("`", "``") + "`"


def quote_dotted(name: str) -> str:
    """A dotted name (`db`, `catalog.schema`, `db.table`) as a quoted SQL identifier."""
    return ".".join(_quote(part) for part in name.split("."))


@dataclass(frozen=True)
class Lineage:
    run_id: str
    params_hash: str
    built_at: datetime

    @classmethod
    def new(cls, job: str, params: dict, run_id: str | None = None) -> Lineage:
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
        now = datetime.now(UTC).replace(microsecond=0)
        return cls(run_id or f"{job}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", digest, now)

    def columns(self) -> list[Column]:
        return [
            F.lit(self.run_id).alias("run_id"),
            F.lit(self.params_hash).alias("params_hash"),
            F.lit(self.built_at.replace(tzinfo=None)).cast("timestamp").alias("built_at"),
        ]


_COMMIT_METADATA = "spark.databricks.delta.commitInfo.userMetadata"  # a MERGE's userMetadata


def _conformed(spec: TableSpec, df: DataFrame, lineage: Lineage) -> DataFrame:
    """`df` as `spec`'s rows: its columns cast to the spec's types, with their comments, plus lineage;
    `ValueError` naming the columns `df` lacks."""
    missing = [f.name for f in spec.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"{spec.name}: DataFrame lacks columns {missing}")
    cols = [*[F.col(f.name).cast(f.dataType) for f in spec.fields], *lineage.columns()]
    return df.select(
        *[c.alias(f.name, metadata=f.metadata) for c, f in zip(cols, spec.schema.fields, strict=False)]
    )


def dates_in(column: str, dates: Iterable[date]) -> str:
    """SQL condition `column IN (DATE'…', …)` for a replaceWhere (`dates` must not be empty)."""
    return f"{column} IN (" + ", ".join(f"DATE'{d}'" for d in dates) + ")"


def check_quarantine(
    table: str, input_rows: int, quarantined: dict[str, int], limit: float, key: str
) -> None:
    """Refuse an input that is empty or whose invalid share exceeds `limit` (config `key`)."""
    if input_rows == 0:
        raise RefusedWrite(f"{table} not replaced: the input has 0 rows")
    bad = sum(quarantined.values())
    if bad > limit * input_rows:
        reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(quarantined.items(), key=lambda kv: -kv[1]))
        raise RefusedWrite(
            f"{table} not replaced: {bad:,} of {input_rows:,} input rows invalid ({bad / input_rows:.1%} > "
            f"{key}={limit}): {reasons}; the rows and reasons are in the quarantine table"
        )


FAULT_HOLD_ENV = "CDML_FAULT_HOLD_WRITE"


def _fault_hold(spec: TableSpec, df: DataFrame) -> DataFrame:
    """Test hook, in the spirit of Delta's own test hooks; `df` unchanged unless the environment sets
    CDML_FAULT_HOLD_WRITE=<table>:<gate file>. Then the write of <table> runs as two tasks: the
    first writes its data files, the second waits until <gate file> exists (at most 10 minutes), so
    the transaction is open, with uncommitted files in the table folder, until the gate is opened.
    tests/test_faults.py uses it to run two writers' transactions at the same time."""
    table, _, gate = os.environ.get(FAULT_HOLD_ENV, "").partition(":")
    if table != spec.name or not gate:
        return df
    log.warning("%s: %s set: holding the write until %s exists", spec.name, FAULT_HOLD_ENV, gate)

    def passed(task: int) -> bool:
        deadline = time.time() + 600
        while task > 0 and not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.05)
        return True

    gate_udf = F.udf(passed, T.BooleanType()).asNondeterministic()
    return df.repartition(2).where(gate_udf(F.spark_partition_id()))


class TableStore:
    """Reads and writes the project's tables by spec, wherever the config puts them."""

    def __init__(self, spark: SparkSession, storage: StorageConfig):
        self.spark = spark
        self.storage = storage
        self.local = storage.tables_root is not None
        database = quote_dotted(storage.database)
        spark.sql(f"CREATE {'DATABASE' if self.local else 'SCHEMA'} IF NOT EXISTS {database}")
        if self.local:
            self._register_existing()

    def qualified(self, spec: TableSpec) -> str:
        return f"{self.storage.database}.{spec.name}"

    def path(self, spec: TableSpec) -> str | None:
        return os.path.abspath(os.path.join(self.storage.tables_root, spec.name)) if self.local else None

    def exists(self, spec: TableSpec) -> bool:
        if self.local:
            return os.path.isdir(os.path.join(self.path(spec), "_delta_log"))
        return self.spark.catalog.tableExists(self.qualified(spec))

    def read(self, spec: TableSpec, version: int | None = None) -> DataFrame:
        """The table's current rows, or those of an earlier `version` (Delta time travel)."""
        if not self.exists(spec):
            raise FileNotFoundError(
                f"table {self.qualified(spec)} does not exist yet ({self.path(spec) or ''}): "
                "run the job that builds it first"
            )
        if version is not None:
            return self.spark.sql(f"SELECT * FROM {self.identifier(spec)} VERSION AS OF {int(version)}")
        if self.local:  # by path: the session catalog may hold another tables_root's registration
            return self.spark.read.format("delta").load(self.path(spec))
        return self.spark.table(self.qualified(spec))

    def read_external(self, spec: TableSpec, path: str) -> tuple[DataFrame, int]:
        """A `spec` table kept outside this store (e.g. a previous model's `video_neighbors`), by its
        Delta folder `path`: (its current version's rows, that version) for the caller's lineage."""
        if not DeltaTable.isDeltaTable(self.spark, path):
            raise FileNotFoundError(f"no Delta table at {path} (a {spec.name} table was expected)")
        version = DeltaTable.forPath(self.spark, path).history(1).first()["version"]
        return self.spark.read.format("delta").option("versionAsOf", version).load(path), version

    def location(self, spec: TableSpec) -> str:
        """Storage location of the table (its folder locally; from DESCRIBE DETAIL on a catalog)."""
        if self.local:
            return self.path(spec)
        return self.spark.sql(f"DESCRIBE DETAIL {self.identifier(spec)}").first()["location"]

    def version(self, spec: TableSpec) -> int:
        """Current Delta version of the table (input identity for lineage)."""
        return self.delta_table(spec).history(1).first()["version"]

    def commit_inputs(self, spec: TableSpec) -> dict:
        """The `inputs` recorded by the table's latest write ({} if none; maintenance commits such as
        OPTIMIZE or VACUUM are skipped)."""
        latest = (
            self.delta_table(spec)
            .history()
            .where(~F.col("operation").isin(*_NON_DATA_OPERATIONS))
            .orderBy(F.desc("version"))
            .select("userMetadata")
            .first()
        )
        raw = latest["userMetadata"] if latest else None
        return json.loads(raw) if raw else {}

    def delta_table(self, spec: TableSpec) -> DeltaTable:
        """The table's DeltaTable handle (history, detail, optimize, vacuum)."""
        if self.local:
            return DeltaTable.forPath(self.spark, self.path(spec))
        return DeltaTable.forName(self.spark, self.qualified(spec))

    def identifier(self, spec: TableSpec) -> str:
        """The table as a quoted SQL identifier (by path locally, as `read` does)."""
        if self.local:
            return f"delta.{_quote(self.path(spec))}"
        return quote_dotted(self.qualified(spec))

    def commit(self, spec: TableSpec, version: int) -> dict | None:
        """`version`'s commit: {version, operation, epoch (seconds), inputs (its userMetadata)}; None
        once the log no longer holds it."""
        rows = (
            self.delta_table(spec)
            .history()
            .where(F.col("version") == version)
            .select("version", "operation", F.col("timestamp").cast("long").alias("epoch"), "userMetadata")
            .collect()
        )
        if not rows:
            return None
        raw = rows[0]["userMetadata"]
        return {**rows[0].asDict(), "inputs": json.loads(raw) if raw else {}}

    def data_changed_since(self, spec: TableSpec, version: int) -> bool:
        """Whether the rows may differ from `version`'s: a later commit other than OPTIMIZE, VACUUM or
        a property change, or later commits missing from the log."""
        later = (
            self.delta_table(spec).history().where(F.col("version") > version).select("operation").collect()
        )
        gaps = len(later) != self.version(spec) - version
        return gaps or any(r["operation"] not in _NON_DATA_OPERATIONS for r in later)

    def set_retention(self, spec: TableSpec, hours: int) -> bool:
        """Set the table's retention properties to `hours` (one commit) unless they already are."""
        wanted = _retention_properties(hours)
        current = self.delta_table(spec).detail().first()["properties"]
        if all(current.get(k) == v for k, v in wanted.items()):
            return False
        props = ", ".join(f"'{k}' = '{v}'" for k, v in wanted.items())
        self.spark.sql(f"ALTER TABLE {self.identifier(spec)} SET TBLPROPERTIES ({props})")
        return True

    def write(
        self,
        spec: TableSpec,
        df: DataFrame,
        lineage: Lineage,
        inputs: dict | None = None,
        counts: dict | None = None,
        replace_where: str | None = None,
    ) -> int:
        """Replace `spec`'s table with `df` (cast to the spec's columns, with their comments) plus lineage,
        in one atomic commit; returns the rows written. The commit's userMetadata (JSON) holds the run id,
        the row count, `counts` (e.g. quarantined rows) and `inputs` (e.g. the Delta versions read; read
        back by `commit_inputs`). A guarded spec's write is refused (`RefusedWrite`, table untouched)
        when `df` is empty or has fewer than `storage.min_row_ratio` × the current version's rows.
        With `replace_where` (a SQL condition) only the rows matching it are replaced (Delta
        replaceWhere; `df` must match it too) and the guard compares with those rows."""
        # counted for the guard, then written from the cache
        out = _conformed(spec, df, lineage).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            rows = out.count()
            if spec.guarded:
                self.check_rows(spec, rows, replace_where)
            self._create_or_migrate(spec)
            metadata = {"run_id": lineage.run_id, "rows": rows, **(counts or {}), **(inputs or {})}
            writer = (
                _fault_hold(spec, out).write.format("delta").mode("overwrite").partitionBy(*spec.partition_by)
            )
            writer = writer.option("userMetadata", json.dumps(metadata, default=str))
            if replace_where:
                writer = writer.option("replaceWhere", replace_where)
            if self.local:
                writer.save(self.path(spec))
            else:
                writer.saveAsTable(self.qualified(spec))
        finally:
            out.unpersist()
        log.info("%s: %s rows written (v%s)", self.qualified(spec), f"{rows:,}", self.version(spec))
        return rows

    def upsert(
        self,
        spec: TableSpec,
        rows: DataFrame,
        lineage: Lineage,
        keys: list[str],
        deleted: DataFrame | None = None,
        inputs: dict | None = None,
    ) -> int:
        """One Delta MERGE on `keys`: `rows` replace the rows with their keys or are added, and the rows
        whose keys are in `deleted` (a frame of the key columns) are removed; other rows keep their
        values and lineage. The commit's userMetadata holds the run id, the rows upserted and deleted
        and `inputs`, as `write` records them. Returns the rows upserted."""
        out = _conformed(spec, rows, lineage).withColumn("_delete", F.lit(False))
        if deleted is not None:
            out = out.unionByName(
                deleted.select(*keys).withColumn("_delete", F.lit(True)), allowMissingColumns=True
            )
        out = out.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            upserted = out.where(~F.col("_delete")).count()
            removed = out.count() - upserted
            if upserted == removed == 0:
                log.info("%s: nothing to change (stays at v%s)", self.qualified(spec), self.version(spec))
                return 0
            metadata = {"run_id": lineage.run_id, "rows": upserted, "deleted": removed, **(inputs or {})}
            values = {c: F.col(f"s.{c}") for c in [f.name for f in (*spec.fields, *_LINEAGE_FIELDS)]}
            previous = self.spark.conf.get(_COMMIT_METADATA, None)
            self.spark.conf.set(_COMMIT_METADATA, json.dumps(metadata, default=str))
            try:
                (
                    self.delta_table(spec)
                    .alias("t")
                    .merge(out.alias("s"), " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys))
                    .whenMatchedDelete("s._delete")
                    .whenMatchedUpdate(set=values)
                    .whenNotMatchedInsert("NOT s._delete", values=values)
                    .execute()
                )
            finally:
                if previous is None:
                    self.spark.conf.unset(_COMMIT_METADATA)
                else:
                    self.spark.conf.set(_COMMIT_METADATA, previous)
        finally:
            out.unpersist()
        log.info(
            "%s: %s rows upserted, %s deleted (v%s)",
            self.qualified(spec),
            f"{upserted:,}",
            f"{removed:,}",
            self.version(spec),
        )
        return upserted

    def check_rows(self, spec: TableSpec, rows: int, replace_where: str | None = None) -> None:
        """Refuse (`RefusedWrite`) an empty result, or one under `min_row_ratio` × the current version's
        rows (those matching `replace_where`, when given): the guard of `write`, for an upsert's result."""
        current = 0
        if self.exists(spec):  # Delta answers a plain count from file stats
            table = self.read(spec)
            current = (table.where(replace_where) if replace_where else table).count()
        where = f"{self.qualified(spec)} not replaced" + (f" where {replace_where}" if replace_where else "")
        if rows == 0:
            held = (
                f"it stays at v{self.version(spec)} with {current:,} rows" if current else "it is left as is"
            )
            raise RefusedWrite(f"{where}: the job produced 0 rows; {held}")
        ratio = self.storage.min_row_ratio
        if rows < ratio * current:
            raise RefusedWrite(
                f"{where}: {rows:,} new rows < storage.min_row_ratio={ratio} × {current:,} rows of "
                f"v{self.version(spec)}; for a deliberate shrink rerun with --set storage.min_row_ratio=0"
            )

    def _create_or_migrate(self, spec: TableSpec) -> None:
        """Create the empty table (schema with NOT NULLs and comments, table comment) if missing. An
        existing table with another schema or partitioning (left by an older code version) is
        replaced by the empty new one first (its own commit; the old data stays in the history). Both
        keep `storage.retention_hours` of history (`_retention_properties`)."""
        if self.exists(spec):
            current = [(f.name, f.dataType, f.nullable) for f in self.read(spec).schema]
            partitions = tuple(self.delta_table(spec).detail().first()["partitionColumns"])
            if (
                current == [(f.name, f.dataType, f.nullable) for f in spec.schema]
                and partitions == spec.partition_by
            ):
                return
            log.warning(
                "%s: schema or partitioning changed since the last write; replacing the table",
                self.qualified(spec),
            )
            builder = DeltaTable.replace(self.spark)
        else:
            builder = DeltaTable.createIfNotExists(self.spark)
        # locally the table is created by path and registered by name afterwards
        builder = builder.location(self.path(spec)) if self.local else builder.tableName(self.qualified(spec))
        builder = builder.addColumns(spec.schema).partitionedBy(*spec.partition_by).comment(spec.comment)
        for key, value in _retention_properties(self.storage.retention_hours).items():
            builder = builder.property(key, value)
        # some jobs read a snapshot's parquet files directly (training loader, neighbour search): an
        # upsert (MERGE) must rewrite files, not mark rows deleted (Databricks enables these by default)
        builder.property("delta.enableDeletionVectors", "false").execute()
        if self.local:
            self._register(spec.name)

    def _register_existing(self) -> None:
        for name in ALL_TABLE_NAMES:
            if os.path.isdir(os.path.join(self.storage.tables_root, name, "_delta_log")):
                self._register(name)

    def _register(self, name: str) -> None:
        """Register the Delta folder `name` as `<database>.<name>` unless that name is taken (the
        catalog API: the path never goes through SQL text)."""
        table = f"{quote_dotted(self.storage.database)}.{_quote(name)}"
        if not self.spark.catalog.tableExists(table):
            path = os.path.abspath(os.path.join(self.storage.tables_root, name))
            self.spark.catalog.createTable(table, path=path, source="delta")
