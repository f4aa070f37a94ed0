"""Video-level content features: any source → validation → `video_features` (+ quarantine).

Sources (config `features.source`):
- `movielens`: text = all-MiniLM-L6-v2 embedding of "title (year) genres"; meta = genre multi-hot
  plus (ML-100K) hashed knowledge-graph relations (see `movielens_features`);
- `synthetic`: vectors around each synthetic video's topic centre (content predicts co-watch);
- `frames`: frame-level vectors → PCA → mean-pool per video (`cdml_spark.features.frames`);
- `path`: a parquet/Delta table of video_id + one array column per modality.
All of them pass `validate_features`: a null/short id, a missing, wrong-length or non-finite vector
sends the row to `video_features_quarantine` with the reason; duplicate ids keep one row.
"""

from __future__ import annotations

import logging
import time

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdml_spark.config import AppConfig, FeaturesConfig
from cdml_spark.errors import InputSchemaError
from cdml_spark.tables import (
    VIDEO_FEATURES_QUARANTINE,
    VIDEO_METADATA,
    Lineage,
    TableStore,
    check_quarantine,
    video_features_spec,
)

__all__ = ["ingest_features", "validate_features", "write_features"]

log = logging.getLogger(__name__)


def _vector_problem(col: Column, dim: int) -> Column:
    non_finite = F.exists(col, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
    return (
        F.when(col.isNull(), "missing_vector")
        .when(F.size(col) != dim, "wrong_dimension")
        .when(non_finite, "non_finite_values")
    )


def _divide_by(norm: str):
    return lambda x: x / F.col(norm)


def _l2_normalize(df: DataFrame, names: list[str]) -> DataFrame:
    """Unit-length vectors in columns `names` (all-zero vectors stay as they are). Each norm is a
    column of its own: inside the `transform` lambda it would be recomputed per element (O(d²))."""
    squares = {n: F.aggregate(n, F.lit(0.0), lambda acc, x: acc + x * x) for n in names}
    with_norms = df.select("*", *[F.sqrt(sq).alias(f"_norm_{n}") for n, sq in squares.items()])
    scaled = {
        n: F.when(F.col(f"_norm_{n}") > 0, F.transform(n, _divide_by(f"_norm_{n}"))).otherwise(F.col(n))
        for n in names
    }
    return with_norms.select(*[scaled.get(c, F.col(c)).alias(c) for c in df.columns])


def validate_features(df: DataFrame, cfg: FeaturesConfig) -> tuple[DataFrame, DataFrame]:
    """(valid rows: video_id + one array<float> per modality, quarantine rows with reasons)."""
    names = [m.name for m in cfg.modalities]
    for name in ["video_id", *names]:
        if name not in df.columns:
            raise InputSchemaError(f"features input lacks column {name!r}; has {df.columns}")
    for m in cfg.modalities:
        dtype = df.schema[m.name].dataType
        if not (isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType)):
            raise InputSchemaError(
                f"feature column {m.name!r} has type {dtype.simpleString()}; expected array<float>"
            )
    typed = df.select(
        F.col("video_id").cast("string").alias("video_id"),
        *[F.col(n).cast("array<double>").alias(n) for n in names],
    )
    id_problem = F.when(F.col("video_id").isNull() | (F.trim("video_id") == ""), F.lit("missing_video_id"))
    vector_problems = [(m.name, _vector_problem(F.col(m.name), m.dim)) for m in cfg.modalities]
    bad_modality = F.coalesce(*[F.when(p.isNotNull(), F.lit(n)) for n, p in vector_problems])
    problem = F.coalesce(id_problem, *[p for _, p in vector_problems])
    # one valid row per video (the lowest content hash, then content, among the valid ones only):
    # an invalid row never makes a valid one a duplicate
    first_valid = Window.partitionBy("video_id", problem.isNull()).orderBy(F.xxhash64(*names), *names)
    duplicate = F.when(F.row_number().over(first_valid) > 1, F.lit("duplicate_video_id"))
    checked = typed.select(
        "*",
        F.coalesce(problem, duplicate).alias("reason"),
        F.when(id_problem.isNull(), bad_modality).alias("modality"),
    )
    valid = checked.where(F.col("reason").isNull()).select("video_id", *names)
    if cfg.l2_normalize:
        valid = _l2_normalize(valid, names)
    valid = valid.select("video_id", *[F.col(n).cast("array<float>").alias(n) for n in names])
    quarantine = checked.where(F.col("reason").isNotNull()).select("video_id", "reason", "modality")
    return valid, quarantine


def _reason_counts(quarantine: DataFrame) -> dict[str, int]:
    return {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}


def write_features(
    spark: SparkSession,
    cfg: AppConfig,
    source: DataFrame,
    run_id: str | None = None,
    upstream_quarantine: DataFrame | None = None,
) -> dict:
    """Validate `source` and replace `video_features` and its quarantine; returns counts."""
    start = time.time()
    source = source.persist(
        StorageLevel.MEMORY_AND_DISK
    )  # computed once (text encoding is costly), read twice
    valid, quarantine = validate_features(source, cfg.features)  # schema errors raise before writing
    input_rows = source.count()
    invalid_videos = _reason_counts(quarantine)
    reasons = dict(invalid_videos)
    if upstream_quarantine is not None:  # bad frames: reported, but not part of the videos' invalid share
        quarantine = quarantine.unionByName(upstream_quarantine)
        for reason, count in _reason_counts(upstream_quarantine).items():
            reasons[reason] = reasons.get(reason, 0) + count
    counts = {"input_rows": input_rows, "quarantined": reasons}
    store = TableStore(spark, cfg.storage)
    lineage = Lineage.new("ingest_features", cfg.features.model_dump(), run_id)
    spec = video_features_spec(cfg.features.modalities)
    if input_rows:
        store.write(VIDEO_FEATURES_QUARANTINE, quarantine, lineage, counts=counts)
    check_quarantine(
        store.qualified(spec),
        input_rows,
        invalid_videos,
        cfg.features.max_quarantine_fraction,
        "features.max_quarantine_fraction",
    )
    written = store.write(
        spec, valid.withColumn("feature_version", F.lit(cfg.features.version)), lineage, counts=counts
    )
    source.unpersist()
    seconds = time.time() - start
    log.info(
        "features: %s videos written (%s), quarantined %s %s in %.1fs (%.0f videos/s)",
        f"{written:,}",
        ", ".join(f"{m.name}[{m.dim}]" for m in cfg.features.modalities),
        f"{sum(reasons.values()):,}",
        reasons or "",
        seconds,
        written / max(seconds, 1e-9),
    )
    return {"written": written, "quarantined": reasons, "seconds": seconds}


def _read_features_path(spark: SparkSession, cfg: FeaturesConfig) -> DataFrame:
    """A user's video-level vectors, columns renamed per `features.columns`."""
    if not cfg.path:
        raise InputSchemaError("features.source is 'path' but config key 'features.path' is not set")
    raw = spark.read.format(cfg.format).load(cfg.path)
    wanted = ["video_id", *[m.name for m in cfg.modalities]]
    for name in wanted:
        source = cfg.columns.get(name, name)
        if source not in raw.columns:
            raise InputSchemaError(
                f"input column {source!r} (features.columns.{name}) not found; input has {raw.columns}"
            )
    return raw.select(*[F.col(f"`{cfg.columns.get(n, n)}`").alias(n) for n in wanted])


def _video_metadata(spark: SparkSession, cfg: AppConfig, store: TableStore) -> DataFrame:
    """Titles/genres for people reading results: MovieLens item files; synthetic videos get their
    latent topic as genre; other sources their id as title."""
    ids = store.read(video_features_spec(cfg.features.modalities)).select("video_id")
    if cfg.features.source == "movielens":
        from cdml_spark.datasets import movielens_items

        items = movielens_items(spark, cfg.storage.cache_dir, cfg.events.source)
        title = F.when(F.col("year").isNull(), F.col("title")).otherwise(
            F.format_string("%s (%d)", "title", "year")
        )
        return ids.join(items.select("video_id", title.alias("title"), "genres"), "video_id", "left").select(
            "video_id", F.coalesce("title", "video_id").alias("title"), "genres"
        )
    if cfg.features.source == "synthetic":
        topic = F.pmod(F.substring("video_id", 2, 20).cast("long"), F.lit(cfg.events.synthetic.num_topics))
        return ids.select(
            "video_id",
            F.col("video_id").alias("title"),
            F.array(F.format_string("topic %d", topic)).alias("genres"),
        )
    return ids.select(
        "video_id", F.col("video_id").alias("title"), F.lit(None).cast("array<string>").alias("genres")
    )


def ingest_features(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> dict:
    """Job entry: compute or read the configured features source into `video_features` (and
    `video_metadata`)."""
    lineage = Lineage.new("ingest_features", cfg.features.model_dump(), run_id)
    report = _write_source(spark, cfg, lineage.run_id)
    store = TableStore(spark, cfg.storage)
    store.write(VIDEO_METADATA, _video_metadata(spark, cfg, store), lineage)
    return report


def _write_source(spark: SparkSession, cfg: AppConfig, run_id: str | None) -> dict:
    source = cfg.features.source
    log.info("features: source=%s version=%s", source, cfg.features.version)
    if source == "movielens":
        from cdml_spark.features.movielens import movielens_features

        return write_features(spark, cfg, movielens_features(spark, cfg), run_id)
    if source == "synthetic":
        from cdml_spark.synthetic import synthetic_features

        return write_features(spark, cfg, synthetic_features(spark, cfg), run_id)
    if source == "frames":
        from cdml_spark.features.frames import frame_features

        pooled, bad_frames = frame_features(spark, cfg)
        return write_features(spark, cfg, pooled, run_id, upstream_quarantine=bad_frames)
    return write_features(spark, cfg, _read_features_path(spark, cfg.features), run_id)
