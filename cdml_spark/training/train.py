"""Distributed CDML training: one worker function (`train_worker`) run by TorchDistributor (DDP,
gloo on CPU / NCCL on GPUs) or Horovod, reading triplets through Petastorm (`loader`).

Each step every rank embeds its batch, gathers every rank's negatives (and positives) as the miner's
candidate pool, re-picks negatives (`cdml_spark.training.mining`; never a co-watch neighbour of the anchor)
and takes one optimizer step; ranks step in lock-step (a used-up shard takes zero-weight steps).
After each epoch the validation NDCG@k (validation videos' co-watch neighbours among train +
validation videos, embedded in the training processes) selects the model; training stops after
`patience` epochs without improvement and the best epoch is published.

The driver (`train`) checks the triplets against their inputs (`train_inputs`), builds a picklable
`TrainPlan`, runs the workers and records the artifact (`<model_dir>/<model_version>/`: model.pt,
model.json with the per-epoch metrics and the kept epoch, training.png) plus MLflow tracking. Rank 0
checkpoints after every epoch (model, optimizer, best state, history) to `<checkpoint_dir>/last.pt`;
`--resume` continues from it.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.sql import SparkSession

from cdml_spark.config import AppConfig
from cdml_spark.tables import Lineage, TableStore, triplets_spec
from cdml_spark.training.inputs import (
    check_inputs,
    cowatch_keys,
    training_catalog,
    validation_queries,
)
from cdml_spark.training.loader import ROLES, FeatureTable, iterate_batches, snapshot_files
from cdml_spark.training.mining import ForbiddenPairs
from cdml_spark.training.model import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationSet:
    """Per-epoch model selection: each query (a validation video) ranks `catalog` rows (train and
    validation videos, itself excluded) by cosine; its relevant set is its co-watch neighbours."""

    queries: np.ndarray  # catalog rows
    relevant: list[np.ndarray]  # catalog rows per query
    k: int


@dataclass(frozen=True)
class TrainPlan:
    spec: ModelSpec
    train_files: list[str]
    batch_size: int
    epochs: int
    patience: int
    learning_rate: float
    weight_decay: float
    margin: float
    miner: str
    pool_positives: bool
    reduction: str
    seed: int
    shuffle_batches: int
    reader_workers: int
    checkpoint_path: str
    resume: bool
    catalog: FeatureTable  # train + validation videos (validation; the ids-only vector lookup)
    validation: ValidationSet
    forbidden: ForbiddenPairs  # co-watch neighbours: never a mined negative
    ids_only: bool  # triplets hold keys only; vectors come from `catalog`
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


def _batches(plan: TrainPlan, rank: int, world: int, epoch: int):
    return iterate_batches(
        plan.train_files,
        list(plan.spec.modality_dims),
        plan.batch_size,
        rank,
        world,
        seed=plan.seed * 1000 + epoch,
        shuffle_batches=plan.shuffle_batches,
        workers=plan.reader_workers,
        features=plan.catalog if plan.ids_only else None,
    )


class _TorchDDP:
    """torch.distributed (gloo on CPU, NCCL on GPUs) + DDP."""

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

    def all_gather(self, tensor) -> list:
        """Every rank's tensor (first dimensions may differ), detached."""
        import torch
        import torch.distributed as dist

        sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: len(tensor)] = tensor.detach()
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        return [o[: int(s.item())] for o, s in zip(out, sizes, strict=True)]

    def gather(self, value) -> list:
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        import torch.distributed as dist

        dist.barrier()
        # Gloo's worker thread frees the last works' tensors after the barrier and needs the GIL for
        # it; destroying the group (which joins that thread) while this thread holds the GIL
        # deadlocked (py-spy: ~ProcessGroupGloo joining a thread in ~AsyncAllgatherWork). Let it finish.
        time.sleep(1.0)
        dist.destroy_process_group()


class _Horovod:
    """horovod.torch: DistributedOptimizer averages gradients (gloo on CPU); rank 0's parameters are
    broadcast at the start."""

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

    def all_gather(self, tensor) -> list:
        import torch

        sizes = self.hvd.allgather(torch.tensor([len(tensor)], dtype=torch.int64))
        stacked = self.hvd.allgather(tensor.detach())
        return list(stacked.split(sizes.tolist()))

    def gather(self, value) -> list:
        return self.hvd.allgather_object(value)

    def close(self) -> None:
        self.hvd.join()


def _step_loss(plan: TrainPlan, backend, model, batch, names, device, forbidden):
    """Loss of one step: embed, gather every rank's candidates, mine negatives, reduce."""
    import torch

    from cdml_spark.training.mining import mine_negatives, triplet_loss

    inputs, keys = _to_torch(batch, names, device)
    anchor, positive, negative = _embed_triplet(model, inputs, names)
    if plan.miner == "none":
        return triplet_loss(anchor, positive, negative, plan.margin, plan.reduction)[0]
    local = [negative, positive] if plan.pool_positives else [negative]
    local_keys = [keys["negative"], keys["positive"]] if plan.pool_positives else [keys["negative"]]
    local_pool, local_pool_keys = torch.cat(local), torch.cat(local_keys)
    if backend.world > 1:
        pool_keys = torch.cat(backend.all_gather(local_pool_keys))
        pool, sizes = _gather_with_grad(local_pool, backend)
    else:
        pool_keys, pool, sizes = local_pool_keys, local_pool, [len(local_pool)]
    own = sum(sizes[: backend.rank]) + torch.arange(len(anchor), device=device)
    with torch.no_grad():
        pick = mine_negatives(
            plan.miner, anchor, positive, keys["anchor"], keys["positive"], pool, pool_keys, own, forbidden
        )
    return triplet_loss(anchor, positive, pool[pick], plan.margin, plan.reduction)[0]


def _gather_with_grad(local, backend):
    """(all ranks' rows concatenated, rows per rank), differentiable: the backward pass sums every
    rank's gradient for this rank's rows. Without it, negatives mined from other ranks are never
    pushed away and the embedding contracts (measured: loss stuck at the margin)."""
    import torch

    sizes: list[int] = []

    class Gather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows):
            parts = backend.all_gather(rows)
            sizes.extend(len(p) for p in parts)
            return torch.cat(parts)

        @staticmethod
        def backward(ctx, grad):
            total = backend.all_sum(grad.contiguous())
            lo = sum(sizes[: backend.rank])
            return total[lo : lo + sizes[backend.rank]]

    return Gather.apply(local), sizes


def train_worker(plan: TrainPlan) -> dict | None:
    """Runs in every training process. Every rank steps in lock-step: a rank whose shard is used up
    takes zero-weight steps until every shard is (so every row is seen once per epoch). After each
    epoch the validation NDCG selects the model; rank 0 checkpoints the last and the best epoch."""
    import torch
    from tqdm import tqdm

    from cdml_spark.training.model import CDMLNet

    use_cuda = torch.cuda.is_available()
    backend = _Horovod(use_cuda) if plan.backend == "horovod" else _TorchDDP(use_cuda)
    rank, world = backend.rank, backend.world
    device = torch.device("cuda", backend.local_rank) if use_cuda else torch.device("cpu")
    torch.manual_seed(plan.seed)
    names = list(plan.spec.modality_dims)
    net = CDMLNet(plan.spec).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay)
    state = {"epoch": 0, "step": 0, "history": [], "best": None, "best_epoch": 0, "best_ndcg": -1.0}
    if plan.resume and os.path.exists(plan.checkpoint_path):
        state = torch.load(plan.checkpoint_path, map_location=device)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if rank == 0:
            print(
                f"resumed from {plan.checkpoint_path}: epoch {state['epoch']}, step {state['step']}",
                flush=True,
            )
    model, optimizer = backend.wrap(net, optimizer)
    history, step = state["history"], state["step"]

    def all_sum(values: list[float]) -> list[float]:
        return backend.all_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()

    if "val_ndcg_untrained" not in state:  # the reference point: the same network before any step
        state["val_ndcg_untrained"] = validate(net, plan, rank, world, device, all_sum)["val_ndcg"]

    for epoch in range(state["epoch"], plan.epochs):
        if state["best"] is not None and epoch - state["best_epoch"] >= plan.patience:
            break  # early stopping: `patience` epochs without a better validation NDCG
        model.train()
        began, seen, loss_sum, last = time.time(), 0, 0.0, None
        progress = tqdm(
            desc=f"epoch {epoch + 1}/{plan.epochs}", unit="triplet", disable=rank != 0, mininterval=2
        )
        batches = iter(_batches(plan, rank, world, epoch))
        while True:
            batch = next(batches, None)
            if all_sum([0.0 if batch is None else 1.0])[0] == 0:
                break
            weight = 0.0 if batch is None else 1.0
            batch = last if batch is None else batch  # a used-up rank repeats its last batch at weight 0
            last = batch
            loss = _step_loss(plan, backend, model, batch, names, device, plan.forbidden) * weight
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            rows = int(weight) * len(batch["anchor_key"])
            seen += rows
            loss_sum += loss.item() * rows
            progress.update(rows * world)
            progress.set_postfix(loss=f"{loss.item():.4f}")
        progress.close()
        train_seen, train_loss = all_sum([seen, loss_sum])
        metrics = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss / max(train_seen, 1),
            "train_triplets": int(train_seen),
            "triplets_per_second": train_seen / max(time.time() - began, 1e-9),
            **validate(net, plan, rank, world, device, all_sum),
        }
        # every rank takes rank 0's figures: all-reduced floats may differ in the last bit between
        # ranks, and the keep/stop decisions below must be identical on all of them
        metrics = backend.gather(metrics)[0]
        history.append(metrics)
        improved = metrics["val_ndcg"] > state["best_ndcg"]
        if improved:
            state["best"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            state.update(best_epoch=epoch + 1, best_ndcg=metrics["val_ndcg"])
        state.update(epoch=epoch + 1, step=step, history=history)
        if rank == 0:
            print(
                f"epoch {metrics['epoch']}: train_loss {metrics['train_loss']:.4f}, "
                f"val_ndcg@{plan.validation.k} {metrics['val_ndcg']:.4f}"
                f"{' (best)' if improved else ''}, {metrics['triplets_per_second']:,.0f} triplets/s",
                flush=True,
            )
            _save_checkpoint(
                plan.checkpoint_path,
                {**state, "model": net.state_dict(), "optimizer": optimizer.state_dict()},
            )
    digest = hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in net.state_dict().values()))
    result = {"param_digests": backend.gather(digest.hexdigest())}  # one per rank, every rank's view
    del model, optimizer  # DDP's reducer holds the process group: release it before the group goes
    gc.collect()
    backend.close()
    return result


def _save_checkpoint(path: str, state: dict) -> None:
    import torch

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def embed_rows(net, vectors: dict[str, np.ndarray], device, batch_size: int = 8192) -> np.ndarray:
    """Unit-norm embeddings of feature rows (eval mode, no gradients)."""
    import torch

    rows = len(next(iter(vectors.values())))
    out = []
    with torch.no_grad():
        for lo in range(0, rows, batch_size):
            chunk = {n: torch.from_numpy(m[lo : lo + batch_size]).to(device) for n, m in vectors.items()}
            out.append(net(chunk).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.spec.embedding_dim), np.float32)


def validate(net, plan: TrainPlan, rank: int, world: int, device, all_sum) -> dict:
    """Validation NDCG@k: each rank scores its share of the validation queries against the whole
    train + validation catalog; the sums are combined over ranks."""
    from cdml_spark.evaluation.metrics import ndcg_at_k, rank_items

    net.eval()
    emb = embed_rows(net, plan.catalog.vectors, device)
    net.train()
    val = plan.validation
    mine = np.arange(rank, len(val.queries), world)
    total = 0.0
    for lo in range(0, len(mine), 512):
        chunk = mine[lo : lo + 512]
        scores = emb[val.queries[chunk]] @ emb.T
        scores[np.arange(len(chunk)), val.queries[chunk]] = -np.inf
        for row, ranked in zip(chunk, rank_items(scores, val.k), strict=True):
            total += ndcg_at_k(ranked.tolist(), set(val.relevant[row].tolist()), val.k)
    total, count = all_sum([total, float(len(mine))])
    return {"val_ndcg": total / max(count, 1.0), "val_queries": int(count)}


def plot_history(history: list[dict], path: str, best_epoch: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="triplet loss (mined negatives)", title="training loss")
    right.plot(epochs, [h["val_ndcg"] for h in history], marker="o", color="tab:green")
    if best_epoch:
        right.axvline(best_epoch, color="grey", linestyle="--", label=f"kept: epoch {best_epoch}")
        right.legend()
    right.set(xlabel="epoch", ylabel="NDCG of co-watch neighbours", title="validation retrieval (selection)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_training_run(
    cfg: AppConfig, model_version: str, params: dict, history: list[dict], artifact_dir: str, summary: dict
) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.training.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.training.mlflow.experiment)
    with mlflow.start_run(run_name=model_version):
        mlflow.log_params(params)
        for h in history:
            mlflow.log_metrics({k: v for k, v in h.items() if k not in ("epoch", "step")}, step=h["epoch"])
        mlflow.log_metrics(summary)
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

    from cdml_spark.training.model import CDMLNet, save_model

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
    lineage = Lineage.new("train", {"training": tc.model_dump(), "triplets": store.version(table)}, run_id)
    model_version = tc.model_version or f"cdml-{tc.fusion}-{lineage.run_id}"
    catalog, splits = training_catalog(store, cfg)
    edges = cowatch_keys(store)
    queries, relevant = validation_queries(catalog, splits, edges)
    if len(queries) == 0:
        raise ValueError("no validation video has a co-watch neighbour: raise triplets.validation_fraction")
    plan = TrainPlan(
        spec=ModelSpec(
            modality_dims={m.name: m.dim for m in modalities},
            fusion=tc.fusion,
            hidden=list(tc.hidden),
            embedding_dim=tc.embedding_dim,
            dropout=tc.dropout,
        ),
        train_files=snapshot_files(spark, location, "train", store.qualified(table)),
        batch_size=tc.batch_size,
        epochs=tc.epochs,
        patience=tc.patience,
        learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay,
        margin=tc.margin,
        miner=tc.miner,
        pool_positives=tc.pool_positives,
        reduction=tc.reduction,
        seed=tc.seed,
        shuffle_batches=tc.shuffle_batches,
        reader_workers=tc.reader_workers,
        checkpoint_path=os.path.abspath(os.path.join(tc.checkpoint_dir, "last.pt")),
        resume=resume,
        catalog=catalog,
        validation=ValidationSet(queries, relevant, tc.validation_k),
        forbidden=ForbiddenPairs.from_keys(*edges),
        ids_only=not materialized,
        backend=backend,
    )
    use_gpu = torch.cuda.is_available() if tc.use_gpu == "auto" else tc.use_gpu == "true"
    log.info(
        "train: %s, backend %s, triplets v%s (%d train files, %s), %d validation queries over %d videos, "
        "%d co-watch pairs never mined, %d processes, local_mode=%s, gpu=%s",
        model_version,
        backend,
        store.version(table),
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
    digests = launch(plan, tc, use_gpu)[0]["param_digests"]
    if len(set(digests)) != 1:
        raise RuntimeError(f"training ranks ended with different parameters: {digests}")
    # the checkpoint's best epoch is the result (checkpoint_dir must be shared storage in barrier mode)
    result = torch.load(plan.checkpoint_path, map_location="cpu")
    net = CDMLNet(plan.spec)
    net.load_state_dict(result["best"])
    artifact = os.path.join(tc.model_dir, model_version)
    info = {
        "model_version": model_version,
        "run_id": lineage.run_id,
        "params_hash": lineage.params_hash,
        "triplets_version": store.version(table),
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
        _log_training_run(
            cfg,
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
