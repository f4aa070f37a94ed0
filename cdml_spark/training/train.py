"""The `train` stage (driver): check the triplets against their inputs (`inputs`), build the
picklable `TrainPlan` (`plan`), run `train_worker` (`worker`) in `training.num_processes` processes
with TorchDistributor (DDP; gloo on CPU, NCCL on GPUs) or Horovod (`backends`), then publish the best
epoch as the artifact `<model_dir>/<model_version>/` (model.pt, model.json with the per-epoch metrics
and the kept epoch, training.png) plus the MLflow run (`report`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict

import torch
from pyspark.sql import SparkSession

from cdml_spark.config import AppConfig
from cdml_spark.runtime import require_horovod
from cdml_spark.tables import Lineage, TableStore, triplets_spec
from cdml_spark.training.inputs import (
    check_inputs,
    cowatch_keys,
    training_catalog,
    validation_queries,
)
from cdml_spark.training.loader import ROLES, parquet_rows, snapshot_files
from cdml_spark.training.mds import ensure_mds
from cdml_spark.training.mining import ForbiddenPairs
from cdml_spark.training.model import CDMLNet, ModelSpec, save_model
from cdml_spark.training.plan import TrainPlan, ValidationSet
from cdml_spark.training.report import log_training_run, plot_history
from cdml_spark.training.worker import load_checkpoint, train_worker

__all__ = ["streaming_shards", "train"]

log = logging.getLogger(__name__)


def _launch(plan: TrainPlan, use_gpu: bool) -> list[dict]:
    """Run `train_worker` in `training.num_processes` processes: TorchDistributor (torch; returns rank
    0's result) or horovod.spark.run (horovod: one Spark task per process over gloo; every rank's result)."""
    tc = plan.training
    if plan.backend == "horovod":
        import horovod.spark

        return horovod.spark.run(
            train_worker, args=(plan,), num_proc=tc.num_processes, use_gloo=True, use_mpi=False
        )
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=tc.num_processes, local_mode=tc.local_mode, use_gpu=use_gpu)
    return [distributor.run(train_worker, plan)]


def streaming_shards(
    store: TableStore, cfg: AppConfig, files: list[str], version: int, materialized: bool
) -> str:
    """The MDS copy of `files` (the train split of `triplets` v`version`) that `training.loader=streaming`
    reads: `<training.streaming_dir, default <storage.cache_dir>/mds>/triplets-<Delta table id>/v<version>`,
    written by the first run on that version (`mds.ensure_mds`)."""
    table = triplets_spec(cfg.features.modalities, materialize=True)
    names = [m.name for m in cfg.features.modalities] if materialized else []
    columns = [f"{role}_{c}" for role in ROLES for c in ["key", *names]]
    table_id = store.delta_table(table).detail().first()["id"]
    root = cfg.training.streaming_dir or os.path.join(cfg.storage.cache_dir, "mds")
    return ensure_mds(files, columns, os.path.join(root, f"{table.name}-{table_id}"), version)


def train(
    spark: SparkSession,
    cfg: AppConfig,
    run_id: str | None = None,
    resume: bool = False,
    backend: str = "torch",
) -> dict:
    """Job entry: train on the current `triplets` snapshot with TorchDistributor (DDP) or Horovod;
    write the artifact."""
    if backend == "horovod":
        require_horovod()
    tc, modalities = cfg.training, cfg.features.modalities
    store = TableStore(spark, cfg.storage)
    table = triplets_spec(modalities, materialize=True)
    location = store.location(table)
    columns = store.read(table).columns
    missing = [c for c in ("anchor_key", "positive_key", "negative_key") if c not in columns]
    if missing:
        raise FileNotFoundError(
            f"{store.qualified(table)} lacks {missing} (written by an older version): rerun make_triplets"
        )
    materialized = all(f"anchor_{m.name}" in columns for m in modalities)
    check_inputs(store, table, cfg)
    version = store.version(table)  # the snapshot this run reads (its files, its MDS shards)
    lineage = Lineage.new("train", {"training": tc.model_dump(), "triplets": version}, run_id)
    model_version = tc.model_version or f"cdml-{tc.fusion}-{lineage.run_id}"
    catalog, splits = training_catalog(store, cfg)
    edges = cowatch_keys(store)
    queries, relevant = validation_queries(catalog, splits, edges)
    if len(queries) == 0:
        raise ValueError("no validation video has a co-watch neighbour: raise triplets.validation_fraction")
    train_files = snapshot_files(spark, location, "train", store.qualified(table), version)
    train_rows = parquet_rows(train_files)
    if tc.loader == "streaming":  # the ranks read the MDS copy of these files
        train_files = [streaming_shards(store, cfg, train_files, version, materialized)]
    plan = TrainPlan(
        training=tc,
        spec=ModelSpec(
            modality_dims={m.name: m.dim for m in modalities},
            fusion=tc.fusion,
            hidden=list(tc.hidden),
            embedding_dim=tc.embedding_dim,
            dropout=tc.dropout,
        ),
        train_files=train_files,
        train_rows=train_rows,
        checkpoint_path=os.path.abspath(os.path.join(tc.checkpoint_dir, "last.pt")),
        resume=resume,
        catalog=catalog,
        validation=ValidationSet(queries, relevant),
        forbidden=ForbiddenPairs.from_keys(*edges),
        ids_only=not materialized,
        backend=backend,
    )
    use_gpu = torch.cuda.is_available() if tc.use_gpu == "auto" else tc.use_gpu == "true"
    log.info(
        "train: %s, backend %s, loader %s, triplets v%s (%d train files, %s), %d validation queries over %d videos, "
        "%d co-watch pairs never mined, %d processes, local_mode=%s, gpu=%s",
        model_version,
        backend,
        tc.loader,
        version,
        len(plan.train_files),
        "materialised" if materialized else "ids only",
        len(queries),
        len(catalog.keys),
        len(plan.forbidden.codes),
        tc.num_processes,
        tc.local_mode,
        use_gpu,
    )
    started = time.time()
    if not resume and os.path.exists(plan.checkpoint_path):
        os.remove(plan.checkpoint_path)
    digests = _launch(plan, use_gpu)[0]["param_digests"]
    if len(set(digests)) != 1:
        raise RuntimeError(f"training ranks ended with different parameters: {digests}")
    # the checkpoint's best epoch is the result (checkpoint_dir must be shared storage in barrier mode)
    result = load_checkpoint(plan.checkpoint_path, "cpu")
    net = CDMLNet(plan.spec)
    net.load_state_dict(result["best"])
    artifact = os.path.join(tc.model_dir, model_version)
    info = {
        "model_version": model_version,
        "run_id": lineage.run_id,
        "params_hash": lineage.params_hash,
        "triplets_version": version,
        "history": result["history"],
        "best_epoch": result["best_epoch"],
        "val_ndcg_untrained": result["val_ndcg_untrained"],
        "val_ndcg": result["history"][result["best_epoch"] - 1]["val_ndcg"],
        "seconds": time.time() - started,
        "backend": backend,
        "rank_param_digests": digests,
    }
    save_model(net, artifact, extra=info)
    plot_history(result["history"], os.path.join(artifact, "training.png"), result["best_epoch"])
    with open(os.path.join(tc.model_dir, "LATEST"), "w") as handle:
        handle.write(model_version + "\n")
    if tc.mlflow.enabled:
        log_training_run(
            tc.mlflow,
            model_version,
            {
                **asdict(plan.spec),
                **{k: v for k, v in tc.model_dump().items() if k not in ("mlflow", "hidden")},
                "backend": backend,
            },
            result["history"],
            artifact,
            {k: info[k] for k in ("best_epoch", "val_ndcg", "val_ndcg_untrained")},
        )
    log.info(
        "train: wrote %s in %.0fs; kept epoch %d of %d (val_ndcg@%d %.4f; untrained %.4f)",
        artifact,
        info["seconds"],
        info["best_epoch"],
        len(result["history"]),
        tc.validation_k,
        info["val_ndcg"],
        info["val_ndcg_untrained"],
    )
    return info
