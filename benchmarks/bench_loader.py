"""Benchmark: Petastorm loader vs the same triplets as in-memory torch tensors, at batch 7200.

    .venv/bin/python benchmarks/bench_loader.py [--config conf/local.yaml] [--batch 7200] [--epochs 2]

Reads the current `triplets` snapshot's training files (one process, all shards): an untimed
warm-up epoch (imports, page cache) collects the rows the in-memory path indexes, then `--epochs`
timed epochs of each path, each batch dropped once counted as a training step drops it. Prints rows/s
for each path and their ratio (1 = parity). Ids-only triplets (`triplets.materialize_features: false`)
get their vectors from the same in-memory features lookup `train` uses. Run after `make_triplets`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import torch

from cdml_spark.cli import setup_logging
from cdml_spark.config import load_config
from cdml_spark.spark import get_spark
from cdml_spark.tables import TableStore, triplets_spec
from cdml_spark.training.inputs import training_catalog
from cdml_spark.training.loader import iterate_batches, snapshot_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="conf/local.yaml")
    parser.add_argument("--batch", type=int, default=7200)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(args.config)
    spark = get_spark(cfg)
    store = TableStore(spark, cfg.storage)
    table = triplets_spec(cfg.features.modalities, True)
    files = snapshot_files(spark, store.location(table), "train")
    names = [m.name for m in cfg.features.modalities]
    ids_only = any(f"anchor_{name}" not in store.read(table).columns for name in names)
    features = training_catalog(store, cfg)[0] if ids_only else None

    def petastorm_epoch(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        for batch in iterate_batches(files, names, args.batch, 0, 1, seed=epoch, features=features):
            yield {k: torch.from_numpy(v) for k, v in batch.items()}

    batches = list(petastorm_epoch(0))  # the untimed warm-up
    memory = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    n = len(memory["anchor_key"])
    del batches

    start = time.time()
    total = 0
    for epoch in range(1, args.epochs + 1):
        total += sum(len(b["anchor_key"]) for b in petastorm_epoch(epoch))
    petastorm_rate = total / (time.time() - start)

    start = time.time()
    seen = 0
    for epoch in range(1, args.epochs + 1):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(n))
        for i in range(0, n, args.batch):
            idx = order[i : i + args.batch]
            batch = {k: v[idx] for k, v in memory.items()}
            seen += len(batch["anchor_key"])
    memory_rate = seen / (time.time() - start)
    width = sum(v.shape[1] for k, v in memory.items() if v.ndim == 2)
    layout = "ids only, vectors looked up" if ids_only else "vectors materialised"
    print(
        f"\ntriplet rows: {n:,} ({width} floats per row, {layout}), batch {args.batch}, {args.epochs} epochs"
    )
    print(f"petastorm loader : {petastorm_rate:12,.0f} rows/s")
    print(f"in-memory tensors: {memory_rate:12,.0f} rows/s")
    print(f"ratio (petastorm / memory): {petastorm_rate / memory_rate:.2f}")


if __name__ == "__main__":
    main()
