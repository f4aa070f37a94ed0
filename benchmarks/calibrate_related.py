"""Calibrate `related.support_half_weight` (k of the related-videos blend) on validation data only.

    .venv/bin/python benchmarks/calibrate_related.py [--config conf/local.yaml] [--dataset movielens-1m]
        [--reuse] [--grid 1 2 5 ...] [--set KEY=VALUE ...]

The evaluation's time split, one level down. The evaluation's training period (the time-split
protocol's training events; its held-out period is never read) is split again by the same rule: per
user, the latest `evaluation.test_fraction` of their training-period videos are the validation period.
The real pipeline runs on the rest in `<workspace>/calibrate/<dataset>/time_split` (ingest → build_graph →
ingest_features → make_triplets → train + embed, fusion `training.fusion`); the validation period's
co-watch graph (the `cowatch_edges` rule) is the truth. For each k of the grid: retrieval NDCG@10 of
the blend on warm validation queries (cold ones rank by the embedding alone, whatever k is), next to
co-occurrence CF and CDML. Results: `<report_dir>/../calibrate_related/calibrate_related.md` (+ .csv);
set `related.support_half_weight` to the best k.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from cdml_spark.cli import setup_logging
from cdml_spark.config import AppConfig, load_config
from cdml_spark.evaluation.protocols import (
    held_out_events,
    held_out_neighbours,
    index_of,
    load_catalog,
    protocol_split,
    training_events,
    workspace_config,
)
from cdml_spark.evaluation.run import model_vectors, run_training_period, workspace_models
from cdml_spark.evaluation.tasks import related_scorers, retrieval, scorers
from cdml_spark.events import read_events_source, validate_events
from cdml_spark.spark import get_spark

GRID = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]
PROTOCOL = "time_split"


def calibration_config(cfg: AppConfig, dataset: str) -> AppConfig:
    """The time-split workspace config under `<workspace>/calibrate`, training `training.fusion` only."""
    ev = cfg.evaluation.model_copy(
        update={
            "workspace": os.path.join(cfg.evaluation.workspace, "calibrate"),
            "fusions": [cfg.training.fusion],
        }
    )
    return workspace_config(cfg.model_copy(update={"evaluation": ev}), dataset, PROTOCOL)


def validation_split(spark: SparkSession, ecfg: AppConfig) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(the evaluation's training-period events as read, their valid rows, the time split of those)."""
    source = read_events_source(spark, ecfg)
    valid = (
        validate_events(source, ecfg.events).where("reason IS NULL").select("user_id", "video_id", "event_ts")
    )
    outer = protocol_split(valid, ecfg, PROTOCOL).persist()  # the evaluation's split
    period = training_events(valid, outer)
    return training_events(source, outer), period, protocol_split(period, ecfg, PROTOCOL).persist()


def score_grid(
    spark: SparkSession, ecfg: AppConfig, models: dict, truth_events: DataFrame, grid: list[float]
) -> pd.DataFrame:
    """Warm validation retrieval NDCG@10 of CF, CDML and the blend for each k of `grid`."""
    catalog = load_catalog(spark, ecfg)
    relevant = held_out_neighbours(truth_events, ecfg.graph, index_of(catalog.ids))
    vectors = model_vectors(models, catalog)
    baselines = scorers(catalog, vectors, ecfg.evaluation.seed)
    methods = {name: baselines[name] for name in ("cooccurrence_cf", *vectors)}
    for k in grid:
        blends = related_scorers(catalog, vectors, k)
        methods |= {f"{name} k={k:g}": scorer for name, scorer in blends.items()}
    rows = retrieval(catalog, methods, relevant, [10])
    return pd.DataFrame(
        [
            {"method": r.method, "ndcg@10 warm": r.value, "queries": r.support}
            for r in rows
            if r.item_split == "warm" and r.metric == "ndcg"
        ]
    )


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default="conf/local.yaml")
    parser.add_argument(
        "--dataset", default="movielens-1m", choices=["movielens-1m", "movielens-100k", "synthetic"]
    )
    parser.add_argument(
        "--reuse", action="store_true", help="score the calibration workspace as it is (no pipeline run)"
    )
    parser.add_argument("--grid", nargs="*", type=float, default=GRID, help="values of k to score")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: <report_dir>/../calibrate_related)"
    )
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(args.config, args.set)
    spark = get_spark(cfg)
    ecfg = calibration_config(cfg, args.dataset)
    source, period, inner = validation_split(spark, ecfg)
    if args.reuse:
        models = workspace_models(spark, ecfg)
    else:
        models = run_training_period(spark, ecfg, source, inner, PROTOCOL, "calibrate-related")
    results = score_grid(spark, ecfg, models, held_out_events(period, inner), args.grid)
    blends = results[results["method"].str.startswith("related_")]
    best = blends.loc[blends["ndcg@10 warm"].idxmax(), "method"]
    out = args.out or os.path.join(
        os.path.dirname(cfg.evaluation.report_dir.rstrip("/")), "calibrate_related"
    )
    os.makedirs(out, exist_ok=True)
    results.to_csv(os.path.join(out, "calibrate_related.csv"), index=False)
    with open(os.path.join(out, "calibrate_related.md"), "w") as handle:
        handle.write(
            f"Validation (time split of the {args.dataset} time-split training period), model "
            f"{next(iter(models.values()))[0]}: warm retrieval NDCG@10; best: {best}.\n\n"
            + _markdown(results)
            + "\n"
        )
    print(results.to_string(index=False))
    print(f"best: {best}")


if __name__ == "__main__":
    main()
