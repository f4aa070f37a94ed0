"""What the driver hands every training process: one picklable `TrainPlan` (TorchDistributor and
Horovod pickle it with `train_worker` and unpickle it in fresh processes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdml_spark.config import TrainingConfig
from cdml_spark.training.loader import FeatureTable
from cdml_spark.training.mining import ForbiddenPairs
from cdml_spark.training.model import ModelSpec

__all__ = ["TrainPlan", "ValidationSet"]


@dataclass(frozen=True)
class ValidationSet:
    """Per-epoch model selection: each query (a validation video) ranks the catalog's rows (train and
    validation videos, itself excluded) by cosine; its relevant set is its co-watch neighbours."""

    queries: np.ndarray  # catalog rows
    relevant: list[np.ndarray]  # catalog rows per query


@dataclass(frozen=True)
class TrainPlan:
    """The training config as given, plus what the driver resolved from the tables for this run."""

    training: TrainingConfig  # hyper-parameters, epochs/patience, seed, reader settings, validation_k
    spec: ModelSpec  # the network (modality dims from the features config)
    train_files: list[str]  # parquet files of the triplets snapshot's train split (streaming: its MDS dir)
    train_rows: int  # rows in `train_files`: the triplets of one epoch
    checkpoint_path: str  # absolute <checkpoint_dir>/last.pt
    resume: bool
    catalog: FeatureTable  # train + validation videos (validation; the ids-only vector lookup)
    validation: ValidationSet
    forbidden: ForbiddenPairs  # co-watch neighbours: never a mined negative
    ids_only: bool  # triplets hold keys only; vectors come from `catalog`
    backend: str = (
        "torch"  # torch: DDP under TorchDistributor; horovod: horovod.torch under horovod.spark.run
    )
