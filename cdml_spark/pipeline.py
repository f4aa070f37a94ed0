"""The whole pipeline as one Spark application (`jobs/pipeline.py`): the Databricks job's tasks in
order, sharing one SparkSession and one run id. Each stage is the function its own `jobs/<stage>.py`
calls; one application saves a JVM start per stage and runs later stages on a warm JVM (the local
demo uses it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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
from cdml_spark.summary import summary
from cdml_spark.tables import Lineage
from cdml_spark.training.train import train
from cdml_spark.triplets import make_triplets

log = logging.getLogger(__name__)

STAGES: dict[str, Callable[..., object]] = {
    "ingest_events": run_ingest,
    "build_graph": build_graph,
    "ingest_features": ingest_features,
    "make_triplets": make_triplets,
    "train": train,
    "embed_catalog": embed_catalog,
    "build_neighbors": build_neighbors,
    "recommend": recommend,
    "evaluate": evaluate,
    "summary": summary,
    "maintain_tables": maintain_tables,
}


def run_pipeline(
    spark: SparkSession, cfg: AppConfig, run_id: str | None = None, stages: list[str] | None = None
) -> dict[str, float]:
    """Run `stages` (default: all, in pipeline order) with one run id; returns seconds per stage."""
    names = stages or list(STAGES)
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown pipeline stage(s) {unknown}; stages are {list(STAGES)}")
    run_id = run_id or Lineage.new("pipeline", {}).run_id
    seconds: dict[str, float] = {}
    for i, name in enumerate(names, 1):
        log.info("pipeline %s: stage %d/%d %s", run_id, i, len(names), name)
        start = time.time()
        STAGES[name](spark, cfg, run_id=run_id)
        seconds[name] = round(time.time() - start, 1)
    log.info(
        "pipeline %s: %s; total %.0fs",
        run_id,
        ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()),
        sum(seconds.values()),
    )
    return seconds
