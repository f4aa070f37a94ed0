"""Table maintenance (`jobs/maintain_tables.py`, the pipeline's last stage): every run rewrites whole
tables, so without it old Delta versions pile up. For each existing table: set its retention
properties, OPTIMIZE (bin-packing compaction), then VACUUM the files older versions alone need.

History is kept for `storage.retention_hours`, except that the versions the current model was
trained from (its `triplets_version` and the input versions that triplets commit recorded) stay
readable: VACUUM cannot keep single versions, so such a table keeps history back to its pinned
commit (logged)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

from cdml_spark.config import AppConfig
from cdml_spark.serving.embed import resolve_model
from cdml_spark.tables import ALL_TABLE_NAMES, TableSpec, TableStore

__all__ = ["RETENTION_CHECK", "TableReport", "maintain_tables"]

log = logging.getLogger(__name__)

_SAFE_HOURS = 168  # Delta refuses a shorter VACUUM retention unless its check is off
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
_LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
# Petastorm shards the triplet files as make_triplets cut them; they are rebuilt every run anyway
_NOT_COMPACTED = frozenset({"triplets"})


@dataclass(frozen=True)
class TableReport:
    table: str
    files_before: int
    bytes_before: int
    files_after: int
    bytes_after: int
    retention_hours: int
    compacted: int  # files OPTIMIZE rewrote
    seconds: float


@contextmanager
def _session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """`settings` on the session inside the block; the previous values (or none) after it."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _pinned_versions(store: TableStore, cfg: AppConfig) -> dict[str, int]:
    """{table: version} the current model was trained from ({} without a model)."""
    try:
        model, path = resolve_model(cfg)
    except FileNotFoundError as exc:
        log.info("maintain_tables: no current model (%s): no version pinned", exc)
        return {}
    with open(os.path.join(path, "model.json")) as handle:
        version = json.load(handle).get("triplets_version")
    triplets = TableSpec("triplets")
    if version is None or not store.exists(triplets):
        return {}
    pins = {"triplets": int(version)}
    commit = store.commit(triplets, pins["triplets"])
    inputs = commit["inputs"] if commit else {}
    pins |= {k: v for k, v in inputs.items() if k in ALL_TABLE_NAMES and isinstance(v, int)}
    log.info("maintain_tables: model %s pins %s", model, ", ".join(f"{k} v{v}" for k, v in pins.items()))
    return pins


def _retention_for(store: TableStore, spec: TableSpec, hours: int, pinned: int | None) -> int:
    """`hours`, lengthened so that the history reaches back to `pinned`'s commit."""
    if pinned is None or pinned > store.version(spec):
        return hours
    commit = store.commit(spec, pinned)
    if commit is None:
        log.warning("%s: pinned v%d is no longer in the Delta log", store.qualified(spec), pinned)
        return hours
    needed = math.ceil((time.time() - commit["epoch"]) / 3600) + 1  # +1 h: clock skew, job duration
    if needed > hours:
        log.info(
            "%s: retention %d h -> %d h to keep v%d (pinned by the current model)",
            store.qualified(spec),
            hours,
            needed,
            pinned,
        )
    return max(hours, needed)


def _storage_usage(store: TableStore, spec: TableSpec) -> tuple[int, int]:
    """(files, bytes) under the table's location outside `_delta_log` and hidden files (local `.crc`):
    every version's data. Where the location cannot be listed (Unity Catalog managed tables), the
    current snapshot's."""
    spark = store.spark
    root = spark._jvm.org.apache.hadoop.fs.Path(store.location(spec))
    try:
        listing = root.getFileSystem(spark._jsc.hadoopConfiguration()).listFiles(root, True)
        files = size = 0
        while listing.hasNext():
            status = listing.next()
            path = status.getPath()
            if "/_delta_log/" not in path.toUri().getPath() and not path.getName().startswith("."):
                files, size = files + 1, size + status.getLen()
        return files, size
    except Py4JJavaError:
        detail = store.delta_table(spec).detail().first()
        return detail["numFiles"], detail["sizeInBytes"]


def _compact(store: TableStore, spec: TableSpec) -> int:
    """OPTIMIZE (bin-packing); returns the files it rewrote (0: nothing to do, no commit)."""
    result = store.delta_table(spec).optimize().executeCompaction().first()
    return result["metrics"]["numFilesRemoved"] if result else 0


def _maintain_table(store: TableStore, spec: TableSpec, hours: int, pinned: int | None) -> TableReport:
    """Retention properties, OPTIMIZE (unless the current version is pinned: the compacted copy would
    only add files), VACUUM."""
    started = time.time()
    files_before, bytes_before = _storage_usage(store, spec)
    retention = _retention_for(store, spec, hours, pinned)
    store.set_retention(spec, retention)
    keep_files = spec.name in _NOT_COMPACTED or (
        pinned is not None and not store.data_changed_since(spec, pinned)
    )
    compacted = 0 if keep_files else _compact(store, spec)
    store.delta_table(spec).vacuum(float(retention))
    files_after, bytes_after = _storage_usage(store, spec)
    report = TableReport(
        store.qualified(spec),
        files_before,
        bytes_before,
        files_after,
        bytes_after,
        retention,
        compacted,
        time.time() - started,
    )
    log.info(
        "maintain_tables: %s: %d files / %s bytes -> %d files / %s bytes (%d compacted, retention %d h) "
        "in %.1fs",
        report.table,
        files_before,
        f"{bytes_before:,}",
        files_after,
        f"{bytes_after:,}",
        compacted,
        retention,
        report.seconds,
    )
    return report


def maintain_tables(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> list[TableReport]:
    """Job entry: maintain every existing table of `storage.database` (run_id unused: no table is
    written)."""
    store = TableStore(spark, cfg.storage)
    hours = cfg.storage.retention_hours
    pins = _pinned_versions(store, cfg)
    # VACUUM lists a table's folder in this many tasks (default 10,000: minutes for a small table)
    settings = {_LISTING_PARALLELISM: str(cfg.spark.shuffle_partitions)}
    if hours < _SAFE_HOURS:
        log.warning(
            "maintain_tables: storage.retention_hours=%d < %d: %s=false for this job; readers of older "
            "versions (running jobs, time travel) may fail",
            hours,
            _SAFE_HOURS,
            RETENTION_CHECK,
        )
        settings[RETENTION_CHECK] = "false"
    with _session_conf(spark, settings):
        specs = [TableSpec(name) for name in ALL_TABLE_NAMES]
        reports = [_maintain_table(store, s, hours, pins.get(s.name)) for s in specs if store.exists(s)]
    log.info(
        "maintain_tables: %d tables, %s -> %s bytes",
        len(reports),
        f"{sum(r.bytes_before for r in reports):,}",
        f"{sum(r.bytes_after for r in reports):,}",
    )
    return reports
