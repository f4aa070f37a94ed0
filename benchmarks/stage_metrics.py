"""Per-stage metrics from a Spark event log: wall time, tasks, shuffle bytes, spill, task skew.

    .venv/bin/python benchmarks/stage_metrics.py EVENT_LOG_FILE [--min-seconds 1]

Record one by launching the benchmark with Spark's event log on, e.g.
    PYSPARK_SUBMIT_ARGS="--conf spark.eventLog.enabled=true --conf spark.eventLog.dir=file:/tmp/ev pyspark-shell" \\
        .venv/bin/python benchmarks/bench_graph_vs_duckdb.py --events 10000000
Prints one row per stage that ran at least `--min-seconds` and the totals: shuffle written and read,
memory/disk spill, and the largest task's duration over the median's (skew).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict


def stage_rows(path: str) -> list[dict]:
    tasks: dict[tuple[int, int], list[dict]] = defaultdict(list)
    stages: dict[tuple[int, int], dict] = {}
    with open(path) as handle:
        for line in handle:
            event = json.loads(line)
            kind = event["Event"]
            if kind == "SparkListenerTaskEnd" and event.get("Task Metrics"):
                key = (event["Stage ID"], event["Stage Attempt ID"])
                info, metrics = event["Task Info"], event["Task Metrics"]
                read = metrics["Shuffle Read Metrics"]
                tasks[key].append(
                    {
                        "seconds": (info["Finish Time"] - info["Launch Time"]) / 1000,
                        "shuffle_write": metrics["Shuffle Write Metrics"]["Shuffle Bytes Written"],
                        "shuffle_read": read["Remote Bytes Read"] + read["Local Bytes Read"],
                        "spill_disk": metrics["Disk Bytes Spilled"],
                        "spill_memory": metrics["Memory Bytes Spilled"],
                    }
                )
            elif kind == "SparkListenerStageCompleted":
                info = event["Stage Info"]
                stages[(info["Stage ID"], info["Stage Attempt ID"])] = info
    rows = []
    for key, info in sorted(stages.items()):
        done = tasks.get(key, [])
        if not done or "Submission Time" not in info:
            continue
        seconds = [t["seconds"] for t in done]
        rows.append(
            {
                "stage": key[0],
                "name": info["Stage Name"].split(" at ")[0][:28],
                "wall_s": (info["Completion Time"] - info["Submission Time"]) / 1000,
                "tasks": len(done),
                "max_over_median": max(seconds) / max(statistics.median(seconds), 1e-3),
                **{
                    k: sum(t[k] for t in done)
                    for k in ("shuffle_write", "shuffle_read", "spill_memory", "spill_disk")
                },
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("event_log")
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    rows = stage_rows(args.event_log)
    mb = 1 << 20
    print(
        f"{'stage':>5} {'name':28} {'wall s':>7} {'tasks':>5} {'max/med':>7} {'shuf w MB':>9} {'shuf r MB':>9} {'spill MB':>8}"
    )
    for r in rows:
        if r["wall_s"] >= args.min_seconds:
            print(
                f"{r['stage']:>5} {r['name']:28} {r['wall_s']:>7.1f} {r['tasks']:>5} {r['max_over_median']:>7.1f} "
                f"{r['shuffle_write'] / mb:>9.1f} {r['shuffle_read'] / mb:>9.1f} {r['spill_disk'] / mb:>8.1f}"
            )
    total = {
        k: sum(r[k] for r in rows) / mb
        for k in ("shuffle_write", "shuffle_read", "spill_memory", "spill_disk")
    }
    print(
        f"total: {sum(r['wall_s'] for r in rows):.1f} s of stages, shuffle written {total['shuffle_write']:,.1f} MB, "
        f"read {total['shuffle_read']:,.1f} MB, spill memory {total['spill_memory']:,.1f} MB / disk {total['spill_disk']:,.1f} MB"
    )


if __name__ == "__main__":
    main()
