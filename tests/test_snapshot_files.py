"""Readers of a snapshot's parquet files (Petastorm loader, exact search) refuse files that still hold
rows deleted through Delta deletion vectors, and read exactly the remaining rows once they are purged."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from cdml_spark.cli import run_job
from cdml_spark.errors import DeletedRowsInFiles
from cdml_spark.serving.neighbors import build_neighbors
from cdml_spark.tables import VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS, Lineage, TableSpec, TableStore, triplets_spec
from cdml_spark.training.loader import snapshot_files
from tests.conftest import LOCAL_CONF


def _delete_with_dvs(spark, store: TableStore, spec: TableSpec, where: str) -> None:
    table = store.identifier(spec)
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"DELETE FROM {table} WHERE {where}")
    metrics = store.delta_table(spec).history(1).first()["operationMetrics"]
    assert int(metrics["numDeletionVectorsAdded"]) > 0  # the files still hold the deleted rows


def _ids(files: list[str], column: str) -> list[str]:
    return sorted(v for f in files for v in pq.read_table(f.removeprefix("file:"))[column].to_pylist())


def test_exact_search_refuses_deleted_rows_until_purged(spark, cfg_factory):
    cfg = cfg_factory()
    store = TableStore(spark, cfg.storage)
    name = store.qualified(VIDEO_EMBEDDINGS)
    rows = [(f"v{i}", [float(i), 1.0], "m1", i) for i in range(8)]
    schema = "video_id string, embedding array<float>, model_version string, features_hash long"
    df = spark.createDataFrame(rows, schema)
    store.write(VIDEO_EMBEDDINGS, df.repartition(2), Lineage.new("test", {}))
    _delete_with_dvs(spark, store, VIDEO_EMBEDDINGS, "video_id IN ('v1', 'v6')")

    with pytest.raises(DeletedRowsInFiles, match=rf"^{name}: 2 rows deleted .*REORG TABLE {name} APPLY"):
        snapshot_files(spark, store.location(VIDEO_EMBEDDINGS), table=name)
    sets = [
        f"storage.{k}={v}" for k, v in cfg.storage.model_dump().items() if k in ("tables_root", "database")
    ]
    argv = ["--config", str(LOCAL_CONF), *[a for s in sets for a in ("--set", s)]]
    with pytest.raises(SystemExit) as exited:  # the job: one line, exit 2, nothing written
        run_job("build_neighbors", build_neighbors, argv=[*argv, "--set", "neighbors.mode=exact"])
    assert exited.value.code == 2 and not store.exists(VIDEO_NEIGHBORS)

    spark.sql(f"REORG TABLE {name} APPLY (PURGE)")  # the fix the message names
    files = snapshot_files(spark, store.location(VIDEO_EMBEDDINGS), table=name)
    assert _ids(files, "video_id") == ["v0", "v2", "v3", "v4", "v5", "v7"]


def test_loader_refuses_only_the_split_with_deleted_rows(spark, cfg_factory):
    store = TableStore(spark, cfg_factory().storage)
    spec = triplets_spec([], materialize=False)
    rows = [(f"a{i}", "p", "n", "train" if i < 4 else "validation", 1.0, i, 0, 0) for i in range(6)]
    store.write(spec, spark.createDataFrame(rows, [f.name for f in spec.fields]), Lineage.new("test", {}))
    _delete_with_dvs(spark, store, spec, "anchor_id = 'a1'")

    with pytest.raises(DeletedRowsInFiles, match=r"^t: 1 rows deleted"):
        snapshot_files(spark, store.location(spec), "train", table="t")
    assert _ids(snapshot_files(spark, store.location(spec), "validation"), "anchor_id") == ["a4", "a5"]
