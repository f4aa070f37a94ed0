"""Benchmark: the `build_neighbors` job (exact, then ANN) vs faiss IndexFlatIP on N random unit vectors.

    .venv/bin/python benchmarks/bench_neighbors.py [--sizes 20000 100000] [--dim 256] [--k 100]
        [--ef 64 256] [--ivf-probe 32] [--clusters 0 | --rank 0] [--no-flat] [--tables /tmp/cdml-bench-neighbors]

Per N: writes a `video_embeddings` Delta table, runs the real job (Spark, `conf/local.yaml`; after a
warm-up run on 1,000 rows) in exact mode and once per ANN setting, and faiss IndexFlatIP (this
process, all cores) on the same matrix. `--clusters C` draws the vectors around C random centres
(real embeddings are clustered; uniform random vectors are the worst case for ANN); `--rank R` draws
them from an R-dimensional Gaussian plus noise of half its norm (structure without clusters, which
IVF finds much harder than blobs).
Checks the exact table against faiss (same ids per query and rank, except where the two scores are
equal within 1e-6) and prints seconds, ratios and recall@10 of each ANN run vs the exact table.
`--no-flat` skips faiss (its search grows with N² like ours; for the ANN runs at large N).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from cdml_spark.cli import setup_logging
from cdml_spark.config import AppConfig, load_config
from cdml_spark.serving.embed import current_embeddings
from cdml_spark.serving.neighbors import build_neighbors, neighbor_search
from cdml_spark.serving.top_k import ann_recall, ann_top_k
from cdml_spark.spark import get_spark
from cdml_spark.tables import VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS, Lineage, TableStore
from cdml_spark.training.loader import snapshot_files

TIE = 2e-5  # scores this close count as equal: faiss and sgemm sum 256 float32 products in different orders


def openblas_kernel() -> str:
    """The OpenBLAS kernel this CPU's flags call for. faiss's bundled OpenBLAS does not know this
    project's VMs' CPU model and falls back to a generic kernel (IndexFlatIP 2.8× slower, measured);
    OpenBLAS's docs advise naming it with OPENBLAS_CORETYPE, so the anchor runs at its best."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "SkylakeX" if " avx512f" in flags else "Haswell" if " avx2" in flags else ""


def unit_vectors(n: int, dim: int, clusters: int, rank: int) -> np.ndarray:
    """n random unit vectors: uniform on the sphere, around `clusters` random centres, or from a
    `rank`-dimensional Gaussian; both plus isotropic noise of half their norm."""
    rng = np.random.default_rng(n)
    matrix = rng.standard_normal((n, dim), dtype=np.float32)
    if clusters:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        matrix = centres[rng.integers(0, clusters, n)] + matrix / 2
    elif rank:
        basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(rank, dtype=np.float32)
        matrix = rng.standard_normal((n, rank), dtype=np.float32) @ basis + matrix / 2
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def write_embeddings(spark: SparkSession, store: TableStore, matrix: np.ndarray) -> None:
    """`video_embeddings` rows v0000000, v0000001, … (id order = row order)."""
    frame = pd.DataFrame({"video_id": [f"v{i:07d}" for i in range(len(matrix))], "embedding": list(matrix)})
    df = spark.createDataFrame(frame, "video_id string, embedding array<float>")
    bench = df.selectExpr("*", "'bench' AS model_version", "xxhash64(embedding) AS features_hash")
    store.write(VIDEO_EMBEDDINGS, bench, Lineage.new("bench", {}))


def row_numbers(ids: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(pc.utf8_slice_codeunits(ids, 1), pa.int64()).to_numpy()


def neighbor_table(spark: SparkSession, store: TableStore, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers [n, k], scores [n, k]) of the `video_neighbors` table, by query and rank; -1 and
    NaN where a list is shorter than k (an IVF search that probed fewer than k candidates)."""
    files = snapshot_files(spark, store.location(VIDEO_NEIGHBORS))
    table = pa.concat_tables(
        pq.read_table(f.removeprefix("file:"), columns=["video_id", "neighbor_id", "rank", "score"])
        for f in files
    )
    query, rank = row_numbers(table.column("video_id")), table.column("rank").to_numpy() - 1
    rows, scores = np.full((n, k), -1, dtype=np.int64), np.full((n, k), np.nan, dtype=np.float32)
    rows[query, rank] = row_numbers(table.column("neighbor_id"))
    scores[query, rank] = table.column("score").to_numpy()
    return rows, scores


def differences(ids: np.ndarray, scores: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray) -> int:
    """Queries whose neighbours differ from the reference other than between equal scores."""
    assert np.abs(scores - ref_scores).max() <= TIE
    return int(((ids != ref_ids) & (np.abs(scores - ref_scores) > TIE)).any(axis=1).sum())


def job_config(args: argparse.Namespace, *overrides: str) -> AppConfig:
    return load_config(
        "conf/local.yaml",
        [f"storage.tables_root={args.tables}", f"neighbors.k={args.k}", *overrides, *args.set],
    )


def timed(spark: SparkSession, cfg: AppConfig, store: TableStore) -> tuple[float, float]:
    """Seconds of (`neighbor_search` into Spark's noop sink, the whole `build_neighbors` job)."""
    started = time.time()
    neighbor_search(spark, cfg, store, current_embeddings(store)[0])[0].write.format("noop").mode(
        "overwrite"
    ).save()
    search = time.time() - started
    started = time.time()
    build_neighbors(spark, cfg)
    return search, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--ef", type=int, nargs="*", default=[64, 256], help="HNSW efSearch values")
    parser.add_argument("--ivf-probe", type=int, nargs="*", default=[32], help="IVF nprobe values")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--clusters", type=int, default=0, help="0: uniform on the sphere")
    shape.add_argument("--rank", type=int, default=0, help="low-rank structure without clusters")
    parser.add_argument("--no-flat", action="store_true", help="skip faiss IndexFlatIP")
    parser.add_argument("--tables", default="/tmp/cdml-bench-neighbors")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    kernel = openblas_kernel()
    if kernel and "OPENBLAS_CORETYPE" not in os.environ:  # read when OpenBLAS loads: start again with it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OPENBLAS_CORETYPE": kernel})
    setup_logging()
    ann = [("hnsw", f"ef_search={ef}") for ef in args.ef] + [
        ("ivf", f"ivf_probe={p}") for p in args.ivf_probe
    ]
    lines = []
    for n in args.sizes:
        shutil.rmtree(args.tables, ignore_errors=True)
        cfg = job_config(args, "neighbors.mode=exact")
        spark = get_spark(cfg)
        store = TableStore(spark, cfg.storage)
        matrix = unit_vectors(n, args.dim, args.clusters, args.rank)
        write_embeddings(spark, store, matrix[:1000])
        build_neighbors(spark, cfg)  # warm-up: JVM, Python workers, the table's creation
        write_embeddings(spark, store, matrix)

        exact = timed(spark, cfg, store)
        exact_ids, exact_scores = neighbor_table(spark, store, n, args.k)
        flat, check = float("nan"), "faiss skipped"
        if not args.no_flat:
            started = time.time()
            index = faiss.IndexFlatIP(args.dim)
            index.add(matrix)  # ann_top_k on a flat index: an exact search, minus each query itself
            flat_ids, flat_scores = ann_top_k(index, matrix, (np.arange(n), np.arange(n)), args.k, 0, 0)
            flat = time.time() - started
            check = f"{differences(exact_ids, exact_scores, flat_ids, flat_scores)} queries differ from faiss"
            lines.append((n, "faiss IndexFlatIP (driver)", (flat, float("nan")), flat, exact, "reference"))
        lines.append((n, "build_neighbors exact", exact, flat, exact, check))
        for kind, setting in ann:
            job = job_config(
                args, "neighbors.mode=ann", f"neighbors.ann.index={kind}", f"neighbors.ann.{setting}"
            )
            seconds = timed(spark, job, store)
            recall = ann_recall(neighbor_table(spark, store, n, args.k)[0][:, :10], exact_ids[:, :10])
            lines.append(
                (n, f"build_neighbors ann {kind} {setting}", seconds, flat, exact, f"recall@10 {recall:.3f}")
            )
    print(
        f"\n{'N':>8} {'method':<38} {'search s':>8} {'job s':>7} {'search÷flat':>11} {'job÷flat':>8} "
        f"{'speed-up vs exact (search, job)':>31}  check"
    )
    for n, method, (search, job), flat, exact, note in lines:
        print(
            f"{n:>8,} {method:<38} {search:>8.1f} {job:>7.1f} {search / flat:>11.2f} {job / flat:>8.2f} "
            f"{exact[0] / search:>22.2f}× {exact[1] / job:>6.2f}×  {note}"
        )


if __name__ == "__main__":
    main()
