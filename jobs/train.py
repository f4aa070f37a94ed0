"""spark-submit jobs/train.py --config conf/local.yaml [--backend torch|horovod] [--resume] [--set training.fusion=late]

Trains the CDML embedding on the current `triplets` snapshot (Petastorm → PyTorch DDP under
TorchDistributor, or Horovod under horovod.spark.run) and writes the model artifact to <training.model_dir>/<model_version>/."""

import argparse

from cdml_spark.cli import run_job
from cdml_spark.training.train import train


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["torch", "horovod"],
        default="torch",
        help="torch: TorchDistributor (DDP); horovod: horovod.spark.run (needs scripts/build_horovod.sh)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from <training.checkpoint_dir>/last.pt"
    )


def _train(spark, cfg, run_id=None, backend="torch", resume=False):
    return train(spark, cfg, run_id=run_id, resume=resume, backend=backend)


if __name__ == "__main__":
    run_job(__doc__, _train, extra_args=_args)
