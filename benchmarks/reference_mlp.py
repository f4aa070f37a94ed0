"""The issue-13 reference: a small, well-mined MLP on the same split, beside CDML and the collaborative
ceiling (test truth, fixed recipes).

    .venv/bin/python benchmarks/reference_mlp.py [--config conf/local.yaml] [--dataset movielens-1m]
        [--protocol user_holdout] [--set KEY=VALUE ...]

Run after `jobs/evaluate.py` with the same config: it reads that evaluation's workspace as it is (its
training co-watch graph, content features and the CDML embeddings embedded last) and scores retrieval
on the same held-out truth as the evaluation. The reference's recipe is fixed (the one issue 13 quotes;
nothing here is tuned, so scoring it on the test truth chooses nothing): early fusion of the raw content
vector → 512 → ReLU → 128, unit-normalised; positives drawn ∝ co-watch score / √(anchor's total score);
negatives uniform over trained videos; in each batch, the semi-hard negative (closest candidate farther
than the positive) from a pool of the batch's negatives and positives minus the anchor and its
co-watch neighbours (its own sampled negative when none qualifies); hinge on squared distances with
margin 0.1; Adam 1e-3; 12 epochs × 150 steps of 1024 triplets.

`cowatch_ceiling` is co-occurrence CF on the graph of every event that is not held out, cold videos'
included (the protocol removes those): what collaborative filtering scores on the cold videos had the
training users' (time split: training period's) watches of them been kept. A content-only method gets
no such evidence about a cold video.
Prints warm and cold NDCG@10, and the cold ratios against raw content and the ceiling.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from torch import nn

from cdml_spark.cli import setup_logging
from cdml_spark.config import AppConfig, load_config
from cdml_spark.evaluation.protocols import (
    catalog_graph,
    held_out_events,
    held_out_neighbours,
    index_of,
    load_catalog,
    protocol_split,
    workspace_config,
)
from cdml_spark.evaluation.run import model_vectors, workspace_models
from cdml_spark.evaluation.tasks import Catalog, Graph, retrieval, scorers
from cdml_spark.events import read_events_source, validate_events
from cdml_spark.graph import graph_edges
from cdml_spark.spark import get_spark

MARGIN, EPOCHS, STEPS, BATCH, HIDDEN, DIM, LR = 0.1, 12, 150, 1024, 512, 128, 1e-3


def _edges(catalog: Catalog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchors, positives, sampling probability) of the training graph's directed edges."""
    g = catalog.graph
    anchors = np.repeat(np.arange(g.size), np.diff(g.indptr))
    totals = np.bincount(anchors, weights=g.scores, minlength=g.size)
    weights = g.scores / np.sqrt(totals[anchors])
    return anchors, g.indices, weights / weights.sum()


def train_reference(catalog: Catalog, seed: int = 0) -> np.ndarray:
    """[N, 128] unit embeddings of every catalog video from the reference recipe."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    anchors, positives, prob = _edges(catalog)
    trained = np.unique(anchors)
    neighbour = torch.zeros(catalog.size, catalog.size, dtype=torch.bool)
    neighbour[torch.from_numpy(anchors), torch.from_numpy(positives)] = True
    neighbour |= neighbour.clone().T | torch.eye(catalog.size, dtype=torch.bool)
    features = torch.from_numpy(catalog.raw)
    net = nn.Sequential(nn.Linear(features.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, DIM))
    optimiser = torch.optim.Adam(net.parameters(), lr=LR)

    def embed(ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(net(features[ids]), dim=1)

    for epoch in range(1, EPOCHS + 1):
        started, losses = time.time(), []
        for _ in range(STEPS):
            pick = rng.choice(len(anchors), BATCH, p=prob)
            a = torch.from_numpy(anchors[pick])
            p = torch.from_numpy(positives[pick])
            n = torch.from_numpy(rng.choice(trained, BATCH))
            ea, ep, en = embed(a), embed(p), embed(n)
            d_ap = (ea - ep).pow(2).sum(1)
            pool, pool_ids = torch.cat([en, ep]), torch.cat([n, p])
            d_pool = 2 - 2 * ea @ pool.T  # squared distance of unit vectors
            eligible = ~neighbour[a][:, pool_ids] & (d_pool > d_ap[:, None].detach())
            masked = torch.where(eligible, d_pool.detach(), torch.full_like(d_pool, float("inf")))
            best = masked.argmin(1)
            d_an = torch.where(
                eligible.any(1), d_pool.gather(1, best[:, None]).squeeze(1), (ea - en).pow(2).sum(1)
            )
            loss = torch.relu(d_ap - d_an + MARGIN).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        print(f"reference epoch {epoch}: loss {np.mean(losses):.4f} ({time.time() - started:.1f} s)")
    with torch.no_grad():
        return embed(torch.arange(catalog.size)).numpy()


def ceiling_graph(valid: DataFrame, split: DataFrame, ecfg: AppConfig, index: dict[str, int]) -> Graph:
    """The `cowatch_edges` rule on the events that are not held out, cold videos included, over `index`."""
    kept = split.where(~F.col("held_out")).select("user_id", "video_id")
    events = valid.join(kept, ["user_id", "video_id"], "left_semi")
    return catalog_graph(graph_edges(events, ecfg.graph), index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default="conf/local.yaml")
    parser.add_argument("--dataset", default="movielens-1m", choices=["movielens-1m", "movielens-100k"])
    parser.add_argument("--protocol", default="user_holdout", choices=["user_holdout", "time_split"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(args.config, args.set)
    spark = get_spark(cfg)
    ecfg = workspace_config(cfg, args.dataset, args.protocol)
    valid = (
        validate_events(read_events_source(spark, ecfg), ecfg.events)
        .where("reason IS NULL")
        .select("user_id", "video_id", "event_ts")
    )
    split = protocol_split(valid, ecfg, args.protocol).persist()
    catalog = load_catalog(spark, ecfg)
    models = workspace_models(spark, ecfg)
    vectors = model_vectors(models, catalog) | {
        "reference_mlp": train_reference(catalog, cfg.evaluation.seed)
    }
    index = index_of(catalog.ids)
    relevant = held_out_neighbours(held_out_events(valid, split), ecfg.graph, index)
    ceiling = ceiling_graph(valid, split, ecfg, index)
    methods = scorers(catalog, vectors, cfg.evaluation.seed) | {
        "cowatch_ceiling": lambda groups: np.stack([ceiling.row_sum(g) for g in groups])
    }
    rows = retrieval(catalog, methods, relevant, [10])
    table = pd.DataFrame(
        [{"method": r.method, "split": r.item_split, "ndcg@10": r.value} for r in rows if r.metric == "ndcg"]
    ).pivot(index="method", columns="split", values="ndcg@10")
    print(f"{args.dataset} ({args.protocol}), CDML model {next(iter(models.values()))[0]}:")
    print(table.round(4).to_string())
    cold = table["cold"]
    for name in vectors:
        print(
            f"cold {name}: {cold[name] / cold['raw_features']:.2f} x raw content, "
            f"{cold[name] / cold['cowatch_ceiling']:.2f} x the collaborative ceiling"
        )


if __name__ == "__main__":
    main()
