"""Benchmark: one day added by `graph.mode=incremental` vs a full recompute of the same window.

    .venv/bin/python benchmarks/bench_incremental_graph.py [--events 10000000] [--days 30]
        [--window-days 30] [--tables /tmp/cdml-bench-incremental] [--set graph.min_users=3 ...]

Synthetic events over `--days` UTC days are ingested once. Then, on the same `watch_events`:
1. incremental build with the window ending the day before the last (every day computed: cold start);
2. incremental build with the window ending on the last day: one new day computed (and the oldest
   dropped when the window is shorter than the data), then the window summed;
3. full build of that same window.
Prints the three times and the ratio full / one day, and checks that 2 and 3 wrote identical edges.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import shutil
from datetime import date, timedelta

from pyspark.sql import functions as F

from cdml_spark.cli import setup_logging
from cdml_spark.config import load_config
from cdml_spark.events import run_ingest
from cdml_spark.graph import build_graph
from cdml_spark.spark import get_spark
from cdml_spark.tables import COWATCH_EDGES, TableStore

WORKLOAD = [  # as bench_graph_vs_duckdb.py
    "events.synthetic.num_videos=100000",
    "events.synthetic.popularity_exponent=0.9",
    "graph.max_history=50",
    "graph.min_users=3",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--window-days", type=int, default=30)
    parser.add_argument("--tables", default="/tmp/cdml-bench-incremental")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    setup_logging()
    shutil.rmtree(args.tables, ignore_errors=True)
    overrides = [
        f"storage.tables_root={args.tables}",
        "events.source=synthetic",
        f"events.synthetic.num_events={args.events}",
        f"events.synthetic.num_users={max(1000, args.events // 50)}",
        f"events.synthetic.partitions={max(2, args.events // 250_000)}",
        f"events.synthetic.days={args.days}",
        f"graph.window_days={args.window_days}",
        *WORKLOAD,
        *args.set,
    ]
    cfg = load_config("conf/local.yaml", overrides)
    spark = get_spark(cfg)
    store = TableStore(spark, cfg.storage)
    events = run_ingest(spark, cfg).written
    last = date.fromisoformat(cfg.events.synthetic.start_date) + timedelta(days=args.days - 1)

    def build(mode: str, as_of: date) -> tuple[float, int]:
        run = load_config("conf/local.yaml", [*overrides, f"graph.mode={mode}", f"graph.as_of={as_of}"])
        seconds = build_graph(spark, run).seconds
        return seconds, store.version(COWATCH_EDGES)

    cold, _ = build("incremental", last - timedelta(days=1))
    one_day, incremental_version = build("incremental", last)
    full, full_version = build("full", last)
    path = store.location(COWATCH_EDGES)
    edges = [
        spark.read.format("delta")
        .option("versionAsOf", v)
        .load(path)
        .drop("run_id", "params_hash", "built_at")
        for v in (incremental_version, full_version)
    ]
    differing = edges[0].exceptAll(edges[1]).count() + edges[1].exceptAll(edges[0]).count()
    scores = edges[0].agg(F.count(F.lit(1))).first()[0]
    if differing:
        raise SystemExit(f"incremental and full edges differ in {differing:,} rows")
    print(f"\n{events:,} events over {args.days} days; window {args.window_days} days ending {last}")
    print(f"incremental, every day (cold start): {cold:8.1f} s")
    print(f"incremental, one new day:            {one_day:8.1f} s")
    print(f"full recompute of the window:        {full:8.1f} s   (full / one day = {full / one_day:.1f}x)")
    print(f"identical edge sets: {scores:,} rows")


if __name__ == "__main__":
    main()
