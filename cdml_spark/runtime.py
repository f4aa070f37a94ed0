"""Which pinned stack this process runs on, decided in one place: `card` (Databricks Runtime 15.4 LTS
ML: Spark 3.5, Petastorm, Horovod) or `spark4` (the 17.3 LTS ML line: Spark 4, numpy 2, neither
Petastorm nor Horovod). It follows the installed pyspark's major version (read from the package
metadata: nothing is imported). It decides `training.loader`'s default, which Delta jars (Scala 2.12
or 2.13, in `<cache>/jars` or `<cache>/jars-spark4`, as `scripts/setup.sh` puts them) a local Spark
loads, and refuses Horovod and Petastorm on spark4, Mosaic Streaming (`training.loader=streaming`) on
the card stack."""

from __future__ import annotations

import glob
import os
from functools import cache
from importlib.metadata import version
from typing import Literal

from cdml_spark.errors import ConfigError, SetupError

__all__ = ["Stack", "default_loader", "delta_jars", "jars_dir", "require_horovod", "require_loader", "stack"]

Stack = Literal["card", "spark4"]


@cache
def stack() -> Stack:
    """`spark4` when pyspark is 4.x or later, else `card`."""
    return "spark4" if int(version("pyspark").split(".")[0]) >= 4 else "card"


def jars_dir(cache_dir: str) -> str:
    """Where `scripts/setup.sh` puts this stack's Delta jars."""
    return os.path.join(cache_dir, "jars" if stack() == "card" else "jars-spark4")


def delta_jars(directory: str) -> list[str]:
    """The Delta jars in `directory`; `SetupError` unless they are built for this stack's Scala."""
    scala = "2.12" if stack() == "card" else "2.13"
    jars = sorted(glob.glob(os.path.join(directory, "delta-*.jar")))
    if not any(os.path.basename(j).startswith(f"delta-spark_{scala}-") for j in jars):
        raise SetupError(
            f"no delta-spark_{scala} jar in {directory} (the {stack()} stack's): run "
            f"{'CDML_STACK=spark4 ' if stack() == 'spark4' else ''}scripts/setup.sh (or set storage.cache_dir)"
        )
    return jars


def default_loader() -> Literal["petastorm", "arrow"]:
    """`training.loader`'s default: Petastorm on the card stack, pyarrow where Petastorm is gone."""
    return "petastorm" if stack() == "card" else "arrow"


def require_loader(loader: str) -> None:
    """Raise `ConfigError` for `training.loader=petastorm` on a stack without Petastorm and
    `training.loader=streaming` on one without Mosaic Streaming."""
    if loader == "petastorm" and stack() == "spark4":
        raise ConfigError(
            "training.loader=petastorm: the spark4 stack has no Petastorm (it needs pyarrow < 15, numpy < 2); "
            "use training.loader=arrow"
        )
    if loader == "streaming" and stack() == "card":
        raise ConfigError(
            "training.loader=streaming: the card stack has no Mosaic Streaming (mosaicml-streaming is pinned "
            "on the spark4 stack only); use training.loader=petastorm or arrow, or CDML_STACK=spark4"
        )


def require_horovod() -> None:
    """Raise `ConfigError` for `--backend horovod` on a stack without Horovod."""
    if stack() == "spark4":
        raise ConfigError(
            "--backend horovod: the spark4 stack has no Horovod (no release since 2023, dropped after "
            "Databricks Runtime 15.4 LTS ML); use --backend torch (TorchDistributor, DDP)"
        )
