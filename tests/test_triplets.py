"""make_triplets on a small synthetic pipeline: negatives, splits, holdout, caps, determinism."""

from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from cdml_spark.features.ingest import ingest_features
from cdml_spark.tables import COWATCH_EDGES, VIDEO_SPLITS, TableStore, triplets_spec, video_features_spec
from cdml_spark.triplets import make_triplets


def read(spark, cfg, spec):
    return TableStore(spark, cfg.storage).read(spec)


def test_triplet_invariants(spark, pipeline):
    cfg = pipeline
    stats = make_triplets(spark, cfg)
    store = TableStore(spark, cfg.storage)
    spec = triplets_spec(cfg.features.modalities, materialize=True)
    triplets = store.read(spec).collect()
    assert stats["triplets_by_split"]["train"] > 500 and stats["triplets_by_split"]["validation"] > 50

    edges = {(r.video_id, r.neighbor_id) for r in store.read(COWATCH_EDGES).collect()}
    neighbours = edges | {(b, a) for a, b in edges}
    splits = {r.video_id: r.split for r in store.read(VIDEO_SPLITS).collect()}
    for t in triplets:
        assert (t.anchor_id, t.positive_id) in edges
        assert (t.anchor_id, t.negative_id) not in neighbours
        assert t.negative_id not in (t.anchor_id, t.positive_id)
        roles = {splits[t.anchor_id], splits[t.positive_id], splits[t.negative_id]}
        assert "cold_test" not in roles
        assert splits[t.anchor_id] == t.split
        if t.split == "train":
            assert roles == {"train"}

    # splits partition the catalog; holdout ids are cold; unwatched videos still get a split
    assert len(splits) == 206 and set(splits.values()) == {"train", "validation", "cold_test"}
    assert all(splits[v] == "cold_test" for v in ("v1", "v2", "v3"))
    assert all(v in splits for v in ("v200", "v205"))

    per_anchor: dict[str, set] = {}
    per_pair: dict[tuple, int] = {}
    for t in triplets:
        per_anchor.setdefault(t.anchor_id, set()).add(t.positive_id)
        per_pair[(t.anchor_id, t.positive_id)] = per_pair.get((t.anchor_id, t.positive_id), 0) + 1
    assert max(len(p) for p in per_anchor.values()) == 3  # positives_per_anchor cap reached, not exceeded
    assert max(per_pair.values()) == 2

    features = {r.video_id: r for r in store.read(video_features_spec(cfg.features.modalities)).collect()}
    for t in triplets[:50]:
        assert np.allclose(t.negative_vis, features[t.negative_id].vis)
        assert np.allclose(t.anchor_aud, features[t.anchor_id].aud)


def test_same_seed_same_triplets_and_ids_only_mode(spark, pipeline):
    cfg = pipeline
    ids = ["anchor_id", "positive_id", "negative_id", "split"]
    spec = triplets_spec(cfg.features.modalities, materialize=True)
    make_triplets(spark, cfg)
    first = sorted(read(spark, cfg, spec).select(*ids).collect())
    make_triplets(spark, cfg)
    assert first == sorted(read(spark, cfg, spec).select(*ids).collect())

    other = cfg.model_copy(
        update={"triplets": cfg.triplets.model_copy(update={"seed": 5, "materialize_features": False})}
    )
    make_triplets(spark, other)
    slim = read(spark, other, triplets_spec(other.features.modalities, materialize=False))
    assert "anchor_vis" not in slim.columns
    assert first != sorted(slim.select(*ids).collect())


def test_videos_without_features_are_dropped_and_counted(spark, pipeline, tmp_path):
    cfg = pipeline
    store = TableStore(spark, cfg.storage)
    features = store.read(video_features_spec(cfg.features.modalities))
    subset = tmp_path / "subset"
    features.where(~F.col("video_id").isin("v0", "v10", "v20")).write.parquet(str(subset))
    path_cfg = cfg.model_copy(
        update={
            "features": cfg.features.model_copy(
                update={"source": "path", "path": str(subset), "l2_normalize": False}
            )
        }
    )
    try:
        ingest_features(spark, path_cfg)
        stats = make_triplets(spark, path_cfg)
        assert stats["edge_rows_dropped_no_features"] > 0
        t = store.read(triplets_spec(cfg.features.modalities, materialize=True))
        dropped = F.col("anchor_id").isin("v0", "v10", "v20") | F.col("negative_id").isin("v0", "v10", "v20")
        assert t.where(dropped).count() == 0
    finally:  # other modules reuse the session's pipeline tables
        ingest_features(spark, cfg)
        make_triplets(spark, cfg)


def test_hard_negatives_from_previous_neighbors(spark, pipeline, tmp_path):
    cfg = pipeline
    store = TableStore(spark, cfg.storage)
    ids = sorted(r.video_id for r in store.read(VIDEO_SPLITS).collect())
    previous = [(v, ids[(i + d) % len(ids)], d) for i, v in enumerate(ids) for d in range(1, 8)]
    path = str(tmp_path / "previous_neighbors")
    spark.createDataFrame(previous, "video_id string, neighbor_id string, rank int").write.format(
        "delta"
    ).save(path)
    hard_cfg = cfg.model_copy(
        update={"triplets": cfg.triplets.model_copy(update={"hard_negatives_from": path})}
    )
    try:
        make_triplets(spark, hard_cfg)
        spec = triplets_spec(cfg.features.modalities, materialize=True)
        assert store.commit_inputs(spec)["hard_negatives_from"] == {"path": path, "version": 0}
        rows = store.read(spec).collect()
        prev = {(a, n) for a, n, _ in previous}
        edges = {(r.video_id, r.neighbor_id) for r in store.read(COWATCH_EDGES).collect()}
        splits = {r.video_id: r.split for r in store.read(VIDEO_SPLITS).collect()}
        hard = [t for t in rows if (t.anchor_id, t.negative_id) in prev]
        assert len(hard) > 0.3 * len(rows)  # about one of the two negatives per positive
        pairs = {}
        for t in hard:
            pairs[(t.anchor_id, t.positive_id)] = pairs.get((t.anchor_id, t.positive_id), 0) + 1
        # hard_negatives_per_positive = 1; a random draw may also hit the neighbour list, rarely
        assert sum(1 for c in pairs.values() if c == 1) > 0.9 * len(pairs)
        for t in hard:
            assert (t.anchor_id, t.negative_id) not in edges and (t.negative_id, t.anchor_id) not in edges
            assert splits[t.negative_id] != "cold_test"
    finally:
        make_triplets(spark, cfg)
