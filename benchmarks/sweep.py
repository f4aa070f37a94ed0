"""Hyper-parameter sweep on the validation metric only (never on test truth).

    .venv/bin/python benchmarks/sweep.py [--config conf/local.yaml] [--dataset movielens-1m]
        [--protocol time_split] [--reuse] [--only NAME ...] [--base KEY=VALUE ...]

Prepares the evaluation workspace's *training* tables once (`<workspace>/sweep/<dataset>/<protocol>`:
the protocol's training events → ingest → build_graph → ingest_features), then for each variant
below rebuilds triplets when its `triplets.*` keys changed and trains with the real `train` job. A
variant is scored by the model's validation NDCG@`training.validation_k` at its kept epoch: validation
videos (the triplet split's hash rule) ranked against train + validation videos by their co-watch
neighbours in the training graph. The held-out truth of the evaluation is never read. Results go to
`<report_dir>/../sweep/sweep.md` (+ .csv, + a PNG).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import pandas as pd

from cdml_spark.cli import setup_logging
from cdml_spark.config import AppConfig, load_config
from cdml_spark.evaluation.protocols import protocol_split, training_events, workspace_config
from cdml_spark.events import ingest_events, read_events_source, validate_events
from cdml_spark.features.ingest import ingest_features
from cdml_spark.graph import build_graph
from cdml_spark.spark import get_spark
from cdml_spark.training.train import train
from cdml_spark.triplets import make_triplets

log = logging.getLogger("sweep")

# name -> overrides on top of the config (+ --base); one knob (or one recipe) at a time
VARIANTS: dict[str, list[str]] = {
    "config": [],
    "miner=none": ["training.miner=none"],
    "negatives=uniform": ["triplets.negative_sampling=uniform"],
    "margin=0.1": ["training.margin=0.1"],
    "pool_positives=false": ["training.pool_positives=false"],
    "reduction=nonzero_mean": ["training.reduction=nonzero_mean"],
    "weight=cowatch_user_days": ["triplets.weight=cowatch_user_days"],
    "batch=4096": ["training.batch_size=4096", "training.learning_rate=0.002"],
    "lr=0.0003": ["training.learning_rate=0.0003"],
    "hidden=[1024,512]": ["training.hidden=[1024, 512]"],
    "dropout=0.3": ["training.dropout=0.3"],
    "fusion=late": ["training.fusion=late"],
    # second round: the two knobs that beat `config` by more than 0.02, together, with more epochs
    "uniform+cowatch_user_days, 10 epochs": [
        "triplets.negative_sampling=uniform",
        "triplets.weight=cowatch_user_days",
        "training.epochs=10",
    ],
    "uniform+cowatch_user_days+pool_positives=false, 10 epochs": [
        "triplets.negative_sampling=uniform",
        "triplets.weight=cowatch_user_days",
        "training.pool_positives=false",
        "training.epochs=10",
    ],
    # third round, from the chosen config: the knobs not run before
    "dropout=0.0": ["training.dropout=0.0"],
    "embedding_dim=256": ["training.embedding_dim=256"],
    "hidden=[1024]": ["training.hidden=[1024]"],
    # fourth round (per-day graph): the kept epoch sat at the 10-epoch cap, so a longer cap
    "epochs=20": ["training.epochs=20"],
    "dropout=0.3, epochs=20": ["training.dropout=0.3", "training.epochs=20"],
}


def _apply(cfg_path: str, base: list[str], overrides: list[str], workspace: AppConfig) -> AppConfig:
    """The workspace config with the variant's overrides (loaded and validated like a job's)."""
    cfg = load_config(cfg_path, [*base, *overrides])
    return workspace.model_copy(
        update={
            "triplets": cfg.triplets.model_copy(
                update={
                    "cold_fraction": workspace.triplets.cold_fraction,
                    "hard_negatives_from": None,
                }
            ),
            "training": cfg.training.model_copy(
                update={
                    "model_dir": workspace.training.model_dir,
                    "checkpoint_dir": workspace.training.checkpoint_dir,
                    "mlflow": workspace.training.mlflow,
                }
            ),
        }
    )


def prepare(spark, cfg: AppConfig, dataset: str, protocol: str) -> AppConfig:
    """The protocol's training events through ingest, graph and features in a sweep workspace."""
    workspace = cfg.model_copy(
        update={
            "evaluation": cfg.evaluation.model_copy(
                update={"workspace": os.path.join(cfg.evaluation.workspace, "sweep")}
            )
        }
    )
    ecfg = workspace_config(workspace, dataset, protocol)
    source = read_events_source(spark, ecfg)
    valid = validate_events(source, ecfg.events).where("reason IS NULL")
    split = protocol_split(valid.select("user_id", "video_id", "event_ts"), ecfg, protocol)
    ingest_events(spark, ecfg, training_events(source, split))
    build_graph(spark, ecfg)
    ingest_features(spark, ecfg)
    return ecfg


def _markdown(frame: pd.DataFrame) -> str:
    cells = [
        [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def plot(results: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = results.sort_values("val_ndcg")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ordered) + 1))
    ax.barh(ordered["variant"], ordered["val_ndcg"], color="tab:blue")
    ax.axvline(float(results.loc[results["variant"] == "config", "val_ndcg"].iloc[0]), color="grey", ls="--")
    ax.set(xlabel="validation NDCG@10 (kept epoch)", title="sweep (validation data only)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default="conf/local.yaml")
    parser.add_argument("--dataset", default="movielens-1m")
    parser.add_argument("--protocol", default="time_split", choices=["time_split", "user_holdout"])
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the prepared workspace tables (triplets are always rebuilt)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--base", nargs="*", default=[], help="overrides applied to every variant")
    parser.add_argument("--out", default=None, help="output folder (default: <report_dir>/../sweep)")
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(args.config, args.base)
    spark = get_spark(cfg)
    if args.reuse:
        sweep_cfg = cfg.evaluation.model_copy(
            update={"workspace": os.path.join(cfg.evaluation.workspace, "sweep")}
        )
        ecfg = workspace_config(cfg.model_copy(update={"evaluation": sweep_cfg}), args.dataset, args.protocol)
    else:
        ecfg = prepare(spark, cfg, args.dataset, args.protocol)
    out = args.out or os.path.join(os.path.dirname(cfg.evaluation.report_dir.rstrip("/")), "sweep")
    os.makedirs(out, exist_ok=True)
    rows, built_for = [], None
    for name, overrides in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        vcfg = _apply(args.config, args.base, overrides, ecfg)
        if vcfg.triplets != built_for:
            make_triplets(spark, vcfg)
            built_for = vcfg.triplets
        started = time.time()
        info = train(spark, vcfg)
        rows.append(
            {
                "variant": name,
                "val_ndcg": info["val_ndcg"],
                "untrained": info["val_ndcg_untrained"],
                "best_epoch": info["best_epoch"],
                "epochs_run": len(info["history"]),
                "train_seconds": round(time.time() - started, 1),
            }
        )
        log.info("sweep %s: %s", name, rows[-1])
        results = pd.DataFrame(rows)
        results.to_csv(os.path.join(out, "sweep.csv"), index=False)
        with open(os.path.join(out, "sweep.md"), "w") as handle:
            handle.write(
                f"Sweep on {args.dataset} / {args.protocol} training events, base {args.base or '-'}; "
                "validation NDCG@10 at the kept epoch.\n\n" + _markdown(results) + "\n"
            )
    if rows and "config" in {r["variant"] for r in rows}:
        plot(pd.DataFrame(rows), os.path.join(out, "sweep.png"))
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
