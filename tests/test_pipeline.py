"""jobs/pipeline.py's function: stages in order, one run id, unknown stages refused up front."""

from __future__ import annotations

import pytest

from cdml_spark.errors import ConfigError
from cdml_spark.pipeline import run_pipeline, run_stages
from cdml_spark.tables import COWATCH_EDGES, VIDEO_STATS, WATCH_EVENTS, TableStore
from tests.conftest import SMALL


def test_stages_run_in_order_and_share_one_run_id(spark, cfg_factory):
    cfg = cfg_factory(*SMALL)
    seconds = run_stages(spark, cfg, "ingest_events", "build_graph")
    assert list(seconds) == ["ingest_events", "build_graph"]
    store = TableStore(spark, cfg.storage)
    run_ids = {
        r.run_id
        for t in (WATCH_EVENTS, COWATCH_EDGES, VIDEO_STATS)
        for r in store.read(t).select("run_id").distinct().collect()
    }
    assert len(run_ids) == 1 and run_ids.pop().startswith("pipeline-")


def test_unknown_stage_is_refused_before_anything_runs(spark, cfg_factory):
    cfg = cfg_factory(*SMALL)
    with pytest.raises(ConfigError, match=r"unknown pipeline stage\(s\) \['graph'\]"):
        run_pipeline(spark, cfg, stages=["ingest_events", "graph"])
    for first, last in (("build_graph", "ingest_events"), ("ingest_events", "graph")):
        with pytest.raises(ConfigError, match=f"no pipeline stages from '{first}' to '{last}'"):
            run_stages(spark, cfg, first, last)
    assert not TableStore(spark, cfg.storage).exists(WATCH_EVENTS)
