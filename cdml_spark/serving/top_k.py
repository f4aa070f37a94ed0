"""Top-K by cosine (inner product of unit vectors): exact blocked search and faiss ANN.

Exact: each Python worker reads the candidate table's parquet files (the current Delta snapshot)
once, sorted by id, into an N×d float32 matrix; each query batch is scored against it in blocks of
`block_size` candidates (one sgemm each, so the score matrix is batch × block_size). The sgemm is
torch's (MKL picks its kernel from the CPU's instruction sets; numpy's OpenBLAS chose a generic one
on this project's VMs, whose CPU model is unnamed: 3.6× slower per query batch, measured). A block's scores
below a query's running K-th best are dropped with one comparison; the few survivors are merged as
uint64 keys that order by (score descending, candidate position ascending). Position order is id
order, so equal scores are ordered by candidate id and results are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame

if TYPE_CHECKING:
    import faiss

__all__ = [
    "RESULT_SCHEMA",
    "ann_recall",
    "ann_top_k",
    "blocked_top_k",
    "build_faiss_index",
    "cached_index",
    "candidate_matrix",
    "exact_top_k",
    "excluded_positions",
    "one_thread_per_task",
    "result_batch",
    "vectors",
]

RESULT_SCHEMA = "query_id string, neighbor_id string, rank int, score float"

_EMPTY = np.uint64(2**64 - 1)  # a free slot: sorts after every real key
_LOW = np.uint32(0xFFFFFFFF)
_SIGN = np.uint32(0x80000000)
_FLOOR = np.finfo(np.float32).min  # lowest finite score: excluded (-inf) candidates never pass it
# IVF k-means sample per list: faiss wants >= 39 and caps at 256 by default; at 300k × 256 with 1024
# lists, 64 trained in 12 s instead of 34 s with the same recall@10 (measured)
_IVF_TRAIN_PER_LIST = 64


def _keys(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint64 keys ascending in (score descending, position ascending)."""
    bits = (scores + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into 0.0
    ordered = np.where(bits & _SIGN, ~bits, bits | _SIGN)  # ascending with the score
    return ((_LOW - ordered).astype(np.uint64) << np.uint64(32)) | positions.astype(np.uint64)


def _scores(keys: np.ndarray) -> np.ndarray:
    """The float32 scores encoded in `_keys` (NaN for `_EMPTY`)."""
    ordered = _LOW - (keys >> np.uint64(32)).astype(np.uint32)
    return np.where(ordered & _SIGN, ordered & ~_SIGN, ~ordered).view(np.float32)


def _merge_top_k(best: np.ndarray, rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row-wise k smallest keys of `best` [Q, k] and new keys for rows `rows` (ascending)."""
    if not len(rows):
        return best
    counts = np.bincount(rows, minlength=len(best))
    k = best.shape[1]
    slots = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    merged = np.full((len(best), k + counts.max()), _EMPTY)
    merged[:, :k] = best
    merged[rows, k + slots] = keys
    return np.partition(merged, k - 1, axis=1)[:, :k]


def _block_floor(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row a lower bound of the k-th best score of a block with >= k columns: the k-th best of
    the maxima of up to 4k disjoint column groups (one max pass and a small partition)."""
    groups = min(scores.shape[1], 4 * k)
    size = scores.shape[1] // groups
    maxima = scores[:, : size * groups].reshape(len(scores), size, groups).max(axis=1)
    return np.partition(maxima, groups - k, axis=1)[:, groups - k]


def one_thread_per_task() -> None:
    """torch on one thread in this Spark task: Spark runs one task per core, and more threads per task
    oversubscribe the cores."""
    import torch

    torch.set_num_threads(1)


def exact_top_k(
    queries: np.ndarray,
    excluded: tuple[np.ndarray, np.ndarray],
    candidates: np.ndarray,
    k: int,
    block_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(positions[Q, k], scores[Q, k]) of each query's highest inner products with the rows of
    `candidates`, best first, ties by position; `excluded` = (query rows, candidate positions) pairs
    to skip. Slots with no candidate have position -1 and score -inf."""
    import torch

    best = np.full((len(queries), k), _EMPTY)
    skip_rows, skip_positions = excluded
    for start in range(0, len(candidates), block_size):
        block = candidates[start : start + block_size]
        scores = torch.mm(torch.from_numpy(queries), torch.from_numpy(block).T).numpy()
        inside = (skip_positions >= start) & (skip_positions < start + len(block))
        scores[skip_rows[inside], skip_positions[inside] - start] = -np.inf
        worst = best.max(axis=1)
        open_rows = worst == _EMPTY  # fewer than k so far: the floor comes from the block itself
        floor = np.where(open_rows, _FLOOR, _scores(worst))
        if open_rows.any() and len(block) >= k:
            floor[open_rows] = np.maximum(_block_floor(scores, k)[open_rows], _FLOOR)
        rows, cols = np.divmod(np.flatnonzero(scores >= floor[:, None]), len(block))
        best = _merge_top_k(best, rows, _keys(scores[rows, cols], cols + start))
    best.sort(axis=1)
    empty = best == _EMPTY
    positions = np.where(empty, -1, (best & np.uint64(0xFFFFFFFF)).astype(np.int64))
    return positions, np.where(empty, -np.inf, _scores(best)).astype(np.float32)


def vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A list<float> column of equal-length vectors as a contiguous float32 [rows, d] matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if not flat.flags.writeable:  # a view of Arrow's buffer; torch wants arrays it may write
        flat = flat.copy()
    return flat.reshape(len(column), len(flat) // max(len(column), 1))


@lru_cache(maxsize=1)
def candidate_matrix(files: tuple[str, ...]) -> tuple[pa.Array, np.ndarray]:
    """(video ids ascending, their embeddings [N, d]) from `video_embeddings` parquet files; cached
    per process (N×d×4 bytes)."""
    table = pa.concat_tables(
        pq.read_table(f.removeprefix("file:"), columns=["video_id", "embedding"]) for f in files
    ).sort_by("video_id")
    return table.column("video_id").combine_chunks(), vectors(table.column("embedding"))


def excluded_positions(exclude: pa.Array, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, candidate positions) of a list<string> column of ids to skip; unknown ids are dropped."""
    rows = pc.list_parent_indices(exclude).to_numpy()
    positions = pc.index_in(pc.list_flatten(exclude), value_set=ids)
    known = positions.is_valid().to_numpy(zero_copy_only=False)
    return rows[known], positions.to_numpy(zero_copy_only=False)[known].astype(np.int64)


def result_batch(
    query_ids: pa.Array, ids: pa.Array, positions: np.ndarray, scores: np.ndarray
) -> pa.RecordBatch:
    """RESULT_SCHEMA rows from positions[Q, k] (best first, -1 = none) and their scores."""
    rows, ranks = np.nonzero(positions >= 0)
    return pa.RecordBatch.from_arrays(
        [
            query_ids.take(pa.array(rows)),
            ids.take(pa.array(positions[rows, ranks])),
            pa.array(ranks + 1, pa.int32()),
            pa.array(scores[rows, ranks], pa.float32()),
        ],
        names=["query_id", "neighbor_id", "rank", "score"],
    )


def blocked_top_k(queries: DataFrame, candidate_files: list[str], k: int, block_size: int) -> DataFrame:
    """queries (query_id, vector array<float>, exclude array<string>) → RESULT_SCHEMA rows, exact,
    against the `video_embeddings` rows in `candidate_files`. Each Arrow batch is searched `block_size`
    queries at a time (score block = block_size²), whatever the session's Arrow batch size."""
    files = tuple(candidate_files)

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        one_thread_per_task()
        for whole in batches:
            ids, matrix = candidate_matrix(files)  # read once per process, only where there are queries
            for start in range(0, whole.num_rows, block_size):
                batch = whole.slice(start, block_size)
                excluded = excluded_positions(batch.column("exclude"), ids)
                found = exact_top_k(vectors(batch.column("vector")), excluded, matrix, k, block_size)
                yield result_batch(batch.column("query_id"), ids, *found)

    return queries.mapInArrow(task, RESULT_SCHEMA)


# --- ANN (faiss) ----------------------------------------------------------------------------------


def build_faiss_index(matrix: np.ndarray, index: str, hnsw_m: int, ivf_lists: int, seed: int = 0):
    import faiss

    d = matrix.shape[1]
    if index == "hnsw":
        built = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        lists = max(1, min(ivf_lists, len(matrix) // 39))  # faiss wants >= 39 points per list
        built = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).permutation(len(matrix))[: lists * _IVF_TRAIN_PER_LIST]
        built.train(matrix[sample])
    built.add(matrix)
    return built


def cached_index(broadcast):
    """The faiss index in a broadcast of `serialize_index` bytes, deserialised once per task; faiss on
    one OpenMP thread (one Spark task per core, as `one_thread_per_task`)."""
    import faiss

    if getattr(broadcast, "_cdml_index", None) is None:
        faiss.omp_set_num_threads(1)
        broadcast._cdml_index = faiss.deserialize_index(broadcast.value)
    return broadcast._cdml_index


def ann_top_k(
    index: faiss.Index,
    queries: np.ndarray,
    excluded: tuple[np.ndarray, np.ndarray],
    k: int,
    ef_search: int,
    ivf_probe: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`exact_top_k`'s output from a faiss index: it is asked for k + (most exclusions of a query)
    and the excluded positions are dropped. HNSW explores max(ef_search, that count) candidates."""
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
    if hasattr(index, "nprobe"):
        index.nprobe = ivf_probe
    rows, skip = excluded
    extra = int(np.bincount(rows, minlength=1).max())
    scores, positions = index.search(queries, k + extra)
    drop = positions < 0
    np.logical_or.at(drop, rows, positions[rows] == skip[:, None])
    keep = np.argsort(drop, axis=1, kind="stable")[:, :k]
    drop = np.take_along_axis(drop, keep, axis=1)
    return (
        np.where(drop, -1, np.take_along_axis(positions, keep, axis=1)),
        np.where(drop, -np.inf, np.take_along_axis(scores, keep, axis=1)).astype(np.float32),
    )


def ann_recall(approx_ids: Sequence[Sequence], exact_ids: Sequence[Sequence]) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| (exact lists may be shorter than k)."""
    hits = [len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(approx_ids, exact_ids, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")
