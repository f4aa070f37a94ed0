"""The pipeline's stages, in order: the one list the Databricks job's tasks (`resources/*.job.yml`,
checked by tests/test_bundle.py), the evaluation's training period and the test fixtures follow.

`jobs/pipeline.py` runs them as one Spark application, sharing one SparkSession and one run id. Each
stage is the function its own `jobs/<stage>.py` calls; one application saves a JVM start per stage and
runs later stages on a warm JVM (the local demo uses it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import SparkSession

from cdml_spark.config import AppConfig
from cdml_spark.errors import ConfigError
from cdml_spark.evaluation.run import evaluate
from cdml_spark.events import run_ingest
from cdml_spark.features.ingest import ingest_features
from cdml_spark.graph import build_graph
from cdml_spark.maintenance import maintain_tables
from cdml_spark.serving.embed import embed_catalog
from cdml_spark.serving.neighbors import build_neighbors
from cdml_spark.serving.recommend import recommend
from cdml_spark.serving.related import build_related
from cdml_spark.summary import summary
from cdml_spark.tables import Lineage
from cdml_spark.training.train import train
from cdml_spark.triplets import make_triplets

__all__ = ["NAMES", "STAGES", "Stage", "run_pipeline", "run_stages"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """`name`: its job (`jobs/<name>.py`) and bundle task key; `run(spark, cfg, run_id=...)`: the
    function that job calls; `depends_on`: the stages that must finish first (the task's depends_on)."""

    name: str
    run: Callable[..., object]
    depends_on: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("ingest_events", run_ingest),
    Stage("build_graph", build_graph, ("ingest_events",)),
    Stage("ingest_features", ingest_features),
    Stage("make_triplets", make_triplets, ("build_graph", "ingest_features")),
    Stage("train", train, ("make_triplets",)),
    Stage("embed_catalog", embed_catalog, ("train",)),
    Stage("build_neighbors", build_neighbors, ("embed_catalog",)),
    Stage("build_related", build_related, ("build_neighbors",)),
    Stage("recommend", recommend, ("embed_catalog",)),
    Stage("evaluate", evaluate, ("build_related", "recommend")),
    Stage("summary", summary, ("evaluate",)),
    Stage("maintain_tables", maintain_tables, ("summary",)),  # on Databricks even when earlier tasks fail
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def run_pipeline(
    spark: SparkSession, cfg: AppConfig, run_id: str | None = None, stages: list[str] | None = None
) -> dict[str, float]:
    """Run `stages` (default: all, in pipeline order) with one run id; returns seconds per stage."""
    names = stages or list(NAMES)
    unknown = [s for s in names if s not in NAMES]
    if unknown:
        raise ConfigError(f"unknown pipeline stage(s) {unknown}; stages are {NAMES}")
    run_id = run_id or Lineage.new("pipeline", {}).run_id
    seconds: dict[str, float] = {}
    for i, name in enumerate(names, 1):
        log.info("pipeline %s: stage %d/%d %s", run_id, i, len(names), name)
        start = time.time()
        STAGES[NAMES.index(name)].run(spark, cfg, run_id=run_id)
        seconds[name] = round(time.time() - start, 1)
    log.info(
        "pipeline %s: %s; total %.0fs",
        run_id,
        ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()),
        sum(seconds.values()),
    )
    return seconds


def run_stages(
    spark: SparkSession, cfg: AppConfig, first: str, last: str, run_id: str | None = None
) -> dict[str, float]:
    """`run_pipeline` on the stages from `first` through `last`, in pipeline order."""
    if first not in NAMES or last not in NAMES or NAMES.index(first) > NAMES.index(last):
        raise ConfigError(f"no pipeline stages from {first!r} to {last!r}; stages are {NAMES}")
    return run_pipeline(spark, cfg, run_id, list(NAMES[NAMES.index(first) : NAMES.index(last) + 1]))
