"""The training processes' random streams (torch CPU and CUDA, numpy, Python's `random`).

Rule: every rank builds the network right after `torch.manual_seed(seed)` with the base seed
(`training.seed`), so the initial parameters are the same on every rank and in a one-process run
(DDP broadcasts rank 0's at construction and Horovod `broadcast_parameters` anyway). Then
`seed_rank` reseeds each rank from its own child of `SeedSequence(seed)` (spawn key = rank): dropout
masks differ between ranks, and a rank's stream does not depend on the world size. The data order
is not drawn from these streams (the loader takes explicit seeds). Checkpoints hold every rank's
`capture`; resume `restore`s it instead of reseeding, so a resumed run draws what the
uninterrupted run would have.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["capture", "restore", "seed_rank"]


def seed_rank(seed: int, rank: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and `random` from rank `rank`'s child of `seed`."""
    torch_seed, numpy_seed, python_seed = np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(3)
    torch.manual_seed(int(torch_seed))
    np.random.seed(int(numpy_seed))
    random.seed(int(python_seed))


def capture(device: torch.device) -> dict:
    """This process's generator states (picklable; `device`'s CUDA generator when it is a GPU)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(state: dict, device: torch.device) -> None:
    """Set the generators to a `capture` (its tensors may have been loaded onto a GPU)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
