"""Benchmark: synthetic events (1M and 10M by default) → watch_events → co-watch graph.

    .venv/bin/python benchmarks/bench_graph.py [--events 1000000 10000000] [--tables /tmp/cdml-bench]

Prints ingest and graph throughput (events/s) and pair/edge counts per size. Numbers, not asserts.
"""

from __future__ import annotations

import argparse
import shutil
import time

from cdml_spark.cli import setup_logging
from cdml_spark.config import load_config
from cdml_spark.events import run_ingest
from cdml_spark.graph import build_graph
from cdml_spark.spark import get_spark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--tables", default="/tmp/cdml-bench")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    setup_logging()
    results = []
    for n in args.events:
        shutil.rmtree(args.tables, ignore_errors=True)
        users = max(1000, n // 50)  # ~50 watches per user
        cfg = load_config(
            "conf/local.yaml",
            [
                f"storage.tables_root={args.tables}",
                "events.source=synthetic",
                f"events.synthetic.num_events={n}",
                f"events.synthetic.num_users={users}",
                f"events.synthetic.num_videos={max(2000, n // 100)}",
                f"events.synthetic.partitions={max(2, n // 250_000)}",
                *args.set,
            ],
        )
        spark = get_spark(cfg)
        t0 = time.time()
        ingest = run_ingest(spark, cfg)
        t1 = time.time()
        graph = build_graph(spark, cfg)
        t2 = time.time()
        results.append((n, ingest.written, t1 - t0, graph, t2 - t1))
    print(
        f"\n{'events':>12} {'ingest s':>9} {'ingest ev/s':>12} {'graph s':>8} {'graph ev/s':>11} "
        f"{'kept (u,v)':>11} {'pairs':>12} {'edge rows':>10}"
    )
    for _, written, ti, g, tg in results:
        print(
            f"{written:>12,} {ti:>9.1f} {written / ti:>12,.0f} {tg:>8.1f} {written / tg:>11,.0f} "
            f"{g.history_rows:>11,} {g.pairs:>12,} {g.edges:>10,}"
        )


if __name__ == "__main__":
    main()
