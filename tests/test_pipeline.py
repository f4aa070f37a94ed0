"""jobs/pipeline.py's function: stages in order, one run id, unknown stages refused up front; the
stages from ingest to recommendations end to end on a tiny synthetic catalog (on either stack)."""

from __future__ import annotations

import pytest

from cdml_spark.errors import ConfigError
from cdml_spark.pipeline import run_pipeline, run_stages
from cdml_spark.tables import (
    COWATCH_EDGES,
    RELATED_VIDEOS,
    USER_RECOMMENDATIONS,
    VIDEO_EMBEDDINGS,
    VIDEO_NEIGHBORS,
    VIDEO_STATS,
    WATCH_EVENTS,
    TableStore,
)
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


def test_ingest_to_recommendations_end_to_end(spark, cfg_factory, tmp_path):
    """Every stage from ingest to recommend (training: TorchDistributor, 2 gloo processes, this
    stack's default loader), one run id; every catalog video gets an embedding and neighbours."""
    cfg = cfg_factory(
        *SMALL,
        f"training.model_dir={tmp_path / 'models'}",
        f"training.checkpoint_dir={tmp_path / 'checkpoints'}",
        "training.mlflow.enabled=false",
        "training.hidden=[16]",
        "training.embedding_dim=8",
        "training.batch_size=256",
        "training.epochs=2",
        "neighbors.k=5",
    )
    seconds = run_stages(spark, cfg, "ingest_events", "recommend")
    assert list(seconds)[-1] == "recommend" and len(seconds) == 9
    store = TableStore(spark, cfg.storage)
    videos = store.read(VIDEO_EMBEDDINGS).count()
    assert videos == cfg.events.synthetic.num_videos
    neighbors = store.read(VIDEO_NEIGHBORS)
    assert neighbors.count() == videos * 5 and neighbors.select("video_id").distinct().count() == videos
    assert store.read(RELATED_VIDEOS).count() > 0 and store.read(USER_RECOMMENDATIONS).count() > 0
    run_ids = {
        r.run_id
        for t in (WATCH_EVENTS, VIDEO_EMBEDDINGS, VIDEO_NEIGHBORS, USER_RECOMMENDATIONS)
        for r in store.read(t).select("run_id").distinct().collect()
    }
    assert len(run_ids) == 1
