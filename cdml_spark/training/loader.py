"""Petastorm → torch: stream the current Delta snapshot of `triplets` in fixed-size batches.

The driver lists the parquet files of the table's current version (`snapshot_files`), so files
left by older versions are never read; it refuses a snapshot whose files still hold rows that
deletion vectors delete (Petastorm would return them). Each rank opens the files with Petastorm's
batch reader on its own shard (`cur_shard=rank`, `shard_count=world`: disjoint row groups, together
all of them), so across ranks every row is read exactly once per epoch. Batches are re-cut to
`batch_size` through a shuffle buffer. In ids-only mode the vectors are looked up from an in-memory
feature table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cdml_spark.errors import DeletedRowsInFiles, UnknownVideoKey

__all__ = ["ROLES", "FeatureTable", "iterate_batches", "parquet_rows", "snapshot_files"]

ROLES = ("anchor", "positive", "negative")


def snapshot_files(
    spark: SparkSession, path: str, split: str | None = None, table: str | None = None
) -> list[str]:
    """Parquet files of a Delta table's current version (only its `split` partition, if given).
    Raises `DeletedRowsInFiles` if they hold rows the snapshot deleted (`table` names it there)."""
    snapshot = spark.read.format("delta").load(path)
    if split:
        snapshot = snapshot.where(F.col("split") == split)
    files = sorted(snapshot.inputFiles())
    deleted = parquet_rows(files) - snapshot.count()  # a DELETE/UPDATE/MERGE with deletion vectors
    if deleted:
        name = table or f"delta.`{path}`"
        raise DeletedRowsInFiles(
            f"{name}: {deleted:,} rows deleted by deletion vectors are still in its parquet files, "
            f"which this job reads directly; run `REORG TABLE {name} APPLY (PURGE)` or rerun the job "
            "that writes the table"
        )
    return files


def _footer(file: str) -> pq.FileMetaData:
    return pq.ParquetFile(file.removeprefix("file:")).metadata


def parquet_rows(files: list[str]) -> int:
    return sum(_footer(f).num_rows for f in files)


def _row_groups(files: list[str]) -> int:
    return sum(_footer(f).num_row_groups for f in files)


@dataclass(frozen=True)
class FeatureTable:
    """In-memory features: sorted keys (xxhash64 of video_id) and one matrix per modality."""

    keys: np.ndarray
    vectors: dict[str, np.ndarray]

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key; raises `UnknownVideoKey` naming the first key that is not in the table."""
        idx = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = self.keys[idx] == keys if len(self.keys) else np.zeros(len(keys), dtype=bool)
        if not found.all():
            missing = int(np.asarray(keys)[~found][0])
            raise UnknownVideoKey(
                f"video key {missing} (xxhash64 of a video_id) is in triplets but not in video_features: "
                "video_features changed after make_triplets; rerun make_triplets"
            )
        return idx

    def lookup(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        idx = self.positions(keys)
        return {name: matrix[idx] for name, matrix in self.vectors.items()}


def _stack(column) -> np.ndarray:
    return np.stack(column).astype(np.float32) if column.dtype == object else column.astype(np.float32)


def iterate_batches(
    files: list[str],
    modalities: list[str],
    batch_size: int,
    rank: int,
    world: int,
    seed: int,
    shuffle_batches: int = 4,
    workers: int = 2,
    features: FeatureTable | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {"<role>_key": int64[B], "<role>_<modality>": float32[B, d]} of this rank's shard."""
    from petastorm import make_batch_reader

    if not files:
        return
    groups = _row_groups(files)
    if groups < world:
        raise ValueError(
            f"{groups} row groups cannot be sharded over {world} processes: write more triplet files"
        )
    keys = [f"{r}_key" for r in ROLES]
    vector_cols = [] if features is not None else [f"{r}_{m}" for r in ROLES for m in modalities]
    rng = np.random.default_rng([seed, rank])
    buffer: dict[str, list[np.ndarray]] = {c: [] for c in keys + vector_cols}
    buffered = 0
    capacity = batch_size * shuffle_batches

    def drain(final: bool) -> Iterator[dict[str, np.ndarray]]:
        nonlocal buffered
        merged = {c: np.concatenate(v) for c, v in buffer.items()}
        order = rng.permutation(buffered)
        cut = buffered if final else buffered - buffered % batch_size
        for start in range(0, cut, batch_size):
            idx = order[start : start + batch_size]
            batch = {c: merged[c][idx] for c in merged}
            if features is not None:
                for role in ROLES:
                    for name, matrix in features.lookup(batch[f"{role}_key"]).items():
                        batch[f"{role}_{name}"] = matrix
            yield batch
        rest = order[cut:]
        for c in buffer:
            buffer[c] = [merged[c][rest]]
        buffered = len(rest)

    urls = [f if "://" in f else f"file://{f}" for f in files]
    with make_batch_reader(
        urls,
        schema_fields=keys + vector_cols,
        cur_shard=rank,
        shard_count=world,
        seed=seed,
        shuffle_row_groups=True,
        num_epochs=1,
        workers_count=workers,
    ) as reader:
        for chunk in reader:
            data = chunk._asdict()
            for c in keys:
                buffer[c].append(np.asarray(data[c], dtype=np.int64))
            for c in vector_cols:
                buffer[c].append(_stack(data[c]))
            buffered += len(data[keys[0]])
            if buffered >= capacity:
                yield from drain(final=False)
    if buffered:
        yield from drain(final=True)
