"""GPU check (issue 20): the training step at the paper's batch (7200) on synthetic triplets, the
embedding of a 10^6-video synthetic catalog and exact top-100 neighbours, with throughput against
the device's peak. `benchmarks/gpu_check.sh` runs it on every GPU of a CUDA machine:

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=<GPUs> \\
        benchmarks/gpu_check.py [--bf16] [--steps 200] [--catalog 1000000] [--queries 100000]
    .venv/bin/python benchmarks/gpu_check.py --device cpu --small [--bf16]    # the same code, tiny

Network, loss and miner are the project's (`conf/local.yaml`: modalities, hidden widths, dropout,
margin, semi-hard miner, Adam) and each step is `worker.step_loss` under DDP (NCCL on CUDA, gloo on
CPU; one process without torchrun), seeded as `train_worker` seeds. Synthetic videos: video v has
topic v % topics and per modality features = the topic's centre + noise · N(0, 1); a triplet is
(anchor, a video of its topic, a video of another topic); same-topic pairs are the miner's forbidden
pairs, as co-watch neighbours are in training. Validation: triplet accuracy (d(a,p) < d(a,n)) and
mean hinge loss on triplets of held-out videos.

Prints triplets/s of the whole step (host batch → device, embed, gather, mine, loss, backward, Adam)
and of the network alone (forward + backward of device-resident rows), their TFLOP/s (matmul FLOPs
counted analytically: 2·in·out per linear layer and row, ×3 for forward + backward) against the
device's dense peak (`PEAKS`: fp32 without TF32, or bf16), the peak GPU memory; with --bf16 the same
training under bf16 autocast and both runs' validation metrics. Then embeddings/s over the catalog
(host features → device → host, `worker.embed_rows`) and exact top-k queries/s (torch matmul + topk
over blocks of queries, the query itself excluded), checked against `serving.top_k.exact_top_k`.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cdml_spark.config import load_config
from cdml_spark.serving.top_k import exact_top_k
from cdml_spark.training.backends import Backend, connect
from cdml_spark.training.loader import ROLES, FeatureTable
from cdml_spark.training.mining import ForbiddenPairs, triplet_loss
from cdml_spark.training.model import CDMLNet, ModelSpec
from cdml_spark.training.plan import TrainPlan, ValidationSet
from cdml_spark.training.rng import seed_rank
from cdml_spark.training.worker import embed_rows, step_loss

CONFIG = Path(__file__).resolve().parents[1] / "conf" / "local.yaml"
PEAKS = [  # (device name contains, dense bf16 TFLOP/s, fp32 TFLOP/s without TF32); first match wins
    ("H200 NVL", 835.0, 60.0),
    ("H200", 989.0, 67.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5),
]
SMALL = {"batch": 64, "steps": 4, "warmup": 1, "videos": 2000, "topics": 100, "catalog": 5000, "queries": 200}
CHECKED_QUERIES = 16  # compared with the CPU exact search
TIE = 2e-5  # scores this close count as equal (float32 sums of products in different orders)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help=f"tiny sizes for a CPU run: {SMALL}")
    parser.add_argument("--bf16", action="store_true", help="also train under bf16 autocast and compare")
    parser.add_argument("--batch", type=int, default=7200, help="triplets per process and step")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--videos", type=int, default=100_000, help="synthetic training + held-out videos")
    parser.add_argument("--topics", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=2.0, help="feature noise around the topic centre")
    parser.add_argument("--catalog", type=int, default=1_000_000, help="videos embedded and searched")
    parser.add_argument("--queries", type=int, default=100_000, help="exact top-k queries timed")
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    if args.small:  # tiny defaults; options given explicitly still win
        parser.set_defaults(**SMALL)
        args = parser.parse_args()
    return args


def video_features(
    videos: np.ndarray, dims: dict[str, int], topics: int, noise: float
) -> dict[str, np.ndarray]:
    """Per modality float32 [len(videos), d]: the topic's centre (fixed per modality) + noise."""
    rng = np.random.default_rng([len(videos), int(videos[0]) if len(videos) else 0])
    out = {}
    for i, (name, d) in enumerate(dims.items()):
        centres = np.random.default_rng([0, i]).standard_normal((topics, d), dtype=np.float32)
        out[name] = centres[videos % topics] + noise * rng.standard_normal((len(videos), d), dtype=np.float32)
    return out


class Synthetic:
    """Videos [0, train) for training, [train, videos) held out; `train` is a multiple of `topics`."""

    def __init__(self, args: argparse.Namespace, dims: dict[str, int]):
        self.topics, per_topic = args.topics, max(2, int(0.9 * args.videos) // args.topics)
        self.train = per_topic * self.topics
        videos = np.arange(self.train + max(self.topics, args.videos - self.train))
        self.keys = np.random.default_rng(1).choice(2**62, len(videos), replace=False).astype(np.int64)
        self.features = video_features(videos, dims, self.topics, args.noise)
        ranks = np.arange(self.train).reshape(per_topic, self.topics)  # column t: topic t's videos
        pairs = [(ranks[i], ranks[j]) for i in range(per_topic) for j in range(i + 1, per_topic)]
        self.forbidden = ForbiddenPairs.from_keys(
            *(self.keys[np.concatenate([p[side] for p in pairs])] for side in (0, 1))
        )

    def triplets(self, rows: int, seed: int, held_out: bool) -> dict[str, np.ndarray]:
        """A batch as the loader yields it; anchors among the held-out videos if `held_out`."""
        rng, t, train = np.random.default_rng(seed), self.topics, self.train
        anchor = rng.integers(train, len(self.keys), rows) if held_out else rng.integers(0, train, rows)
        positive = (anchor % t + t * rng.integers(0, train // t, rows)) % train
        positive = np.where(positive == anchor, (positive + t) % train, positive)
        negative = (anchor % t + rng.integers(1, t, rows) + t * rng.integers(0, train // t, rows)) % train
        batch = {}
        for role, videos in zip(ROLES, (anchor, positive, negative), strict=True):
            batch[f"{role}_key"] = self.keys[videos]
            batch.update({f"{role}_{n}": m[videos] for n, m in self.features.items()})
        return batch


def peak_tflops(device: torch.device, bf16: bool) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bf if bf16 else fp for part, bf, fp in PEAKS if part in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_row(net: nn.Module) -> int:
    """Matmul FLOPs of one row's forward + backward: 3 × 2·in·out over the linear layers."""
    return 6 * sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))


def rate_line(label: str, rows_per_s: float, flops: int, peak: float | None) -> str:
    tflops = rows_per_s * flops / 1e12
    share = f"{100 * tflops / peak:.1f}% of the {peak:.0f} TFLOP/s peak" if peak else "peak unknown"
    return f"{label}: {rows_per_s / 3:,.0f} triplets/s, {tflops:.3g} TFLOP/s ({share})"


def validate(net: CDMLNet, batch: dict[str, np.ndarray], device: torch.device, margin: float) -> str:
    """Triplet accuracy and mean hinge loss of `batch` (eval mode, fp32)."""
    net.eval()
    names = list(net.spec.modality_dims)
    a, p, n = (
        torch.from_numpy(embed_rows(net, {m: batch[f"{r}_{m}"] for m in names}, device)) for r in ROLES
    )
    net.train()
    loss, right = triplet_loss(a, p, n, margin)
    return f"accuracy {right.float().mean().item():.4f}, hinge loss {loss.item():.4f}"


def train(
    plan: TrainPlan,
    backend: Backend,
    device: torch.device,
    data: Synthetic,
    args: argparse.Namespace,
    bf16: bool,
) -> CDMLNet:
    """Train from the seed as `train_worker` does; rank 0 prints throughput, memory and validation."""
    tc, rank, world = plan.training, backend.rank, backend.world
    batches = [data.triplets(tc.batch_size, seed=1000 * rank + i, held_out=False) for i in range(4)]
    torch.manual_seed(tc.seed)
    net = CDMLNet(plan.spec).to(device)
    held_out = data.triplets(20_000, seed=7, held_out=True)
    untrained = validate(net, held_out, device, tc.margin) if rank == 0 else ""
    seed_rank(tc.seed, rank)
    optimizer = torch.optim.Adam(net.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    model, optimizer = backend.wrap(net, optimizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            began = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = step_loss(plan, backend, model, batches[step % len(batches)], device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    step_rows = 3 * tc.batch_size * args.steps * world / (time.perf_counter() - began)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    alone = CDMLNet(plan.spec).to(device)  # outside DDP: no gradient all-reduce
    rows = {n: torch.randn(3 * tc.batch_size, d, device=device) for n, d in plan.spec.modality_dims.items()}
    for step in range(args.warmup + args.steps):  # the network alone, this process's rows
        if step == args.warmup:
            synchronize(device)
            began = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            out = alone(rows)
        out.float().sum().backward()
    synchronize(device)
    net_rows = 3 * tc.batch_size * args.steps / (time.perf_counter() - began)
    if rank == 0:
        label, flops, peak = "bf16" if bf16 else "fp32", flops_per_row(net), peak_tflops(device, bf16)
        print(
            rate_line(
                f"[{label}] training step, {world} process(es)", step_rows, flops, peak and peak * world
            )
        )
        print(rate_line(f"[{label}] network alone, 1 process", net_rows, flops, peak))
        if memory is not None:
            print(f"[{label}] peak GPU memory (training): {memory:.2f} GiB")
        print(f"[{label}] last step's loss {loss.item():.4f}")
        print(
            f"[{label}] held-out triplets: untrained {untrained}; trained {validate(net, held_out, device, tc.margin)}"
        )
    return net


def embed_and_search(
    net: CDMLNet, device: torch.device, args: argparse.Namespace, dims: dict[str, int]
) -> None:
    """Embeddings/s over a synthetic catalog and exact top-k queries/s over it, checked on a few queries."""
    began = time.perf_counter()
    catalog = video_features(np.arange(args.catalog), dims, args.topics, args.noise)
    print(f"catalog: {args.catalog:,} videos generated in {time.perf_counter() - began:.1f} s")
    net.eval()
    embed_rows(net, {n: m[:1024] for n, m in catalog.items()}, device)  # warm-up
    began = time.perf_counter()
    emb = embed_rows(net, catalog, device, batch_size=65_536)
    print(
        f"embedding: {args.catalog / (time.perf_counter() - began):,.0f} embeddings/s (host → device → host)"
    )
    del catalog
    candidates = torch.from_numpy(emb).to(device)
    queries, k = min(args.queries, len(emb)), min(args.k, len(emb) - 1)
    block = max(1, min(queries, 2**28 // len(emb)))  # query rows per score block (<= 1 GiB of fp32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for timed in (False, True):  # a warm-up block, then all the queries
        synchronize(device)
        began = time.perf_counter()
        scores, positions = [], []
        for lo in range(0, queries if timed else block, block):
            hi = min(lo + block, queries)
            block_scores = candidates[lo:hi] @ candidates.T
            own = torch.arange(lo, hi, device=device)
            block_scores[own - lo, own] = -torch.inf  # the query itself
            top = block_scores.topk(k, dim=1)
            scores.append(top.values)
            positions.append(top.indices)
        synchronize(device)
    seconds = time.perf_counter() - began
    print(
        f"exact top-{k}: {queries / seconds:,.0f} queries/s over {len(emb):,} videos "
        f"({len(emb) / queries * seconds:,.1f} s for every video as a query)"
    )
    if device.type == "cuda":
        print(f"peak GPU memory (search): {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    checked = min(CHECKED_QUERIES, queries)
    rows = np.arange(checked)
    ref_positions, ref_scores = exact_top_k(emb[:checked], (rows, rows), emb, k, block_size=65_536)
    got_scores = torch.cat(scores)[:checked].cpu().numpy()
    got_positions = torch.cat(positions)[:checked].cpu().numpy()
    gap = np.abs(got_scores - ref_scores).max()
    differ = ((got_positions != ref_positions) & (np.abs(got_scores - ref_scores) > TIE)).any(axis=1)
    print(
        f"check vs serving.top_k.exact_top_k (CPU) on {checked} queries: max |score difference| {gap:.2e}, "
        f"{checked - int(differ.sum())}/{checked} agree (up to equal scores)"
    )


def phase(name: str, run, *args):
    """Run one part; print a failure with its traceback and go on (the GPU run is one shot)."""
    try:
        return run(*args)
    except Exception:
        print(f"FAILED: {name}\n{traceback.format_exc()}", flush=True)
        return None


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch (use --device cpu --small on a CPU)")
    if "RANK" not in os.environ:  # one process without torchrun
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": str(port)}
        os.environ.update(env, MASTER_ADDR="127.0.0.1")
    cfg = load_config(CONFIG, [f"training.batch_size={args.batch}"])
    tc, dims = cfg.training, {m.name: m.dim for m in cfg.features.modalities}
    backend = connect("torch", args.device == "cuda")  # sets the rank's device
    device = torch.device("cuda", backend.local_rank) if args.device == "cuda" else torch.device("cpu")
    spec = ModelSpec(
        dims, fusion=tc.fusion, hidden=list(tc.hidden), embedding_dim=tc.embedding_dim, dropout=tc.dropout
    )
    data = Synthetic(args, dims)
    plan = TrainPlan(  # step_loss reads training, spec and forbidden
        training=tc,
        spec=spec,
        train_files=[],
        train_rows=0,
        checkpoint_path="",
        resume=False,
        catalog=FeatureTable(np.zeros(0, np.int64), {}),
        validation=ValidationSet(np.zeros(0, np.int64), []),
        forbidden=data.forbidden,
        ids_only=False,
    )
    if backend.rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(
            f"device: {name} × {backend.world}; torch {torch.__version__}; network {dims} → {list(tc.hidden)} "
            f"→ {tc.embedding_dim} ({tc.fusion} fusion), miner {tc.miner}; batch {tc.batch_size} per process, "
            f"{args.steps} timed steps after {args.warmup}; {data.train:,} training videos in {data.topics:,} "
            f"topics; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}",
            flush=True,
        )
    net = phase("fp32 training", train, plan, backend, device, data, args, False)
    if args.bf16:
        phase("bf16 training", train, plan, backend, device, data, args, True)
    backend.close()
    if backend.rank == 0:
        phase("embedding and search", embed_and_search, net or CDMLNet(spec).to(device), device, args, dims)


if __name__ == "__main__":
    main()
