"""Distributed CDML training: one worker function (`train_worker`) run by TorchDistributor (DDP,
gloo on CPU / NCCL on GPUs), reading triplets through Petastorm (`loader`).

The driver (`train`) resolves the Delta snapshot's files, builds a picklable `TrainPlan`, runs the
workers, and records the artifact (`<model_dir>/<model_version>/`: model.pt, model.json with
the per-epoch metrics, training.png) plus MLflow tracking. Rank 0 checkpoints after every epoch (model,
optimizer, epoch, step) to `<checkpoint_dir>/last.pt`; `--resume` continues from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.loader import ROLES, FeatureTable, iterate_batches, snapshot_files
from cdml_spark.model import ModelSpec
from cdml_spark.tables import Lineage, TableStore, triplets_spec, video_features_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPlan:
    spec: ModelSpec
    train_files: list[str]
    validation_files: list[str]
    batch_size: int
    epochs: int
    learning_rate: float
    weight_decay: float
    margin: float
    semi_hard: bool
    seed: int
    shuffle_batches: int
    reader_workers: int
    checkpoint_path: str
    resume: bool
    features: FeatureTable | None = None
    backend: str = (
        "torch"  # torch: DDP under TorchDistributor; horovod: horovod.torch under horovod.spark.run
    )


def _to_torch(batch: dict[str, np.ndarray], names: list[str], device):
    import torch

    inputs = {role: {n: torch.from_numpy(batch[f"{role}_{n}"]).to(device) for n in names} for role in ROLES}
    keys = {role: torch.from_numpy(batch[f"{role}_key"]).to(device) for role in ROLES}
    return inputs, keys


def _embed_triplet(model, inputs: dict, names: list[str]):
    """One forward pass over anchors, positives and negatives stacked together."""
    import torch

    size = len(inputs["anchor"][names[0]])
    stacked = {n: torch.cat([inputs[r][n] for r in ROLES]) for n in names}
    out = model(stacked)
    return out[:size], out[size : 2 * size], out[2 * size :]


def _batches(plan: TrainPlan, files: list[str], rank: int, world: int, epoch: int):
    return iterate_batches(
        files,
        list(plan.spec.modality_dims),
        plan.batch_size,
        rank,
        world,
        seed=plan.seed * 1000 + epoch,
        shuffle_batches=plan.shuffle_batches,
        workers=plan.reader_workers,
        features=plan.features,
    )


class _TorchDDP:
    """torch.distributed (gloo on CPU, NCCL on GPUs) + DDP; `Join` lets ranks have unequal batch counts."""

    def __init__(self, use_cuda: bool):
        import torch.distributed as dist

        dist.init_process_group("nccl" if use_cuda else "gloo")
        self.rank, self.world, self.local_rank = (
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    def wrap(self, net, optimizer):
        import torch

        return torch.nn.parallel.DistributedDataParallel(net), optimizer  # DDP broadcasts rank 0's parameters

    def all_sum(self, tensor):
        import torch.distributed as dist

        dist.all_reduce(tensor)
        return tensor

    def epoch(self, model):
        from torch.distributed.algorithms.join import Join

        return Join([model])

    def gather(self, value) -> list:
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def sync(self, net, optimizer, leader: int) -> None:
        """Copy `leader`'s parameters and optimizer state to every rank."""
        import torch.distributed as dist

        states = [net.state_dict(), optimizer.state_dict()] if self.rank == leader else [None, None]
        dist.broadcast_object_list(states, src=leader)
        net.load_state_dict(states[0])
        optimizer.load_state_dict(states[1])

    def close(self) -> None:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


class _Horovod:
    """horovod.torch: DistributedOptimizer averages gradients (gloo on CPU); rank 0's parameters are
    broadcast at the start; `hvd.join()` lets ranks have unequal batch counts."""

    def __init__(self, use_cuda: bool):
        import horovod.torch as hvd

        hvd.init()
        self.hvd, self.rank, self.world, self.local_rank = hvd, hvd.rank(), hvd.size(), hvd.local_rank()

    def wrap(self, net, optimizer):
        self.hvd.broadcast_parameters(net.state_dict(), root_rank=0)
        if optimizer.state:  # resumed; on a fresh optimizer the broadcast would take a zero-gradient step
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return net, self.hvd.DistributedOptimizer(optimizer, named_parameters=net.named_parameters())

    def all_sum(self, tensor):
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    @contextmanager
    def epoch(self, model):
        yield
        self.hvd.join()  # answers the other ranks' allreduces until every rank is done

    def gather(self, value) -> list:
        return self.hvd.allgather_object(value)

    def sync(self, net, optimizer, leader: int) -> None:
        self.hvd.broadcast_parameters(net.state_dict(), root_rank=leader)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=leader)

    def close(self) -> None:
        self.hvd.join()


def train_worker(plan: TrainPlan) -> dict | None:
    """Runs in every training process. Rank 0's checkpoint after the last epoch is the result."""
    import torch
    from tqdm import tqdm

    from cdml_spark.losses import semi_hard_negatives, triplet_loss
    from cdml_spark.model import CDMLNet

    use_cuda = torch.cuda.is_available()
    backend = _Horovod(use_cuda) if plan.backend == "horovod" else _TorchDDP(use_cuda)
    rank, world = backend.rank, backend.world
    device = torch.device("cuda", backend.local_rank) if use_cuda else torch.device("cpu")
    torch.manual_seed(plan.seed)
    names = list(plan.spec.modality_dims)
    net = CDMLNet(plan.spec).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay)
    start_epoch, step, history = 0, 0, []
    if plan.resume and os.path.exists(plan.checkpoint_path):
        state = torch.load(plan.checkpoint_path, map_location=device)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        if rank == 0:
            print(f"resumed from {plan.checkpoint_path}: epoch {start_epoch}, step {step}", flush=True)
    model, optimizer = backend.wrap(net, optimizer)

    def all_sum(values: list[float]) -> list[float]:
        return backend.all_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()

    for epoch in range(start_epoch, plan.epochs):
        model.train()
        began, seen, loss_sum = time.time(), 0, 0.0
        progress = tqdm(
            desc=f"epoch {epoch + 1}/{plan.epochs}", unit="triplet", disable=rank != 0, mininterval=2
        )
        with backend.epoch(model):  # ranks may get unequal numbers of batches
            for batch in _batches(plan, plan.train_files, rank, world, epoch):
                inputs, keys = _to_torch(batch, names, device)
                anchor, positive, negative = _embed_triplet(model, inputs, names)
                if plan.semi_hard:
                    with torch.no_grad():
                        pick = semi_hard_negatives(
                            anchor, positive, negative, keys["anchor"], keys["positive"], keys["negative"]
                        )
                    negative = negative[pick]
                loss, _ = triplet_loss(anchor, positive, negative, plan.margin)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                seen += len(anchor)
                loss_sum += loss.item() * len(anchor)
                progress.update(len(anchor) * world)
                progress.set_postfix(loss=f"{loss.item():.4f}")
        progress.close()
        # a rank with fewer batches skipped the last optimizer steps: copy the rank that took the most
        batches = backend.gather(step)
        if len(set(batches)) > 1:
            backend.sync(net, optimizer, leader=batches.index(max(batches)))
            step = max(batches)
        train_seen, train_loss = all_sum([seen, loss_sum])
        metrics = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss / max(train_seen, 1),
            "train_triplets": int(train_seen),
            "triplets_per_second": train_seen / max(time.time() - began, 1e-9),
            **evaluate(net, plan, rank, world, device, all_sum),
        }
        history.append(metrics)
        if rank == 0:
            print(
                f"epoch {metrics['epoch']}: train_loss {metrics['train_loss']:.4f}, "
                f"val_accuracy {metrics['val_accuracy']:.4f}, val_loss {metrics['val_loss']:.4f}, "
                f"{metrics['triplets_per_second']:,.0f} triplets/s",
                flush=True,
            )
            os.makedirs(os.path.dirname(plan.checkpoint_path) or ".", exist_ok=True)
            tmp = plan.checkpoint_path + ".tmp"
            state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
            torch.save({**state, "step": step, "history": history}, tmp)
            os.replace(tmp, plan.checkpoint_path)
    digest = hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in net.state_dict().values()))
    result = {"param_digests": backend.gather(digest.hexdigest())}  # one per rank, every rank's view
    backend.close()
    return result


def evaluate(net, plan: TrainPlan, rank: int, world: int, device, all_sum) -> dict:
    """Validation triplet accuracy (share with d(a,p) < d(a,n), own negatives) and mean loss."""
    import torch

    from cdml_spark.losses import triplet_loss

    names = list(plan.spec.modality_dims)
    net.eval()
    correct = total = loss_sum = 0.0
    with torch.no_grad():
        for batch in _batches(plan, plan.validation_files, rank, world, epoch=0):
            inputs, _ = _to_torch(batch, names, device)
            anchor, positive, negative = _embed_triplet(net, inputs, names)
            loss, right = triplet_loss(anchor, positive, negative, plan.margin)
            correct += right.sum().item()
            total += len(anchor)
            loss_sum += loss.item() * len(anchor)
    correct, total, loss_sum = all_sum([correct, total, loss_sum])
    net.train()
    return {
        "val_accuracy": correct / max(total, 1),
        "val_loss": loss_sum / max(total, 1),
        "val_triplets": int(total),
    }


def _features_in_memory(spark: SparkSession, store: TableStore, cfg: AppConfig) -> FeatureTable:
    names = [m.name for m in cfg.features.modalities]
    pdf = (
        store.read(video_features_spec(cfg.features.modalities))
        .select(F.xxhash64("video_id").alias("key"), *names)
        .orderBy("key")
        .toPandas()
    )
    return FeatureTable(
        keys=pdf["key"].to_numpy(np.int64), vectors={n: np.stack(pdf[n]).astype(np.float32) for n in names}
    )


def plot_history(history: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    left.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    left.set(xlabel="epoch", ylabel="triplet loss", title="loss")
    left.legend()
    right.plot(epochs, [h["val_accuracy"] for h in history], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="share with d(a,p) < d(a,n)", title="validation triplet accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_mlflow(
    cfg: AppConfig, model_version: str, params: dict, history: list[dict], artifact_dir: str
) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.training.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.training.mlflow.experiment)
    with mlflow.start_run(run_name=model_version):
        mlflow.log_params(params)
        for h in history:
            mlflow.log_metrics({k: v for k, v in h.items() if k not in ("epoch", "step")}, step=h["epoch"])
        mlflow.log_artifacts(artifact_dir, artifact_path="model")


def launch(plan: TrainPlan, tc, use_gpu: bool) -> list[dict]:
    """Run `train_worker` in `tc.num_processes` processes: TorchDistributor (torch; returns rank 0's
    result) or horovod.spark.run (horovod: one Spark task per process over gloo; every rank's result)."""
    if plan.backend == "horovod":
        import horovod.spark

        return horovod.spark.run(
            train_worker, args=(plan,), num_proc=tc.num_processes, use_gloo=True, use_mpi=False
        )
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=tc.num_processes, local_mode=tc.local_mode, use_gpu=use_gpu)
    return [distributor.run(train_worker, plan)]


def train(
    spark: SparkSession,
    cfg: AppConfig,
    run_id: str | None = None,
    resume: bool = False,
    backend: str = "torch",
) -> dict:
    """Job entry: train on the current `triplets` snapshot with TorchDistributor (DDP) or Horovod;
    write the artifact."""
    import torch

    from cdml_spark.model import CDMLNet, save_model

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
    lineage = Lineage.new("train", {"training": tc.model_dump(), "triplets": store.version(table)}, run_id)
    model_version = tc.model_version or f"cdml-{tc.fusion}-{lineage.run_id}"
    plan = TrainPlan(
        spec=ModelSpec(
            modality_dims={m.name: m.dim for m in modalities},
            fusion=tc.fusion,
            hidden=list(tc.hidden),
            embedding_dim=tc.embedding_dim,
            dropout=tc.dropout,
        ),
        train_files=snapshot_files(spark, location, "train"),
        validation_files=snapshot_files(spark, location, "validation"),
        batch_size=tc.batch_size,
        epochs=tc.epochs,
        learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay,
        margin=tc.margin,
        semi_hard=tc.semi_hard,
        seed=tc.seed,
        shuffle_batches=tc.shuffle_batches,
        reader_workers=tc.reader_workers,
        checkpoint_path=os.path.abspath(os.path.join(tc.checkpoint_dir, "last.pt")),
        resume=resume,
        features=None if materialized else _features_in_memory(spark, store, cfg),
        backend=backend,
    )
    use_gpu = torch.cuda.is_available() if tc.use_gpu == "auto" else tc.use_gpu == "true"
    log.info(
        "train: %s, backend %s, triplets v%s (%d train / %d validation files, %s), %d processes, local_mode=%s, gpu=%s",
        model_version,
        backend,
        store.version(table),
        len(plan.train_files),
        len(plan.validation_files),
        "materialised" if materialized else "ids only",
        tc.num_processes,
        tc.local_mode,
        use_gpu,
    )
    started = time.time()
    if not resume and os.path.exists(plan.checkpoint_path):
        os.remove(plan.checkpoint_path)
    digests = launch(plan, tc, use_gpu)[0]["param_digests"]
    if len(set(digests)) != 1:
        raise RuntimeError(f"training ranks ended with different parameters: {digests}")
    # the final checkpoint is the result (checkpoint_dir must be shared storage in barrier mode)
    result = torch.load(plan.checkpoint_path, map_location="cpu")
    net = CDMLNet(plan.spec)
    net.load_state_dict(result["model"])
    artifact = os.path.join(tc.model_dir, model_version)
    info = {
        "model_version": model_version,
        "run_id": lineage.run_id,
        "params_hash": lineage.params_hash,
        "triplets_version": store.version(table),
        "history": result["history"],
        "seconds": time.time() - started,
        "backend": backend,
        "rank_param_digests": digests,
    }
    save_model(net, artifact, extra=info)
    plot_history(result["history"], os.path.join(artifact, "training.png"))
    with open(os.path.join(tc.model_dir, "LATEST"), "w") as handle:
        handle.write(model_version + "\n")
    if tc.mlflow.enabled:
        _log_mlflow(
            cfg,
            model_version,
            {
                **asdict(plan.spec),
                "margin": tc.margin,
                "batch_size": tc.batch_size,
                "semi_hard": tc.semi_hard,
                "lr": tc.learning_rate,
                "backend": backend,
            },
            result["history"],
            artifact,
        )
    last = result["history"][-1] if result["history"] else {}
    log.info("train: wrote %s in %.0fs; final %s", artifact, info["seconds"], json.dumps(last))
    return info
