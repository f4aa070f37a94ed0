"""Table maintenance: OPTIMIZE + VACUUM shrink storage, keep the current version and the versions the
current model's lineage pins; maintenance commits do not make the triplets' inputs stale."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F

from cdml_spark.maintenance import RETENTION_CHECK, maintain_tables
from cdml_spark.tables import COWATCH_EDGES, VIDEO_SPLITS, Lineage, TableSpec, TableStore, triplets_spec
from cdml_spark.training.model import CDMLNet, ModelSpec, save_model


def _parquet(folder: str) -> list[Path]:
    return sorted(Path(folder).rglob("*.parquet"))


def _rows(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.drop("run_id", "params_hash", "built_at").collect())


def _write(spark, store: TableStore, spec: TableSpec, n: int) -> list[tuple]:
    """The n-th write of video_splits or cowatch_edges (30 rows in 3 files); returns its rows."""
    ids = spark.range(30).select(F.concat(F.lit("v"), "id").alias("video_id"), "id")
    if spec == VIDEO_SPLITS:
        rows = ids.select("video_id", F.lit("train").alias("split"), (F.col("id") * n).alias("users"))
    else:
        rows = ids.select(
            "video_id",
            F.concat(F.lit("v"), F.col("id") + n).alias("neighbor_id"),
            F.lit(1).alias("rank"),
            *[
                F.lit(n).alias(c)
                for c in ("cowatch_user_days", "score", "video_user_days", "neighbor_user_days")
            ],
        )
    store.write(spec, rows.repartition(3), Lineage.new("test", {}))
    return _rows(store.read(spec))


def _train_model(spark, store: TableStore, model_dir: Path, edges_version: int) -> None:
    """A triplets table recording `edges_version` as its input and a model trained on it (LATEST)."""
    spec = triplets_spec([], materialize=False)
    row = ("a", "p", "n", "train", 1.0, 1, 2, 3)
    inputs = {"cowatch_edges": edges_version, "video_features": 0, "feature_version": "f"}
    store.write(
        spec, spark.createDataFrame([row], [f.name for f in spec.fields]), Lineage.new("t", {}), inputs
    )
    save_model(
        CDMLNet(ModelSpec({"vis": 2}, hidden=[2], embedding_dim=2)),
        str(model_dir / "m1"),
        extra={"triplets_version": store.version(spec)},
    )
    (model_dir / "LATEST").write_text("m1\n")


def test_vacuum_shrinks_storage_and_keeps_pinned_versions(spark, cfg_factory, tmp_path):
    cfg = cfg_factory("storage.retention_hours=0", f"training.model_dir={tmp_path / 'models'}")
    store = TableStore(spark, cfg.storage)
    splits = [_write(spark, store, VIDEO_SPLITS, n) for n in (1, 2, 3)][-1]
    edges = [_write(spark, store, COWATCH_EDGES, n) for n in (1, 2)]
    pinned = store.version(COWATCH_EDGES) - 1  # the first write
    _train_model(spark, store, tmp_path / "models", pinned)
    splits_dir = store.location(VIDEO_SPLITS)
    before = sum(p.stat().st_size for p in _parquet(splits_dir))
    latest = store.version(COWATCH_EDGES)

    reports = {r.table.split(".")[-1]: r for r in maintain_tables(spark, cfg)}

    # video_splits (pinned by nothing): 9 files of 3 versions -> the current version compacted into 1
    current = spark.read.format("delta").load(splits_dir).inputFiles()
    assert [str(p) for p in _parquet(splits_dir)] == sorted(f.removeprefix("file:") for f in current)
    assert len(current) == 1 and reports["video_splits"].compacted == 3
    after = sum(p.stat().st_size for p in _parquet(splits_dir))
    assert after < before / 2 and _rows(store.read(VIDEO_SPLITS)) == splits
    assert (reports["video_splits"].bytes_before, reports["video_splits"].bytes_after) == (before, after)
    # cowatch_edges: the pinned version stays readable, its retention covers it
    versions = spark.read.format("delta").option("versionAsOf", pinned)
    assert _rows(versions.load(store.location(COWATCH_EDGES))) == edges[0]
    assert _rows(store.read(COWATCH_EDGES)) == edges[1]
    properties = store.delta_table(COWATCH_EDGES).detail().first()["properties"]
    assert properties["delta.deletedFileRetentionDuration"] == "interval 2 hours"
    assert reports["video_splits"].retention_hours == 0 and spark.conf.get(RETENTION_CHECK) == "true"
    # OPTIMIZE/VACUUM commits leave the triplets' recorded input current
    assert store.version(COWATCH_EDGES) > latest and not store.data_changed_since(COWATCH_EDGES, latest)
    assert store.data_changed_since(COWATCH_EDGES, pinned)
    assert store.commit_inputs(triplets_spec([], materialize=False))["cowatch_edges"] == pinned
