"""`training.loader: streaming`: the triplets snapshot as Mosaic Streaming MDS shards (spark4 stack).

The driver converts the snapshot's training files once per triplets version (`ensure_mds`, with
Mosaic's `MDSWriter`) into `<root>/<table>-<Delta table id>/v<version>/`: written to a scratch folder
and renamed, so a version folder that exists is complete; every later run on that version reuses it,
and a new version's folder replaces the older ones of the table. Each rank reads the shards
(`mds_batches`) with Mosaic's `LocalDataset` index, in Mosaic's `py1e` shuffle of the epoch's seed, and
takes every `world`-th sample from its `rank`: disjoint, together all of them, so every row exactly once
per epoch and never a padding sample (ranks differ by at most one row; the training loop's lock-step
handles that as for the other loaders). The order is a function of the shards, seed, rank and world
alone, so an epoch resumes mid-way from the number of samples a rank has already taken (`start`).
Every column is fixed-size (int64 keys, float32[d] vectors), so a shard's samples are one numpy record
array over the memory-mapped file and a batch is gathered with one copy.

Not Mosaic's `StreamingDataset`: it takes the world from the environment (initialising
torch.distributed itself), coordinates a node's ranks through shared memory, and pads the ranks to equal
length by repeating samples, which would break "every row exactly once per epoch".
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq

from cdml_spark.training.loader import _local, _to_numpy

__all__ = ["ensure_mds", "mds_batches", "write_mds"]

log = logging.getLogger(__name__)

SHUFFLE_BLOCK = 4_000_000  # StreamingDataset's default shuffle block with one canonical node
_VERSION = re.compile(r"^\.?v(\d+)(\.tmp-\w+)?$")  # a version folder or its scratch folder


def ensure_mds(files: list[str], columns: list[str], table_dir: str, version: int) -> str:
    """`<table_dir>/v<version>`, holding `columns` of `files` as MDS shards: written unless already
    there (scratch folder + rename; a concurrent writer's complete copy wins), then the folders of
    older versions are removed."""
    target = os.path.join(table_dir, f"v{version}")
    if os.path.exists(os.path.join(target, "index.json")):
        log.info("streaming loader: reusing the MDS shards of triplets v%d in %s", version, target)
        return target
    os.makedirs(table_dir, exist_ok=True)
    scratch = os.path.join(table_dir, f".v{version}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        rows = write_mds(files, columns, scratch)
        os.rename(scratch, target)
        log.info("streaming loader: wrote %d rows of triplets v%d as MDS shards to %s", rows, version, target)
    except OSError:
        if not os.path.exists(os.path.join(target, "index.json")):
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name in os.listdir(table_dir):
        older = _VERSION.match(name)
        if older and int(older.group(1)) < version:
            shutil.rmtree(os.path.join(table_dir, name), ignore_errors=True)
    return target


def write_mds(files: list[str], columns: list[str], directory: str, size_limit: int = 1 << 26) -> int:
    """Write `columns` of the parquet `files` to `directory` as uncompressed MDS shards of up to
    `size_limit` bytes (keys `int64`, vectors `ndarray:float32:<d>`), row by row in file order; the
    number of rows written."""
    from streaming import MDSWriter

    writer, rows = None, 0
    try:
        for file in files:
            parquet = pq.ParquetFile(_local(file))
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns)
                chunk = {name: _to_numpy(name, table.column(name)) for name in columns}
                if writer is None:
                    encodings = {name: _encoding(array) for name, array in chunk.items()}
                    writer = MDSWriter(out=directory, columns=encodings, size_limit=size_limit)
                for i in range(table.num_rows):
                    writer.write({name: array[i] for name, array in chunk.items()})
                rows += table.num_rows
        if writer is None:  # no rows: an empty dataset (keys only)
            writer = MDSWriter(out=directory, columns={c: "int64" for c in columns if c.endswith("_key")})
    except BaseException:
        if writer is not None:
            writer.cancel_future_jobs()
        raise
    writer.finish()
    return rows


def _encoding(array: np.ndarray) -> str:
    return "int64" if array.ndim == 1 else f"ndarray:float32:{array.shape[1]}"


def _dtype(encoding: str) -> np.dtype:
    if encoding == "int64":
        return np.dtype(np.int64)
    _, dtype, shape = encoding.split(":")  # ndarray:<dtype>:<d>
    return np.dtype((dtype, (int(shape),)))


def _records(shard, directory: str) -> np.ndarray:
    """A shard's samples as a record array over its memory-mapped file (fixed-size columns: a sample is
    its columns' bytes end to end, in the index's column order)."""
    path = os.path.join(directory, shard.raw_data.basename)
    dtype = np.dtype(
        [(n, _dtype(e)) for n, e in zip(shard.column_names, shard.column_encodings, strict=True)]
    )
    head = np.fromfile(path, np.uint32, count=shard.samples + 2)  # sample count, then n + 1 offsets
    if shard.compression or int(head[-1] - head[1]) != shard.samples * dtype.itemsize:
        raise ValueError(
            f"{path}: not an uncompressed MDS shard of fixed-size columns (write_mds writes those)"
        )
    return np.memmap(path, dtype, mode="r", offset=int(head[1]), shape=(shard.samples,))


def mds_batches(
    directory: str, columns: list[str], batch_size: int, rank: int, world: int, seed: int, start: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {column: array} of rank `rank` of `world` over the MDS dataset in `directory`: Mosaic's
    `py1e` shuffle of `seed`, every `world`-th sample from `rank`, from this rank's `start`-th sample."""
    from streaming import LocalDataset
    from streaming.base.shuffle import get_shuffle

    shards = [_records(shard, directory) for shard in LocalDataset(directory).shards]
    if not shards:
        return
    sizes = np.array([len(s) for s in shards], np.int64)
    ends = np.cumsum(sizes)
    order = get_shuffle("py1e", sizes, 1, seed, 0, SHUFFLE_BLOCK)[rank::world]
    for lo in range(start, len(order), batch_size):
        ids = order[lo : lo + batch_size]
        shard_of = np.searchsorted(ends, ids, side="right")
        batch = {c: np.empty((len(ids), *shards[0].dtype[c].shape), shards[0].dtype[c].base) for c in columns}
        for s in np.unique(shard_of):
            at = np.flatnonzero(shard_of == s)
            rows = shards[s][ids[at] - (ends[s] - sizes[s])]
            for c in columns:
                batch[c][at] = rows[c]
        yield batch
