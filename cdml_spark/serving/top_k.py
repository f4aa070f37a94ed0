"""Top-K by cosine (inner product of unit vectors): exact blocked search and faiss ANN.

Exact: each Spark task takes a block of queries and streams the candidate table's parquet files
(the current Delta snapshot) in blocks of `block_size` rows, keeping a running top-K per query.
Memory per task is O(block_size · (d + block_size + K)); the N×N score matrix never exists.
Ties are broken by candidate id (ascending) so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "RESULT_SCHEMA",
    "ann_recall",
    "ann_search",
    "blocked_top_k",
    "build_faiss_index",
    "cached_index",
    "exact_top_k",
]

RESULT_SCHEMA = "query_id string, neighbor_id string, rank int, score float"


def _merge_top_k(
    best_ids: np.ndarray, best_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of the union of (best_ids, best_scores) and a new block (ids broadcast per row)."""
    all_scores = np.concatenate([best_scores, scores], axis=1)
    all_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
    keep = min(k, all_scores.shape[1])
    order = (
        np.lexsort((all_ids, -all_scores), axis=1)[:, :keep]
        if all_scores.size
        else np.zeros((len(all_scores), 0), int)
    )
    rows = np.arange(len(all_scores))[:, None]
    return all_ids[rows, order], all_scores[rows, order]


def exact_top_k(
    queries: np.ndarray,
    excluded: list[Iterable[str]],
    candidate_blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids[Q, ≤k], scores[Q, ≤k]) of the highest inner products, skipping each query's excluded ids."""
    best_ids = np.empty((len(queries), 0), dtype=object)
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    for ids, matrix in candidate_blocks:
        scores = queries @ matrix.T
        position = {v: j for j, v in enumerate(ids)}
        for i, skip in enumerate(excluded):
            cols = [position[v] for v in skip if v in position]
            scores[i, cols] = -np.inf
        best_ids, best_scores = _merge_top_k(best_ids, best_scores, ids, scores, k)
    valid = np.isfinite(best_scores)
    return np.where(valid, best_ids, None), best_scores


def _parquet_blocks(
    files: list[str], id_col: str, vec_col: str, block_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for path in files:
        for batch in pq.ParquetFile(path.removeprefix("file:")).iter_batches(
            batch_size=block_size, columns=[id_col, vec_col]
        ):
            ids = np.asarray(batch.column(0).to_pylist(), dtype=object)
            yield ids, np.stack(batch.column(1).to_numpy(zero_copy_only=False)).astype(np.float32)


def _rows(query_ids, ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    out = []
    for qid, row_ids, row_scores in zip(query_ids, ids, scores, strict=False):
        out += [
            (qid, n, r + 1, float(s))
            for r, (n, s) in enumerate(zip(row_ids, row_scores, strict=False))
            if n is not None
        ]
    return pd.DataFrame(out, columns=["query_id", "neighbor_id", "rank", "score"])


def blocked_top_k(
    spark: SparkSession, queries: DataFrame, candidate_files: list[str], k: int, block_size: int
) -> DataFrame:
    """queries (query_id, vector array<float>, exclude array<string>) → RESULT_SCHEMA rows, exact."""
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(block_size))

    def task(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            q = np.stack(batch["vector"]).astype(np.float32)
            excluded = [set(x) if x is not None else set() for x in batch["exclude"]]
            ids, scores = exact_top_k(
                q, excluded, _parquet_blocks(candidate_files, "video_id", "embedding", block_size), k
            )
            yield _rows(batch["query_id"], ids, scores)

    return queries.mapInPandas(task, RESULT_SCHEMA)


# --- ANN (faiss) ----------------------------------------------------------------------------------


def build_faiss_index(matrix: np.ndarray, index: str, hnsw_m: int, ivf_lists: int, seed: int = 0):
    import faiss

    d = matrix.shape[1]
    if index == "hnsw":
        built = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        lists = max(1, min(ivf_lists, len(matrix) // 39))  # faiss wants >= 39 points per list
        built = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).permutation(len(matrix))[: lists * 256]
        built.train(matrix[sample])
    built.add(matrix)
    return built


def cached_index(broadcast):
    """The faiss index in a broadcast of `serialize_index` bytes, deserialised once per task."""
    import faiss

    if getattr(broadcast, "_cdml_index", None) is None:
        broadcast._cdml_index = faiss.deserialize_index(broadcast.value)
    return broadcast._cdml_index


def ann_search(index, queries: np.ndarray, k: int, ef_search: int, ivf_probe: int):
    """(positions[Q, k], scores[Q, k]) from a faiss index."""
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
    if hasattr(index, "nprobe"):
        index.nprobe = ivf_probe
    scores, positions = index.search(queries, k)
    return positions, scores


def ann_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx ∩ exact| / |exact| (exact lists may be shorter than k)."""
    hits = [
        len(set(a) & set(e)) / max(len(e), 1)
        for a, e in zip(approx_ids.tolist(), exact_ids.tolist(), strict=False)
    ]
    return float(np.mean(hits)) if hits else float("nan")
