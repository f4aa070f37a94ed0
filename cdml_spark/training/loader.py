"""Delta snapshot of `triplets` → torch: stream it in fixed-size batches (`training.loader`).

The driver lists the parquet files of the table's current version (`snapshot_files`), so files
left by older versions are never read; it refuses a snapshot whose files still hold rows that
deletion vectors delete (a reader of the files would return them). Each rank reads its own shard of
the row groups (disjoint, together all of them), so across ranks every row is read exactly once per
epoch: `petastorm` with Petastorm's batch reader (`cur_shard=rank`, `shard_count=world`; the card's
15.4 stack), `arrow` with pyarrow alone (row groups dealt round robin; the Spark 4 stack, which has no
Petastorm). Either way each row group is turned into numpy column by column (no per-row Python), and
batches are re-cut to `batch_size` through one shuffle buffer with one copy per batch. `streaming` reads
the MDS shards the driver wrote from those files once per triplets version (`cdml_spark.training.mds`;
Mosaic's shuffle, every `world`-th sample per rank; the spark4 stack). In ids-only mode the vectors are
looked up from an in-memory feature table.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cdml_spark.errors import DeletedRowsInFiles, UnknownVideoKey

__all__ = ["ROLES", "FeatureTable", "Loader", "iterate_batches", "parquet_rows", "snapshot_files"]

ROLES = ("anchor", "positive", "negative")
Loader = Literal["petastorm", "arrow", "streaming"]  # `training.loader`


def snapshot_files(
    spark: SparkSession,
    path: str,
    split: str | None = None,
    table: str | None = None,
    version: int | None = None,
) -> list[str]:
    """Parquet files of a Delta table's current version, or of `version` (only its `split` partition,
    if given). Raises `DeletedRowsInFiles` if they hold rows the snapshot deleted (`table` names it there)."""
    reader = spark.read.format("delta")
    snapshot = (reader if version is None else reader.option("versionAsOf", version)).load(path)
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


def _local(file: str) -> str:
    """A local path of a file URI as Spark lists it (`file:/x`, `file:///x`) or of a plain path."""
    return "/" + file.removeprefix("file:").lstrip("/") if file.startswith("file:") else file


def _footer(file: str) -> pq.FileMetaData:
    return pq.ParquetFile(_local(file)).metadata


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


class _Columns:
    """Petastorm's results reader for `make_batch_reader`, column by column: each decoded row group (an
    arrow table) becomes {column: numpy array}, a list<float> column a [rows, d] view of its values,
    where Petastorm's own reader stacks one array per row (`np.vstack`)."""

    batched_output = True

    def read_next(self, workers_pool: Any, schema: object, ngram: object) -> dict[str, np.ndarray]:
        from petastorm.workers_pool import EmptyResultError

        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration from None
        return {name: _to_numpy(name, table.column(name)) for name in table.column_names}


def _to_numpy(name: str, column: pa.ChunkedArray) -> np.ndarray:
    """Zero-copy where arrow allows (no nulls): keys as they are, vectors as [rows, d]."""
    if not pa.types.is_list(column.type):
        return column.to_numpy()
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # combine copies
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets)
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError(f"{name}: vectors of different lengths {sorted(set(lengths.tolist()))[:5]}")
    values = array.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy()
    return values.astype(np.float32, copy=False).reshape(len(array), int(lengths[0]) if len(lengths) else 0)


def _gather(chunks: list[dict[str, np.ndarray]], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `rows` (sorted) of the chunks laid end to end, copied once into new arrays."""
    starts = np.cumsum([0] + [len(next(iter(c.values()))) for c in chunks])
    bounds = np.searchsorted(rows, starts)
    out = {c: np.empty((len(rows), *a.shape[1:]), a.dtype) for c, a in chunks[0].items()}
    for chunk, start, lo, hi in zip(chunks, starts[:-1], bounds[:-1], bounds[1:], strict=True):
        if hi > lo:
            for c, a in chunk.items():
                np.take(a, rows[lo:hi] - start, axis=0, out=out[c][lo:hi], mode="clip")  # in range: no buffer
    return out


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
    loader: Loader = "petastorm",
    start: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {"<role>_key": int64[B], "<role>_<modality>": float32[B, d]} of this rank's shard: row
    groups in a `seed`-shuffled order (with `petastorm`, arriving in that order only with `workers=1`:
    reader threads may reorder them; `arrow` keeps the order with any `workers`), their rows shuffled
    through a buffer of `shuffle_batches` batches (a batch lists its rows in buffer order). With
    `streaming`, `files` is the one MDS directory `mds.ensure_mds` wrote from the snapshot's files, and
    batches follow Mosaic's `seed`-shuffled order from this rank's `start`-th row (mid-epoch resume)."""
    if not files:
        return
    keys = [f"{r}_key" for r in ROLES]
    columns = keys + ([] if features is not None else [f"{r}_{m}" for r in ROLES for m in modalities])
    if start and loader != "streaming":
        raise ValueError(f"start={start}: only the streaming loader resumes mid-epoch")
    if loader == "streaming":
        from cdml_spark.training.mds import mds_batches

        for batch in mds_batches(files[0], columns, batch_size, rank, world, seed, start):
            yield _with_vectors(batch, features)
        return
    groups = _row_groups(files)
    if groups < world:
        raise ValueError(
            f"{groups} row groups cannot be sharded over {world} processes: write more triplet files"
        )
    read = _arrow_chunks if loader == "arrow" else _petastorm_chunks
    rng = np.random.default_rng([seed, rank])
    chunks: list[dict[str, np.ndarray]] = []
    buffered = 0
    capacity = batch_size * shuffle_batches

    def drain(final: bool) -> Iterator[dict[str, np.ndarray]]:
        nonlocal chunks, buffered
        order = rng.permutation(buffered)
        cut = buffered if final else buffered - buffered % batch_size
        for lo in range(0, cut, batch_size):
            yield _with_vectors(_gather(chunks, np.sort(order[lo : lo + batch_size])), features)
        chunks = [_gather(chunks, np.sort(order[cut:]))]
        buffered -= cut

    for chunk in read(files, columns, rank, world, seed, workers):
        chunks.append(chunk)
        buffered += len(chunk[keys[0]])
        if buffered >= capacity:
            yield from drain(final=False)
    if buffered:
        yield from drain(final=True)


def _with_vectors(batch: dict[str, np.ndarray], features: FeatureTable | None) -> dict[str, np.ndarray]:
    """The batch with each role's vectors looked up by key (ids-only triplets), else as it is."""
    if features is not None:
        for role in ROLES:
            for name, matrix in features.lookup(batch[f"{role}_key"]).items():
                batch[f"{role}_{name}"] = matrix
    return batch


def _petastorm_chunks(
    files: list[str], columns: list[str], rank: int, world: int, seed: int, workers: int
) -> Iterator[dict[str, np.ndarray]]:
    """This rank's row groups, decoded, via Petastorm's batch reader (its shard `rank` of `world`)."""
    from petastorm import make_batch_reader

    urls = [f if "://" in f else f"file://{f}" for f in files]
    with make_batch_reader(
        urls,
        schema_fields=columns,
        cur_shard=rank,
        shard_count=world,
        seed=seed,
        shuffle_row_groups=True,
        num_epochs=1,
        workers_count=workers,
    ) as reader:
        reader._results_queue_reader = _Columns()  # no option for it (petastorm pinned in requirements)
        yield from reader


def _arrow_chunks(
    files: list[str], columns: list[str], rank: int, world: int, seed: int, workers: int
) -> Iterator[dict[str, np.ndarray]]:
    """This rank's row groups read with pyarrow: the snapshot's (file, row group) pairs in file order
    are dealt round robin to the ranks (disjoint, together all of them); a rank reads its own in a
    `seed`-shuffled order, up to `workers` row groups ahead, in that order."""
    pieces = [(f, g) for f in files for g in range(_footer(f).num_row_groups)][rank::world]
    order = np.random.default_rng([seed, rank, 1]).permutation(len(pieces))

    def read(piece: tuple[str, int]) -> dict[str, np.ndarray]:
        table = pq.ParquetFile(_local(piece[0])).read_row_group(piece[1], columns=columns)
        return {name: _to_numpy(name, table.column(name)) for name in table.column_names}

    with ThreadPoolExecutor(workers) as pool:
        ahead: deque[Future] = deque()
        for i in order:
            ahead.append(pool.submit(read, pieces[i]))
            if len(ahead) > workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
