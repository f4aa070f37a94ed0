"""How the training processes talk: `TorchDDP` (torch.distributed + DDP; gloo on CPU, NCCL on GPUs)
or `Horovod` (horovod.torch over gloo), with one interface: `wrap` the model and optimizer,
`all_sum`, `all_gather` (tensors), `gather` (objects), `close`. `gather_with_grad` builds the miner's
candidate pool from every rank's rows. On GPUs each process first makes `cuda:LOCAL_RANK` its current
device: NCCL's object collectives (`all_gather_object`) and barriers run on the current device, which
would otherwise be `cuda:0` on every rank."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

__all__ = ["Backend", "Horovod", "TorchDDP", "connect", "gather_with_grad"]


class TorchDDP:
    """torch.distributed (gloo on CPU, NCCL on GPUs) + DDP."""

    def __init__(self, use_cuda: bool):
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def wrap(self, net, optimizer):
        return torch.nn.parallel.DistributedDataParallel(net), optimizer  # DDP broadcasts rank 0's parameters

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor (first dimensions may differ), detached."""
        sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: len(tensor)] = tensor.detach()
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        return [o[: int(s.item())] for o, s in zip(out, sizes, strict=True)]

    def gather(self, value) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        dist.barrier()
        # Gloo's worker thread frees the last works' tensors after the barrier and needs the GIL for
        # it; destroying the group (which joins that thread) while this thread holds the GIL
        # deadlocked (py-spy: ~ProcessGroupGloo joining a thread in ~AsyncAllgatherWork). Let it finish.
        time.sleep(1.0)
        dist.destroy_process_group()


class Horovod:
    """horovod.torch: DistributedOptimizer averages gradients (gloo on CPU); rank 0's parameters are
    broadcast at the start."""

    def __init__(self, use_cuda: bool):
        import horovod.torch as hvd

        hvd.init()
        self.hvd, self.rank, self.world, self.local_rank = hvd, hvd.rank(), hvd.size(), hvd.local_rank()
        if use_cuda:
            torch.cuda.set_device(self.local_rank)

    def wrap(self, net, optimizer):
        self.hvd.broadcast_parameters(net.state_dict(), root_rank=0)
        if optimizer.state:  # resumed; on a fresh optimizer the broadcast would take a zero-gradient step
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return net, self.hvd.DistributedOptimizer(optimizer, named_parameters=net.named_parameters())

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        sizes = self.hvd.allgather(torch.tensor([len(tensor)], dtype=torch.int64))
        stacked = self.hvd.allgather(tensor.detach())
        return list(stacked.split(sizes.tolist()))

    def gather(self, value) -> list:
        return self.hvd.allgather_object(value)

    def close(self) -> None:
        self.hvd.join()


Backend = TorchDDP | Horovod


def connect(name: str, use_cuda: bool) -> Backend:
    """Join the process group: `horovod` or (anything else) `torch`."""
    return Horovod(use_cuda) if name == "horovod" else TorchDDP(use_cuda)


def gather_with_grad(local: torch.Tensor, backend: Backend) -> tuple[torch.Tensor, list[int]]:
    """(all ranks' rows concatenated, rows per rank), differentiable: the backward pass sums every
    rank's gradient for this rank's rows. Without it, negatives mined from other ranks are never
    pushed away and the embedding contracts (measured: loss stuck at the margin)."""
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
