"""Benchmark: our `build_graph` vs DuckDB running the same rule in SQL, on the same input, in one run.

    .venv/bin/python benchmarks/bench_graph_vs_duckdb.py [--events 1000000 10000000] [--threads 2]
        [--duckdb-memory 12GB] [--parquet PATH] [--tables /tmp/cdml-bench-duckdb] [--duckdb-only | --no-duckdb]
        [--set graph.min_users=3 ...]

Per size: synthetic events (or `--parquet`, ingested as `events.source=path`) go through our ingest
into `watch_events`; then `build_graph` (Spark, as the job runs it) and DuckDB (`--threads` threads)
each read that table's current parquet files and write `cowatch_edges` and `video_stats` (DuckDB to
parquet). The edge sets must be equal (video, neighbour, rank, co-watchers; scores to 1e-12).
Prints both times, their ratio and time per event. Run it alone on the machine. DuckDB is a
benchmark dependency only; it gets `--duckdb-memory` (beside Spark's JVM; at 10⁸ events its default,
80% of RAM, was killed by the kernel) and spills to `<tables>/duckdb-tmp`. `--duckdb-only` reruns
only DuckDB on the tables an earlier run of one size left in `--tables` and compares the edge sets;
`--no-duckdb` runs only ours (at 10⁸ events DuckDB does not finish on a 2-core, 24 GiB machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import duckdb
from pyspark.sql import functions as F

from cdml_spark.cli import setup_logging
from cdml_spark.config import GraphConfig, load_config
from cdml_spark.events import run_ingest
from cdml_spark.graph import DAY_US, build_graph, lookback_days, window_us
from cdml_spark.spark import get_spark
from cdml_spark.tables import COWATCH_EDGES, WATCH_EVENTS, TableStore
from cdml_spark.training.loader import snapshot_files

# the workload: 100k videos with Zipf 0.9 popularity, last 50 videos per user, >= 3 users
WORKLOAD = [
    "events.synthetic.num_videos=100000",
    "events.synthetic.popularity_exponent=0.9",
    "graph.max_history=50",
    "graph.min_users=3",
]

# The graph rule of cdml_spark.graph (module docstring: per (user, UTC day) kept rows, exposures,
# pairs counted once per (user, later watch's day)) in plain SQL over every day; pruning videos
# below min_users before pairing is the same a-priori step ours takes. The self-joins are on the user
# with the window as a filter; joining on (user, day + d) for d <= lookback instead gave identical
# edges but was slower at 10⁷ events (84.7 s against 56.7 s, separate runs), and neither version
# finished 10⁸ events on 2 cores / 24 GiB (README "Benchmarks"). Equal watch times are broken by the
# video's key, Spark's xxhash64(video_id), which DuckDB lacks: `keys` holds it per video (from Spark).
GRAPH_SQL = """
CREATE TEMP TABLE kept AS
SELECT user_id, video_id, day, ts_us FROM (
    SELECT *, row_number() OVER (PARTITION BY user_id, day ORDER BY ts_us DESC, key) AS n
    FROM (SELECT user_id, video_id, ts_us // {day_us} AS day, max(ts_us) AS ts_us
          FROM (SELECT user_id, video_id, epoch_us(event_ts) AS ts_us FROM events) GROUP BY ALL)
    JOIN keys USING (video_id)
) WHERE n <= {max_history};
CREATE TEMP TABLE users AS
WITH firsts AS (SELECT user_id, day, min(ts_us) AS first_us FROM kept GROUP BY ALL)
SELECT video_id, count(*) AS user_days FROM (
    SELECT user_id, video_id, day FROM kept
    UNION
    SELECT k.user_id, k.video_id, f.day FROM kept k JOIN firsts f
      ON f.user_id = k.user_id AND f.day > k.day AND f.day <= k.day + {lookback}
     AND f.first_us - k.ts_us <= {window_us}
) GROUP BY ALL;
CREATE TEMP TABLE pairs AS
WITH k AS (SELECT kept.* FROM kept JOIN users u USING (video_id) WHERE u.user_days >= {min_users})
SELECT video_a, video_b, count(*) AS cowatch_user_days FROM (
    SELECT DISTINCT a.user_id, least(a.video_id, b.video_id) AS video_a,
           greatest(a.video_id, b.video_id) AS video_b, b.day
    FROM k a JOIN k b
      ON a.user_id = b.user_id AND a.video_id <> b.video_id AND b.ts_us >= a.ts_us
     AND b.ts_us - a.ts_us <= {window_us}
) GROUP BY ALL HAVING count(*) >= {min_users};
COPY (
    SELECT * FROM (
        SELECT p.video_id, p.neighbor_id, row_number() OVER (
                   PARTITION BY p.video_id
                   ORDER BY p.cowatch_user_days / sqrt(v.user_days * n.user_days) DESC,
                            p.cowatch_user_days DESC, p.neighbor_id) AS rank,
               p.cowatch_user_days, p.cowatch_user_days / sqrt(v.user_days * n.user_days) AS score,
               v.user_days AS video_user_days, n.user_days AS neighbor_user_days
        FROM (SELECT video_a AS video_id, video_b AS neighbor_id, cowatch_user_days FROM pairs
              UNION ALL SELECT video_b, video_a, cowatch_user_days FROM pairs) p
        JOIN users v ON v.video_id = p.video_id JOIN users n ON n.video_id = p.neighbor_id
    ) WHERE rank <= {max_neighbors}
) TO '{out}/cowatch_edges.parquet' (FORMAT parquet);
COPY (
    SELECT e.*, coalesce(u.user_days, 0) AS user_days, coalesce(c.neighbors, 0) AS neighbors
    FROM (SELECT video_id, count(*) AS events, count(DISTINCT user_id) AS users,
                 min(event_ts) AS first_watch, max(event_ts) AS last_watch FROM events GROUP BY ALL) e
    LEFT JOIN users u USING (video_id)
    LEFT JOIN (SELECT video_id, count(*) AS neighbors
               FROM read_parquet('{out}/cowatch_edges.parquet') GROUP BY ALL) c USING (video_id)
) TO '{out}/video_stats.parquet' (FORMAT parquet);
"""


def duckdb_graph(
    files: list[str], keys: str, params: GraphConfig, out: str, threads: int, memory: str
) -> float:
    """Seconds DuckDB takes from the events' parquet files (and the `keys` parquet: video_id, key) to
    the two parquet outputs."""
    os.makedirs(out, exist_ok=True)
    config = {
        "threads": threads,
        "memory_limit": memory,
        "temp_directory": f"{out}-tmp",
        "max_temp_directory_size": "25GB",
    }
    con = duckdb.connect(config=config)
    paths = ", ".join(f"'{f.removeprefix('file:')}'" for f in files)
    started = time.time()
    con.execute(f"CREATE VIEW events AS SELECT user_id, video_id, event_ts FROM read_parquet([{paths}])")
    con.execute(f"CREATE VIEW keys AS SELECT video_id, key FROM read_parquet('{keys}')")
    con.execute(
        GRAPH_SQL.format(
            max_history=params.max_history,
            min_users=params.min_users,
            window_us=window_us(params),
            day_us=DAY_US,
            lookback=lookback_days(params),
            max_neighbors=params.max_neighbors,
            out=out,
        )
    )
    seconds = time.time() - started
    con.close()
    return seconds


def edge_differences(ours: list[str], theirs: str) -> tuple[int, int, float]:
    """(rows only in ours, rows only in DuckDB's, max |score difference|) on the edge key columns."""
    con = duckdb.connect()
    paths = ", ".join(f"'{f.removeprefix('file:')}'" for f in ours)
    con.execute(f"CREATE VIEW ours AS SELECT * FROM read_parquet([{paths}])")
    con.execute(f"CREATE VIEW theirs AS SELECT * FROM read_parquet('{theirs}')")
    cols = "video_id, neighbor_id, rank, cowatch_user_days"
    only_ours = con.execute(
        f"SELECT count(*) FROM (SELECT {cols} FROM ours EXCEPT ALL SELECT {cols} FROM theirs)"
    )
    only_ours = only_ours.fetchone()[0]
    only_theirs = con.execute(
        f"SELECT count(*) FROM (SELECT {cols} FROM theirs EXCEPT ALL SELECT {cols} FROM ours)"
    ).fetchone()[0]
    score_gap = con.execute(
        "SELECT coalesce(max(abs(o.score - t.score)), 0) FROM ours o JOIN theirs t USING (video_id, neighbor_id)"
    ).fetchone()[0]
    return only_ours, only_theirs, score_gap


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--parquet", help="Events to use instead of synthetic ones (one size)")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (match Spark's cores)")
    parser.add_argument("--duckdb-memory", default="12GB", help="DuckDB memory_limit")
    parser.add_argument("--tables", default="/tmp/cdml-bench-duckdb")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--duckdb-only", action="store_true", help="DuckDB only, on the tables already in --tables"
    )
    only.add_argument("--no-duckdb", action="store_true", help="ours only (no ratio)")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    setup_logging()
    rows = []
    for n in [0] if args.parquet else args.events:
        if not args.duckdb_only:
            shutil.rmtree(args.tables, ignore_errors=True)
        source = (
            ["events.source=path", f"events.path={args.parquet}"]
            if args.parquet
            else [
                "events.source=synthetic",
                f"events.synthetic.num_events={n}",
                f"events.synthetic.num_users={max(1000, n // 50)}",
                f"events.synthetic.partitions={max(2, n // 250_000)}",
            ]
        )
        cfg = load_config(
            "conf/local.yaml", [f"storage.tables_root={args.tables}", *source, *WORKLOAD, *args.set]
        )
        spark = get_spark(cfg)
        store = TableStore(spark, cfg.storage)
        if args.duckdb_only:
            events, ours = store.read(WATCH_EVENTS).count(), float("nan")
        else:
            events = run_ingest(spark, cfg).written
            ours = build_graph(spark, cfg).seconds
        if args.no_duckdb:
            rows.append((events, ours, float("nan"), store.read(COWATCH_EDGES).count()))
            continue
        files = snapshot_files(spark, store.location(WATCH_EVENTS), table=store.qualified(WATCH_EVENTS))
        out = os.path.join(args.tables, "duckdb")
        keys = os.path.join(args.tables, "video_keys.parquet")
        videos = store.read(WATCH_EVENTS).select("video_id", F.xxhash64("video_id").alias("key"))
        videos.distinct().toPandas().to_parquet(keys)
        theirs = duckdb_graph(files, keys, cfg.graph, out, args.threads, args.duckdb_memory)
        edge_files = snapshot_files(
            spark, store.location(COWATCH_EDGES), table=store.qualified(COWATCH_EDGES)
        )
        only_ours, only_theirs, score_gap = edge_differences(edge_files, f"{out}/cowatch_edges.parquet")
        edges = store.read(COWATCH_EDGES).count()
        if only_ours or only_theirs or score_gap > 1e-12:
            raise SystemExit(
                f"edge sets differ at {events:,} events: {only_ours:,} rows only ours, "
                f"{only_theirs:,} only DuckDB's, max score gap {score_gap:.3g}"
            )
        rows.append((events, ours, theirs, edges))
    print(
        f"\n{'events':>12} {'build_graph s':>14} {'DuckDB s':>9} {'ratio':>6} {'ours µs/ev':>11} {'edges':>10}"
    )
    for events, ours, theirs, edges in rows:
        print(
            f"{events:>12,} {ours:>14.1f} {theirs:>9.1f} {ours / theirs:>6.1f} "
            f"{ours / events * 1e6:>11.2f} {edges:>10,}  "
            + ("(DuckDB skipped)" if args.no_duckdb else "(identical edge sets)")
        )


if __name__ == "__main__":
    main()
