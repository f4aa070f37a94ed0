"""Benchmark: each loader (`training.loader`: petastorm, arrow, streaming) vs the same triplets as
in-memory torch tensors, at batch 7200.

    .venv/bin/python benchmarks/bench_loader.py [--config conf/local.yaml] [--batch 7200] [--epochs 2]
        [--loaders petastorm arrow streaming]

Reads the current `triplets` snapshot's training files (one process, all shards): an untimed
warm-up epoch per loader (imports, page cache; the first one collects the rows the in-memory path
indexes), then `--epochs` timed epochs of each path, each batch dropped once counted as a training
step drops it. Prints rows/s for each path side by side and each loader's ratio to memory (1 =
parity). The default loaders are those this stack has (card: petastorm, arrow; spark4: arrow,
streaming). `streaming` first converts the snapshot to MDS shards as `train` does (or reuses them: same
place, same triplets version); that one-off time is printed apart. Ids-only triplets
(`triplets.materialize_features: false`) get their vectors from the same in-memory features lookup
`train` uses. Run after `make_triplets`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import torch

from cdml_spark.cli import setup_logging
from cdml_spark.config import load_config
from cdml_spark.runtime import stack
from cdml_spark.spark import get_spark
from cdml_spark.tables import TableStore, triplets_spec
from cdml_spark.training.inputs import training_catalog
from cdml_spark.training.loader import iterate_batches, snapshot_files
from cdml_spark.training.train import streaming_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="conf/local.yaml")
    parser.add_argument("--batch", type=int, default=7200)
    parser.add_argument("--epochs", type=int, default=2)
    default_loaders = ["petastorm", "arrow"] if stack() == "card" else ["arrow", "streaming"]
    parser.add_argument(
        "--loaders", nargs="+", choices=["petastorm", "arrow", "streaming"], default=default_loaders
    )
    args = parser.parse_args()
    setup_logging()
    cfg = load_config(args.config)
    spark = get_spark(cfg)
    store = TableStore(spark, cfg.storage)
    table = triplets_spec(cfg.features.modalities, True)
    version = store.version(table)
    files = snapshot_files(spark, store.location(table), "train", version=version)
    names = [m.name for m in cfg.features.modalities]
    ids_only = any(f"anchor_{name}" not in store.read(table).columns for name in names)
    features = training_catalog(store, cfg)[0] if ids_only else None
    sources = {loader: files for loader in args.loaders}
    if "streaming" in args.loaders:  # as `train` writes them (or finds them)
        start = time.time()
        sources["streaming"] = [streaming_shards(store, cfg, files, version, not ids_only)]
        print(
            f"MDS shards of triplets v{version} ready in {time.time() - start:.1f} s: {sources['streaming'][0]}"
        )

    def loader_epoch(loader: str, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        batches = iterate_batches(
            sources[loader], names, args.batch, 0, 1, seed=epoch, features=features, loader=loader
        )
        for batch in batches:
            yield {k: torch.from_numpy(v) for k, v in batch.items()}

    rates = {}
    for loader in args.loaders:
        batches = list(loader_epoch(loader, 0))  # the untimed warm-up
        if not rates:
            memory = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        del batches
        start = time.time()
        total = sum(len(b["anchor_key"]) for e in range(1, args.epochs + 1) for b in loader_epoch(loader, e))
        rates[loader] = total / (time.time() - start)

    n = len(memory["anchor_key"])
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
        f"\ntriplet rows: {n:,} ({width} floats per row, {layout}), batch {args.batch}, {args.epochs} epochs, "
        f"stack {stack()}"
    )
    for loader, rate in rates.items():
        print(f"{loader + ' loader':<17}: {rate:12,.0f} rows/s  ({rate / memory_rate:.2f} x memory)")
    print(f"in-memory tensors: {memory_rate:12,.0f} rows/s")


if __name__ == "__main__":
    main()
