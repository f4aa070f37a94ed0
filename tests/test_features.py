"""video_features: validation/quarantine, frame PCA + pooling vs numpy, dequantisation, sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from cdml_spark.errors import InputSchemaError, RefusedWrite
from cdml_spark.features.ingest import FeatureSource, ingest_features, validate_features, write_features
from cdml_spark.serving.embed import embed_catalog
from cdml_spark.synthetic import synthetic_features
from cdml_spark.tables import VIDEO_FEATURES_QUARANTINE, TableStore, video_features_spec
from cdml_spark.training.model import CDMLNet, ModelSpec, save_model

TWO = "features.modalities=[{name: vis, dim: 3}, {name: aud, dim: 2}]"


def features_of(spark, cfg) -> dict:
    rows = TableStore(spark, cfg.storage).read(video_features_spec(cfg.features.modalities)).collect()
    return {r.video_id: r for r in rows}


def test_validation_quarantines_bad_vectors(spark, cfg_factory):
    cfg = cfg_factory(TWO, "features.source=path", "features.max_quarantine_fraction=1")  # mostly bad
    rows = [
        ("a", [3.0, 4.0, 0.0], [1.0, 0.0]),  # valid; l2-normalised to [.6, .8, 0]
        ("b", [1.0, 1.0], [1.0, 0.0]),  # vis wrong_dimension
        ("c", [1.0, float("nan"), 1.0], [1.0, 0.0]),  # vis non_finite_values
        ("d", [1.0, 1.0, 1.0], None),  # aud missing_vector
        (None, [1.0, 1.0, 1.0], [1.0, 0.0]),  # missing_video_id
        ("e", [0.0, 0.0, 2.0], [0.0, float("inf")]),  # aud non_finite_values
        ("f", [1.0, 0.0, 0.0], [1.0, 0.0]),  # valid
        ("f", [1.0, 0.0, 0.0], [1.0, 0.0]),  # duplicate_video_id
    ]
    df = spark.createDataFrame(rows, "video_id string, vis array<double>, aud array<double>")
    report = write_features(spark, cfg, FeatureSource(df))
    assert report["written"] == 2
    assert report["quarantined"] == {
        "wrong_dimension": 1,
        "non_finite_values": 2,
        "missing_vector": 1,
        "missing_video_id": 1,
        "duplicate_video_id": 1,
    }
    q = TableStore(spark, cfg.storage).read(VIDEO_FEATURES_QUARANTINE)
    assert {(r.video_id, r.modality) for r in q.where("reason != 'duplicate_video_id'").collect()} == {
        ("b", "vis"),
        ("c", "vis"),
        ("d", "aud"),
        (None, None),
        ("e", "aud"),
    }
    got = features_of(spark, cfg)
    assert np.allclose(got["a"].vis, [0.6, 0.8, 0.0]) and got["a"].feature_version == cfg.features.version


def _kept_and_quarantined(spark, cfg, rows) -> tuple[dict, list]:
    df = spark.createDataFrame(rows, "video_id string, vis array<double>, aud array<double>")
    valid, quarantine = validate_features(df, cfg.features)
    kept = {r.video_id: (list(r.vis), list(r.aud)) for r in valid.collect()}
    return kept, sorted((r.video_id, r.reason) for r in quarantine.collect())


def test_duplicate_rule_keeps_one_valid_row_per_video(spark, cfg_factory):
    cfg = cfg_factory(TWO, "features.source=path", "features.l2_normalize=false")
    valid_a = ("a", [1.0, 2.0, 2.0], [0.0, 1.0])
    bad_a = [("a", [1.0, 2.0], [0.0, 1.0]), ("a", [1.0, 2.0, float("nan")], [0.0, 1.0])]
    b_rows = [("b", [1.0, 0.0, 0.0], [1.0, 0.0]), ("b", [0.0, 1.0, 0.0], [0.0, 1.0])]
    # precondition: both invalid "a" rows sort before the valid one by the vectors' hash (the old rule)
    hashes = spark.createDataFrame([valid_a, *bad_a], "video_id string, vis array<double>, aud array<double>")
    assert list(hashes.orderBy(F.xxhash64("vis", "aud").desc()).first().vis) == valid_a[1]

    kept, quarantined = _kept_and_quarantined(spark, cfg, [*bad_a, valid_a, *b_rows])
    assert kept["a"] == (valid_a[1], valid_a[2])
    assert kept["b"] in [(vis, aud) for _, vis, aud in b_rows]
    assert quarantined == [("a", "non_finite_values"), ("a", "wrong_dimension"), ("b", "duplicate_video_id")]
    again, _ = _kept_and_quarantined(spark, cfg, [*reversed(b_rows), valid_a, *bad_a])
    assert again == kept  # the same valid row wins whatever the input order


def test_wrong_feature_type_fails_before_writing(spark, cfg_factory):
    cfg = cfg_factory(TWO, "features.source=path")
    df = spark.createDataFrame([("a", "x", [1.0])], "video_id string, vis string, aud array<double>")
    with pytest.raises(InputSchemaError, match="'vis' has type string"):
        write_features(spark, cfg, FeatureSource(df))
    assert not TableStore(spark, cfg.storage).exists(video_features_spec(cfg.features.modalities))


def numpy_pca_pool(frames: list[tuple[str, np.ndarray]], k: int, whiten: bool) -> dict[str, np.ndarray]:
    x = np.stack([v for _, v in frames])
    mean = x.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(eigval)[::-1][:k]
    proj = (x - mean) @ eigvec[:, order]
    if whiten:
        proj = proj / np.sqrt(eigval[order])
    out: dict[str, list] = {}
    for (video, _), p in zip(frames, proj, strict=False):
        out.setdefault(video, []).append(p)
    return {v: np.mean(ps, axis=0) for v, ps in out.items()}


def write_frames(spark, path, frames, modality="vis", quantized=False):
    cast = "array<int>" if quantized else "array<double>"
    rows = [
        (v, i, modality, [int(x) if quantized else float(x) for x in vec])
        for i, (v, vec) in enumerate(frames)
    ]
    spark.createDataFrame(
        rows, f"video_id string, frame_index int, modality string, vector {cast}"
    ).write.mode("overwrite").parquet(str(path))


@pytest.mark.parametrize("whiten", [False, True])
def test_frame_pca_and_pooling_equal_numpy(spark, cfg_factory, tmp_path, whiten):
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((3, 6)) * [[3.0], [2.0], [1.0]]
    frames = [
        (f"v{i % 12}", rng.standard_normal(3) @ basis + 0.05 * rng.standard_normal(6)) for i in range(96)
    ]
    write_frames(spark, tmp_path / "frames", frames)
    cfg = cfg_factory(
        "features.modalities=[{name: vis, dim: 3}]",
        "features.source=frames",
        "features.l2_normalize=false",
        f"features.frames.path={tmp_path / 'frames'}",
        f"features.frames.model_dir={tmp_path / 'pca'}",
        f"features.frames.whiten={str(whiten).lower()}",
    )
    ingest_features(spark, cfg)
    expected = numpy_pca_pool(frames, 3, whiten)
    got = features_of(spark, cfg)
    assert got.keys() == expected.keys()
    sign = np.sign(np.sum(np.stack([np.array(got[v].vis) * expected[v] for v in expected]), axis=0))
    for video, vec in expected.items():
        assert np.allclose(np.array(got[video].vis) * sign, vec, atol=1e-4), video

    # a later batch reuses the saved PCA: same projection for the same frames, even alone
    write_frames(spark, tmp_path / "frames2", [f for f in frames if f[0] == "v1"])
    cfg2 = cfg_factory(
        "features.modalities=[{name: vis, dim: 3}]",
        "features.source=frames",
        "features.l2_normalize=false",
        f"features.frames.path={tmp_path / 'frames2'}",
        f"features.frames.model_dir={tmp_path / 'pca'}",
        f"features.frames.whiten={str(whiten).lower()}",
        "storage.min_row_ratio=0",  # a deliberate shrink: 1 of the 12 videos
    )
    ingest_features(spark, cfg2)
    assert np.allclose(np.array(features_of(spark, cfg2)["v1"].vis) * sign, expected["v1"], atol=1e-4)


def test_quantized_frames_are_dequantized_and_bad_frames_quarantined(spark, cfg_factory, tmp_path):
    frames = [
        ("a", [0, 255, 128]),
        ("a", [255, 0, 128]),
        ("b", [10, 20, 30]),
        ("b", [1, 2]),
        ("c", [5, 5, 250]),
    ]
    write_frames(spark, tmp_path / "q", frames, quantized=True)
    cfg = cfg_factory(
        "features.modalities=[{name: vis, dim: 3}]",
        "features.source=frames",
        "features.l2_normalize=false",
        f"features.frames.path={tmp_path / 'q'}",
        f"features.frames.model_dir={tmp_path / 'pca'}",
        "features.frames.quantized=true",
    )
    report = ingest_features(spark, cfg)
    assert report["quarantined"] == {"frame_wrong_dimension": 1}
    deq = [(v, np.array(q) * 4 / 255 + 4 / 512 - 2) for v, q in frames if len(q) == 3]
    expected = numpy_pca_pool(deq, 3, False)
    got = features_of(spark, cfg)
    for video, vec in expected.items():
        assert np.allclose(np.abs(got[video].vis), np.abs(vec), atol=1e-4)


def test_synthetic_features_follow_topics(spark, cfg_factory):
    cfg = cfg_factory(
        "features.source=synthetic",
        TWO,
        "features.synthetic.noise=0.3",
        "events.synthetic.num_videos=60",
        "events.synthetic.num_topics=3",
        "events.synthetic.partitions=2",
    )
    ingest_features(spark, cfg)
    got = features_of(spark, cfg)
    assert len(got) == 60
    vis = {v: np.array(r.vis) for v, r in got.items()}
    same = np.mean([vis["v0"] @ vis[f"v{i}"] for i in range(3, 60, 3)])
    other = np.mean([vis["v0"] @ vis[f"v{i}"] for i in range(1, 60, 3)])
    assert same > other + 0.3
    # the same vectors from 3 partitions in Arrow batches of 7 rows: nothing depends on the batching
    syn = cfg.events.synthetic.model_copy(update={"partitions": 3})
    regrouped = cfg.model_copy(update={"events": cfg.events.model_copy(update={"synthetic": syn})})
    batch_conf = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(batch_conf)
    spark.conf.set(batch_conf, "7")
    try:
        again = synthetic_features(spark, regrouped).toPandas()
    finally:
        spark.conf.set(batch_conf, before)
    first = synthetic_features(spark, cfg).toPandas()
    assert {v: list(x) for v, x in zip(again["video_id"], again["vis"], strict=True)} == {
        v: list(x) for v, x in zip(first["video_id"], first["vis"], strict=True)
    }


def test_movielens_100k_features(spark, cfg_factory):
    cfg = cfg_factory("events.source=movielens-100k", "features.source=movielens")
    report = ingest_features(spark, cfg)
    assert report["written"] == 1682 and report["quarantined"] == {}
    version = TableStore(spark, cfg.storage).version(video_features_spec(cfg.features.modalities))
    again = ingest_features(spark, cfg)  # same titles, genres and KG: the text model encodes nothing
    assert (again["update"], again["featurized"], again["written"]) == ("incremental", 0, 0)
    assert TableStore(spark, cfg.storage).version(video_features_spec(cfg.features.modalities)) == version
    got = features_of(spark, cfg)
    toy = got["1"]  # Toy Story (1995), Animation Children's Comedy
    assert len(toy.text) == 384 and len(toy.meta) == 64
    assert np.isclose(np.linalg.norm(toy.text), 1, atol=1e-5)
    kg_slots = sum(1 for r in got.values() if np.count_nonzero(np.array(r.meta)[19:]) > 0)
    assert kg_slots > 1000  # most movies carry shared KG relations (actors, directors, ...)
    # the text model is real: Star Wars (50) is closer to Return of the Jedi (181) than to Toy Story (1)
    text = {k: np.array(got[k].text) for k in ("1", "50", "181")}
    assert text["50"] @ text["181"] > text["50"] @ text["1"]
    genres = TableStore(spark, cfg.storage).read(video_features_spec(cfg.features.modalities))
    assert genres.where(F.size("meta") != 64).count() == 0


FOUR_THREE = "features.modalities=[{name: vis, dim: 4}, {name: aud, dim: 3}]"


def _write_vectors(spark, path, rows: dict[str, tuple[list, list]], extra: tuple = ()) -> None:
    spark.createDataFrame(
        [*[(v, vis, aud) for v, (vis, aud) in rows.items()], *extra],
        "video_id string, vis array<double>, aud array<double>",
    ).write.parquet(str(path))


def _path_source(cfg, path, **features):
    return cfg.model_copy(
        update={"features": cfg.features.model_copy(update={"path": str(path), **features})}
    )


def _random_rows(n: int) -> dict[str, tuple[list, list]]:
    rng = np.random.default_rng(0)
    return {f"v{i}": (rng.standard_normal(4).tolist(), rng.standard_normal(3).tolist()) for i in range(n)}


def test_incremental_features_recompute_only_changed_videos(spark, cfg_factory, tmp_path):
    """A rerun on unchanged input commits nothing; one changed, one new and one removed video change
    exactly their rows, the others keep their vectors bit for bit (so embed_catalog re-embeds only
    the two); another features.version recomputes every video. v0's duplicate row is validated again
    every run (its quarantine stays) without rewriting v0."""
    torch.manual_seed(0)
    save_model(
        CDMLNet(ModelSpec({"vis": 4, "aud": 3}, hidden=[8], embedding_dim=6)), str(tmp_path / "m" / "m1")
    )
    rows = _random_rows(20)
    duplicate = [("v0", [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0])]
    _write_vectors(spark, tmp_path / "in1", rows, duplicate)
    cfg = cfg_factory(
        FOUR_THREE,
        "features.source=path",
        f"features.path={tmp_path / 'in1'}",
        "features.max_quarantine_fraction=0.1",  # the duplicate
        f"training.model_dir={tmp_path / 'm'}",
        "embedding.model_version=m1",
    )
    store, spec = TableStore(spark, cfg.storage), video_features_spec(cfg.features.modalities)
    assert ingest_features(spark, cfg)["update"] == "full"
    assert embed_catalog(spark, cfg)["embedded"] == 20
    first, version = features_of(spark, cfg), store.version(spec)

    report = ingest_features(spark, cfg)
    assert (report["update"], report["featurized"], report["written"]) == ("incremental", 2, 0)
    assert report["quarantined"] == {"duplicate_video_id": 1} and store.version(spec) == version

    rows["v3"] = (rows["v3"][0], [0.0, 2.0, 0.0])
    rows["new"] = ([1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    del rows["v7"]
    _write_vectors(spark, tmp_path / "in2", rows, duplicate)
    cfg2 = _path_source(cfg, tmp_path / "in2")
    report = ingest_features(spark, cfg2)
    assert (report["update"], report["featurized"], report["written"]) == ("incremental", 4, 2)
    assert store.version(spec) == version + 1  # one MERGE
    second = features_of(spark, cfg2)
    assert second.keys() == (first.keys() - {"v7"}) | {"new"}
    assert np.allclose(second["v3"].aud, [0.0, 1.0, 0.0])  # l2-normalised like a full run
    assert {v for v in first.keys() & second.keys() if second[v] != first[v]} == {"v3"}  # vectors, run_id
    assert embed_catalog(spark, cfg2)["embedded"] == 2

    report = ingest_features(spark, _path_source(cfg, tmp_path / "in2", version="other"))
    assert (report["update"], report["featurized"], report["written"]) == ("full", 21, 20)


def test_incremental_features_keep_the_guards(spark, cfg_factory, tmp_path):
    """An incremental input that is mostly invalid, or much smaller, cannot delete the held rows."""
    rows = _random_rows(20)
    _write_vectors(spark, tmp_path / "in1", rows)
    cfg = cfg_factory(FOUR_THREE, "features.source=path", f"features.path={tmp_path / 'in1'}")
    ingest_features(spark, cfg)
    store, spec = TableStore(spark, cfg.storage), video_features_spec(cfg.features.modalities)
    version = store.version(spec)

    bad = {v: (vis[:3], aud) for v, (vis, aud) in rows.items()}  # every vis vector too short
    _write_vectors(spark, tmp_path / "in2", bad)
    with pytest.raises(RefusedWrite, match="20 of 20 input rows invalid"):
        ingest_features(spark, _path_source(cfg, tmp_path / "in2"))
    _write_vectors(spark, tmp_path / "in3", dict(list(rows.items())[:5]))
    with pytest.raises(RefusedWrite, match="min_row_ratio"):
        ingest_features(spark, _path_source(cfg, tmp_path / "in3"))
    assert store.version(spec) == version and store.read(spec).count() == 20
