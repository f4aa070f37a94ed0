"""One training process (`train_worker`), run on every rank by TorchDistributor or Horovod.

Each step every rank embeds its batch, gathers every rank's negatives (and positives) as the miner's
candidate pool, re-picks negatives (`cdml_spark.training.mining`; never a co-watch neighbour of the
anchor) and takes one optimizer step; ranks step in lock-step (a used-up shard takes zero-weight
steps). After each epoch the validation NDCG@k (validation videos' co-watch neighbours among train +
validation videos) selects the model; training stops after `patience` epochs without improvement.
Rank 0 checkpoints after every epoch (model, optimizer, best state, history, every rank's RNG
state) to `checkpoint_path`; `plan.resume` continues from it. Seeding: `cdml_spark.training.rng`. On
GPUs each process uses `cuda:LOCAL_RANK` (the current device, set before the process group).
"""

from __future__ import annotations

import gc
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from cdml_spark.evaluation.metrics import ndcg_at_k, rank_items
from cdml_spark.progress import progress_bar
from cdml_spark.training.backends import Backend, connect, gather_with_grad
from cdml_spark.training.loader import ROLES, iterate_batches
from cdml_spark.training.mining import mine_negatives, triplet_loss
from cdml_spark.training.model import CDMLNet
from cdml_spark.training.plan import TrainPlan
from cdml_spark.training.rng import capture, restore, seed_rank

__all__ = ["AllSum", "embed_rows", "load_checkpoint", "step_loss", "train_worker"]

AllSum = Callable[[list[float]], list[float]]


def train_worker(plan: TrainPlan) -> dict:
    """Train; every rank returns {"param_digests": every rank's final parameter digest}."""
    tc = plan.training
    use_cuda = tc.use_gpu != "false" and torch.cuda.is_available()
    backend = connect(plan.backend, use_cuda)
    rank, world = backend.rank, backend.world
    device = torch.device("cuda", backend.local_rank) if use_cuda else torch.device("cpu")
    print(f"rank {rank}/{world} on {socket.gethostname()}, pid {os.getpid()}, {device}", flush=True)
    torch.manual_seed(tc.seed)  # the same initial parameters on every rank
    net = CDMLNet(plan.spec).to(device)
    seed_rank(tc.seed, rank)  # dropout: one stream per rank
    optimizer = torch.optim.Adam(net.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    state = {"epoch": 0, "step": 0, "history": [], "best": None, "best_epoch": 0, "best_ndcg": -1.0}
    if plan.resume and os.path.exists(plan.checkpoint_path):
        state = load_checkpoint(plan.checkpoint_path, device)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if len(state.get("rng", [])) == world:  # else (another world size) the fresh per-rank seeds
            restore(state["rng"][rank], device)
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
        state["val_ndcg_untrained"] = _validate(net, plan, rank, world, device, all_sum)["val_ndcg"]

    for epoch in range(state["epoch"], tc.epochs):
        if state["best"] is not None and epoch - state["best_epoch"] >= tc.patience:
            break  # early stopping: `patience` epochs without a better validation NDCG
        model.train()
        began, seen, loss_sum, last = time.time(), 0, 0.0, None
        progress = progress_bar(f"epoch {epoch + 1}/{tc.epochs}", "triplet", plan.train_rows, rank != 0)
        batches = _batches(plan, rank, world, epoch)
        while True:
            batch = next(batches, None)
            rows = 0 if batch is None else len(batch["anchor_key"])
            live, step_rows = all_sum([float(batch is not None), float(rows)])  # over all ranks
            if live == 0:
                break  # every shard is used up
            weight = 0.0 if batch is None else 1.0
            batch = last if batch is None else batch  # a used-up rank repeats its last batch at weight 0
            last = batch
            loss = step_loss(plan, backend, model, batch, device) * weight
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            seen += rows
            loss_sum += loss.item() * rows
            progress.set_postfix(loss=f"{loss.item():.4f}")
            progress.update(int(step_rows))
        progress.close()
        train_seen, train_loss = all_sum([seen, loss_sum])
        metrics = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss / max(train_seen, 1),
            "train_triplets": int(train_seen),
            "triplets_per_second": train_seen / max(time.time() - began, 1e-9),
            **_validate(net, plan, rank, world, device, all_sum),
        }
        # every rank takes rank 0's figures: all-reduced floats may differ in the last bit between
        # ranks, and the keep/stop decisions below must be identical on all of them
        metrics = backend.gather(metrics)[0]
        history.append(metrics)
        improved = metrics["val_ndcg"] > state["best_ndcg"]
        if improved:
            state["best"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            state.update(best_epoch=epoch + 1, best_ndcg=metrics["val_ndcg"])
        state.update(epoch=epoch + 1, step=step, history=history, rng=backend.gather(capture(device)))
        if rank == 0:
            print(
                f"epoch {metrics['epoch']}: train_loss {metrics['train_loss']:.4f}, "
                f"val_ndcg@{tc.validation_k} {metrics['val_ndcg']:.4f}"
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


def _batches(plan: TrainPlan, rank: int, world: int, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    tc = plan.training
    return iterate_batches(
        plan.train_files,
        list(plan.spec.modality_dims),
        tc.batch_size,
        rank,
        world,
        seed=tc.seed * 1000 + epoch,
        shuffle_batches=tc.shuffle_batches,
        workers=tc.reader_workers,
        features=plan.catalog if plan.ids_only else None,
        loader=tc.loader,
    )


def step_loss(plan: TrainPlan, backend: Backend, model, batch: dict[str, np.ndarray], device) -> torch.Tensor:
    """Loss of one step: embed, gather every rank's candidates, mine negatives, reduce."""
    tc, names = plan.training, list(plan.spec.modality_dims)
    inputs = {r: {n: torch.from_numpy(batch[f"{r}_{n}"]).to(device) for n in names} for r in ROLES}
    keys = {r: torch.from_numpy(batch[f"{r}_key"]).to(device) for r in ROLES}
    size = len(keys["anchor"])
    out = model({n: torch.cat([inputs[r][n] for r in ROLES]) for n in names})  # one pass over all three
    anchor, positive, negative = out[:size], out[size : 2 * size], out[2 * size :]
    if tc.miner == "none":
        return triplet_loss(anchor, positive, negative, tc.margin, tc.reduction)[0]
    local_pool = torch.cat([negative, positive] if tc.pool_positives else [negative])
    local_keys = torch.cat([keys["negative"], keys["positive"]] if tc.pool_positives else [keys["negative"]])
    if backend.world > 1:
        pool_keys = torch.cat(backend.all_gather(local_keys))
        pool, sizes = gather_with_grad(local_pool, backend)
    else:
        pool_keys, pool, sizes = local_keys, local_pool, [len(local_pool)]
    own = sum(sizes[: backend.rank]) + torch.arange(size, device=device)
    with torch.no_grad():
        pick = mine_negatives(
            tc.miner, anchor, positive, keys["anchor"], keys["positive"], pool, pool_keys, own, plan.forbidden
        )
    return triplet_loss(anchor, positive, pool[pick], tc.margin, tc.reduction)[0]


def load_checkpoint(path: str | os.PathLike, map_location) -> dict:
    """A checkpoint `train_worker` wrote (it holds numpy RNG states, which torch >= 2.6's default
    `weights_only=True` refuses; the file is our own)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def _save_checkpoint(path: str, state: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def embed_rows(net, vectors: dict[str, np.ndarray], device, batch_size: int = 8192) -> np.ndarray:
    """Unit-norm embeddings of feature rows (eval mode, no gradients)."""
    rows = len(next(iter(vectors.values())))
    out = []
    with torch.no_grad():
        for lo in range(0, rows, batch_size):
            chunk = {n: torch.from_numpy(m[lo : lo + batch_size]).to(device) for n, m in vectors.items()}
            out.append(net(chunk).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.spec.embedding_dim), np.float32)


def _validate(net, plan: TrainPlan, rank: int, world: int, device, all_sum: AllSum) -> dict:
    """Validation NDCG@k: each rank scores its share of the validation queries against the whole
    train + validation catalog; the sums are combined over ranks."""
    k = plan.training.validation_k
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
        for row, ranked in zip(chunk, rank_items(scores, k), strict=True):
            total += ndcg_at_k(ranked.tolist(), set(val.relevant[row].tolist()), k)
    total, count = all_sum([total, float(len(mine))])
    return {"val_ndcg": total / max(count, 1.0), "val_queries": int(count)}
