"""Daily operation (`jobs/run_days.py`): for each UTC day of `events.dates`, in order, ingest that
day (`events.mode=append`: only its rows of `watch_events` are replaced) and add it to the co-watch
graph (`graph.mode=incremental`, window ending that day). One day is the scheduled run
(`events.dates=yesterday`); a range is a backfill. Rerunning a day changes nothing."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from pyspark.sql import SparkSession

from cdml_spark.config import AppConfig
from cdml_spark.errors import ConfigError
from cdml_spark.events import run_ingest
from cdml_spark.graph import GraphReport, build_graph

__all__ = ["run_days"]

log = logging.getLogger(__name__)


def run_days(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> list[GraphReport]:
    """Ingest and add to the graph each day of `events.dates`; returns the graph reports."""
    dates = cfg.events.date_range()
    if dates is None:
        raise ConfigError("run_days needs events.dates: a day, first..last, yesterday or today")
    days = [dates[0] + timedelta(days=i) for i in range((dates[1] - dates[0]).days + 1)]
    reports, start = [], time.time()
    for i, day in enumerate(days, 1):
        day_cfg = cfg.model_copy(
            update={
                "events": cfg.events.model_copy(update={"mode": "append", "dates": day.isoformat()}),
                "graph": cfg.graph.model_copy(update={"mode": "incremental", "as_of": day}),
            }
        )
        run_ingest(spark, day_cfg, run_id)
        reports.append(build_graph(spark, day_cfg, run_id))
        elapsed = time.time() - start
        log.info("run_days: %s done (%d/%d days, %.0fs, %.0fs/day)", day, i, len(days), elapsed, elapsed / i)
    return reports
