"""Video-level content features: any source → validation → `video_features` (+ quarantine).

Sources (config `features.source`):
- `movielens`: text = all-MiniLM-L6-v2 embedding of "title (year) genres"; meta = genre multi-hot
  plus (ML-100K) hashed knowledge-graph relations (see `movielens_features`);
- `synthetic`: vectors around each synthetic video's topic centre (content predicts co-watch);
- `frames`: frame-level vectors → PCA → mean-pool per video (`cdml_spark.features.frames`);
- `path`: a parquet/Delta table of video_id + one array column per modality.
All of them pass `validate_features`: a null/short id, a missing, wrong-length or non-finite vector
sends the row to `video_features_quarantine` with the reason; duplicate ids keep one row.
Each row keeps `inputs_hash`, the hash of the video's inputs (the text and metadata it was computed
from; a vector source's own vectors): a later run with the same extractor (`features.incremental`)
computes and writes only the videos whose inputs changed, so the others keep identical vectors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    TableSpec,
    TableStore,
    check_quarantine,
    video_features_spec,
)

__all__ = ["FeatureSource", "ingest_features", "validate_features", "write_features"]

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


def validate_features(
    df: DataFrame, cfg: FeaturesConfig, carry: Sequence[str] = ()
) -> tuple[DataFrame, DataFrame]:
    """(valid rows: video_id + one array<float> per modality + the `carry` columns as they are,
    quarantine rows with reasons)."""
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
        *carry,
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
    valid = checked.where(F.col("reason").isNull()).select("video_id", *names, *carry)
    if cfg.l2_normalize:
        valid = _l2_normalize(valid, names)
    valid = valid.select("video_id", *[F.col(n).cast("array<float>").alias(n) for n in names], *carry)
    quarantine = checked.where(F.col("reason").isNotNull()).select("video_id", "reason", "modality")
    return valid, quarantine


def _reason_counts(quarantine: DataFrame) -> dict[str, int]:
    return {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}


def _as_is(inputs: DataFrame) -> DataFrame:
    return inputs


@dataclass(frozen=True)
class FeatureSource:
    """`inputs`: video_id and the columns a video's vectors are computed from (all of them hashed into
    its `inputs_hash`); `featurize`: inputs rows (with inputs_hash) → video_id, inputs_hash and one
    vector per modality, run only on the videos to (re)compute (default: the inputs are the vectors);
    `extractor`: what every video's vectors also depend on (model, vocabulary), recorded in the commit;
    `upstream_quarantine`: rows rejected before `inputs` (bad frames)."""

    inputs: DataFrame
    featurize: Callable[[DataFrame], DataFrame] = _as_is
    extractor: dict = field(default_factory=dict)
    upstream_quarantine: DataFrame | None = None


def _hashed(inputs: DataFrame) -> DataFrame:
    """`inputs` (video_id as string) plus `inputs_hash`: xxhash64 of all of the video's rows (row
    order aside), so a changed duplicate changes it too; and `_rows`, the video's number of rows."""
    columns = [c for c in inputs.columns if c != "video_id"]
    video = Window.partitionBy("video_id")
    row_hashes = F.sort_array(F.collect_list(F.xxhash64(*columns)).over(video))
    return inputs.withColumn("video_id", F.col("video_id").cast("string")).select(
        "*", F.xxhash64(row_hashes).alias("inputs_hash"), F.count(F.lit(1)).over(video).alias("_rows")
    )


def _extractor(cfg: FeaturesConfig, source: FeatureSource) -> dict:
    """The extractor's identity (as JSON reads it back): what all vectors depend on besides their inputs."""
    identity = {
        "version": cfg.version,
        "source": cfg.source,
        "modalities": {m.name: m.dim for m in cfg.modalities},
        "l2_normalize": cfg.l2_normalize,
        **source.extractor,
    }
    return json.loads(json.dumps(identity, sort_keys=True))


def _held(store: TableStore, cfg: FeaturesConfig, spec: TableSpec, extractor: dict) -> DataFrame | None:
    """(video_id, inputs_hash) of the current `video_features` when an incremental run can build on
    them: incremental mode is on, the table exists and its last write recorded this `extractor`."""
    if (
        not (cfg.incremental and store.exists(spec))
        or store.commit_inputs(spec).get("extractor") != extractor
    ):
        return None
    return store.read(spec).select("video_id", "inputs_hash")


def _merge(
    store: TableStore,
    spec: TableSpec,
    valid: DataFrame,
    unchanged: DataFrame,
    held: DataFrame,
    lineage: Lineage,
    inputs: dict,
) -> int:
    """Upsert the `valid` rows that are not held as they are and delete the held videos neither
    `unchanged` nor valid now, in one MERGE; refused as `write` refuses a result that is too small."""
    store.check_rows(spec, unchanged.count() + valid.count())
    changed = valid.join(held, ["video_id", "inputs_hash"], "left_anti")  # a re-checked duplicate may be held
    kept = unchanged.unionByName(valid.select("video_id"))
    gone = held.select("video_id").join(kept, "video_id", "left_anti")
    return store.upsert(spec, changed, lineage, ["video_id"], deleted=gone, inputs=inputs)


def write_features(
    spark: SparkSession, cfg: AppConfig, source: FeatureSource, run_id: str | None = None
) -> dict:
    """Validate `source` into `video_features` and replace its quarantine; returns counts. Unless
    `features.incremental` is off, the table is missing or its extractor differs (`_held`), only
    videos whose inputs changed or are new (or with duplicate rows) are featurized and upserted, and
    videos that left the source or now fail validation are deleted, in one MERGE (none if nothing
    changed). Invalid videos are never held, so they are always validated again: the quarantine and
    its guard see what a full run sees."""
    start = time.time()
    store = TableStore(spark, cfg.storage)
    spec = video_features_spec(cfg.features.modalities)
    extractor = _extractor(cfg.features, source)
    inputs = _hashed(source.inputs).persist(StorageLevel.MEMORY_AND_DISK)
    held = _held(store, cfg.features, spec, extractor)
    todo = inputs
    if held is not None:
        unchanged = inputs.where("_rows = 1").join(held, ["video_id", "inputs_hash"], "left_semi")
        unchanged = unchanged.select("video_id")
        todo = inputs.join(unchanged, "video_id", "left_anti")
    # computed once (text encoding is costly), read twice
    features = source.featurize(todo.drop("_rows")).persist(StorageLevel.MEMORY_AND_DISK)
    valid, quarantine = validate_features(features, cfg.features, carry=["inputs_hash"])
    input_rows, featurized = inputs.count(), features.count()
    invalid_videos = _reason_counts(quarantine)
    reasons = dict(invalid_videos)
    if source.upstream_quarantine is not None:  # bad frames: reported, not part of the videos' invalid share
        quarantine = quarantine.unionByName(source.upstream_quarantine)
        for reason, count in _reason_counts(source.upstream_quarantine).items():
            reasons[reason] = reasons.get(reason, 0) + count
    counts = {"input_rows": input_rows, "quarantined": reasons}
    lineage = Lineage.new("ingest_features", cfg.features.model_dump(), run_id)
    if input_rows:
        store.write(VIDEO_FEATURES_QUARANTINE, quarantine, lineage, counts=counts)
    check_quarantine(
        store.qualified(spec),
        input_rows,
        invalid_videos,
        cfg.features.max_quarantine_fraction,
        "features.max_quarantine_fraction",
    )
    valid = valid.withColumn("feature_version", F.lit(cfg.features.version))
    if held is None:
        written = store.write(spec, valid, lineage, inputs={"extractor": extractor}, counts=counts)
    else:
        written = _merge(store, spec, valid, unchanged, held, lineage, {**counts, "extractor": extractor})
    features.unpersist()
    inputs.unpersist()
    seconds = time.time() - start
    update = "full" if held is None else "incremental"
    log.info(
        "features (%s): %s of %s input rows featurized, %s videos written (%s), quarantined %s %s in %.1fs",
        update,
        f"{featurized:,}",
        f"{input_rows:,}",
        f"{written:,}",
        ", ".join(f"{m.name}[{m.dim}]" for m in cfg.features.modalities),
        f"{sum(reasons.values()):,}",
        reasons or "",
        seconds,
    )
    return {
        "update": update,
        "featurized": featurized,
        "written": written,
        "quarantined": reasons,
        "seconds": seconds,
    }


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

        return write_features(spark, cfg, FeatureSource(synthetic_features(spark, cfg)), run_id)
    if source == "frames":
        from cdml_spark.features.frames import frame_features

        pooled, bad_frames = frame_features(spark, cfg)
        return write_features(spark, cfg, FeatureSource(pooled, upstream_quarantine=bad_frames), run_id)
    return write_features(spark, cfg, FeatureSource(_read_features_path(spark, cfg.features)), run_id)
