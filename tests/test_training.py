"""Loss and mining against brute force; model save/load; shard coverage of each loader (Petastorm,
pyarrow, Mosaic Streaming); a real 2-process TorchDistributor (gloo) run that learns, checkpoints and
resumes; `train_worker` in spawned processes (gloo, each loader): per-rank RNG streams and resume from
the checkpoint's RNG state (CPU; CUDA where present); MDS shards written once per triplets version.
Petastorm and Horovod tests skip on the spark4 stack, which has neither; streaming tests skip on the
card stack, which has no Mosaic Streaming (it refuses the loader in one line)."""

from __future__ import annotations

import glob
import json
import os
import socket
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from delta.tables import DeltaTable

from cdml_spark.config import MlflowConfig, TrainingConfig, load_config
from cdml_spark.errors import ConfigError, StaleTriplets, UnknownVideoKey
from cdml_spark.features.ingest import ingest_features
from cdml_spark.runtime import stack
from cdml_spark.tables import COWATCH_EDGES, TableStore, triplets_spec, video_features_spec
from cdml_spark.training.inputs import check_inputs
from cdml_spark.training.loader import ROLES, FeatureTable, iterate_batches, snapshot_files
from cdml_spark.training.mds import ensure_mds
from cdml_spark.training.mining import ForbiddenPairs, mine_negatives, squared_distances, triplet_loss
from cdml_spark.training.model import CDMLNet, ModelSpec, load_model, save_model
from cdml_spark.training.plan import TrainPlan, ValidationSet
from cdml_spark.training.train import train
from cdml_spark.training.worker import load_checkpoint, train_worker
from cdml_spark.triplets import make_triplets
from tests.conftest import LOCAL_CONF

ON_SPARK4 = stack() == "spark4"
needs_petastorm = pytest.mark.skipif(ON_SPARK4, reason="the spark4 stack has no Petastorm")
needs_streaming = pytest.mark.skipif(not ON_SPARK4, reason="the card stack has no Mosaic Streaming")
LOADERS = [
    pytest.param("petastorm", marks=needs_petastorm),
    "arrow",
    pytest.param("streaming", marks=needs_streaming),
]
KEYS = [f"{r}_key" for r in ROLES]


def _source(files: list[str], loader: str, tmp_path, names: list[str]) -> list[str]:
    """What `iterate_batches` reads with `loader`: the parquet files, or (streaming) their MDS copy."""
    if loader != "streaming":
        return files
    columns = KEYS + [f"{r}_{n}" for r in ROLES for n in names]
    return [ensure_mds(files, columns, str(tmp_path / "mds"), 0)]


def brute_force_mine(miner, a, p, pool, aid, pid, pool_ids, own, neighbours) -> list[int]:
    """Straight from the definition: allowed = not the anchor's or positive's video and not a
    co-watch neighbour of the anchor (a set of id pairs); semi_hard also needs d(a,n) > d(a,p)."""
    picks = []
    for i in range(len(a)):
        d_ap = float(((a[i] - p[i]) ** 2).sum())
        best, best_d = own[i], None
        for j in range(len(pool)):
            d = float(((a[i] - pool[j]) ** 2).sum())
            if pool_ids[j] in (aid[i], pid[i]) or (aid[i], pool_ids[j]) in neighbours:
                continue
            if miner == "semi_hard" and not d > d_ap:
                continue
            if best_d is None or d < best_d:
                best, best_d = j, d
        picks.append(best)
    return picks


def _keys(spark, ids: list[str]) -> np.ndarray:
    frame = spark.createDataFrame([(i,) for i in ids], "video_id string")
    return np.array([r[0] for r in frame.selectExpr("xxhash64(video_id)").collect()], dtype=np.int64)


@pytest.mark.parametrize("miner", ["semi_hard", "hardest"])
def test_miner_matches_brute_force_and_never_picks_a_cowatch_neighbour(spark, pipeline, miner):
    store = TableStore(spark, pipeline.storage)
    edges = store.read(COWATCH_EDGES).select("video_id", "neighbor_id").collect()
    neighbours = {(r[0], r[1]) for r in edges} | {(r[1], r[0]) for r in edges}
    rows = (
        store.read(triplets_spec(pipeline.features.modalities, True))
        .where("split = 'train'")
        .orderBy("anchor_id", "positive_id", "negative_id")
        .limit(64)
        .collect()
    )
    aid, pid, nid = ([r[c] for r in rows] for c in ("anchor_id", "positive_id", "negative_id"))
    pool_ids = nid + pid  # the pool as training builds it: negatives, then positives
    forbidden = ForbiddenPairs.from_keys(*(_keys(spark, [e[c] for e in edges]) for c in (0, 1)))
    g = torch.Generator().manual_seed(0)
    emb = lambda n: torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)  # noqa: E731
    a, p, pool = emb(len(rows)), emb(len(rows)), emb(2 * len(rows))
    own = torch.arange(len(rows))
    ka, kp, kpool = (torch.from_numpy(_keys(spark, ids)) for ids in (aid, pid, pool_ids))
    got = mine_negatives(miner, a, p, ka, kp, pool, kpool, own, forbidden).tolist()
    assert got == brute_force_mine(miner, a, p, pool, aid, pid, pool_ids, own.tolist(), neighbours)
    picked = [(aid[i], pool_ids[j]) for i, j in enumerate(got)]
    assert not any(pair in neighbours for pair in picked)
    # the check can fail: without the co-watch rule the miner does pick neighbours here
    unguarded = mine_negatives(miner, a, p, ka, kp, pool, kpool, own, None).tolist()
    assert any((aid[i], pool_ids[j]) in neighbours for i, j in enumerate(unguarded))


def test_semi_hard_falls_back_to_own_negative():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0]])  # d(a,p) = 2
    n = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # d(a,n) = 0 and 2: not farther than p, ineligible
    keys = torch.tensor([3, 4])
    got = mine_negatives(
        "semi_hard", a, p, torch.tensor([1]), torch.tensor([2]), n, keys, torch.tensor([1]), None
    )
    assert got.tolist() == [1]


def test_triplet_loss_and_reductions_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    n = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    loss, right = triplet_loss(a, p, n, margin=0.5)
    # triplet 1: [2 - 0 + .5]+ = 2.5 ; triplet 2: [0 - 4 + .5]+ = 0
    assert loss.item() == pytest.approx(1.25) and right.tolist() == [False, True]
    assert triplet_loss(a, p, n, margin=0.5, reduction="nonzero_mean")[0].item() == pytest.approx(2.5)
    assert torch.allclose(squared_distances(a, n), torch.tensor([[0.0, 4.0], [0.0, 4.0]]))


def test_unknown_feature_key_raises():
    table = FeatureTable(np.array([1, 5, 9]), {"vis": np.eye(3, dtype=np.float32)})
    assert table.lookup(np.array([9, 1]))["vis"].tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(UnknownVideoKey, match="video key 6 .* rerun make_triplets"):
        table.lookup(np.array([5, 6]))


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_model_is_unit_norm_and_roundtrips(tmp_path, fusion):
    spec = ModelSpec({"vis": 4, "aud": 3}, fusion=fusion, hidden=[8], embedding_dim=5)
    model = CDMLNet(spec).eval()
    x = {"vis": torch.randn(6, 4), "aud": torch.randn(6, 3)}
    out = model(x)
    assert out.shape == (6, 5) and torch.allclose(out.norm(dim=1), torch.ones(6))
    save_model(model, str(tmp_path / "m"))
    assert torch.allclose(load_model(str(tmp_path / "m"))(x), out)


def _catalog(spark, store: TableStore, cfg, names: list[str]) -> FeatureTable:
    feats = store.read(video_features_spec(cfg.features.modalities)).toPandas()
    keys = (
        spark.createDataFrame(feats[["video_id"]])
        .selectExpr("xxhash64(video_id) AS k")
        .toPandas()["k"]
        .to_numpy()
    )
    order = np.argsort(keys)
    return FeatureTable(keys[order], {n: np.stack(feats[n])[order].astype(np.float32) for n in names})


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("ids_only", [False, True])
def test_shards_cover_every_row_once(spark, pipeline, ids_only, loader, tmp_path):
    """Each loader over the Delta snapshot's files (streaming: their MDS copy): ranks 0 and 1 of 2
    together yield every training row once, each row's vectors are its videos' features (materialised
    or looked up); a seed fixes the order."""
    cfg = pipeline
    store = TableStore(spark, cfg.storage)
    table = triplets_spec(cfg.features.modalities, materialize=True)
    names = ["vis", "aud"]
    files = _source(snapshot_files(spark, store.location(table), "train"), loader, tmp_path, names)
    catalog = _catalog(spark, store, cfg, names)
    features = catalog if ids_only else None
    expected = Counter(
        (r.anchor_key, r.positive_key, r.negative_key)
        for r in store.read(table).where("split = 'train'").collect()
    )
    seen: Counter = Counter()
    per_rank = []
    for rank in range(2):
        rows = 0
        for batch in iterate_batches(
            files, names, 100, rank, 2, seed=3, shuffle_batches=2, features=features, loader=loader
        ):
            assert len(batch["anchor_key"]) <= 100 and batch["anchor_vis"].shape[1] == 4
            for role in ROLES:
                assert batch[f"{role}_key"].dtype == np.int64
                for name, matrix in catalog.lookup(batch[f"{role}_key"]).items():
                    vectors = batch[f"{role}_{name}"]
                    assert vectors.dtype == np.float32 and vectors.flags.writeable
                    assert np.array_equal(vectors, matrix)  # each row's vectors belong to its keys
            seen.update(zip(*(batch[f"{r}_key"].tolist() for r in ROLES), strict=True))
            rows += len(batch["anchor_key"])
        per_rank.append(rows)
    assert seen == expected and min(per_rank) > 0

    def keys(seed: int) -> list[list[int]]:  # one reader thread: row groups arrive in the seed's order
        batches = iterate_batches(files, names, 100, 0, 2, seed, workers=1, features=features, loader=loader)
        return [b["anchor_key"].tolist() for b in batches]

    assert keys(3) == keys(3) != keys(4)


@needs_streaming
def test_streaming_resumes_mid_epoch_at_a_row_offset(tmp_path):
    """A rank's epoch restarted at its k-th row yields exactly the rows it had not yet taken, in the
    same order (the order depends on the shards, seed, rank and world alone); other loaders refuse it."""
    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({k: np.arange(101, dtype=np.int64) * (i + 1) for i, k in enumerate(KEYS)}), path)
    directory = _source([path], "streaming", tmp_path, [])

    def keys(start: int) -> list[int]:
        batches = iterate_batches(directory, [], 16, 1, 2, seed=5, loader="streaming", start=start)
        return [k for b in batches for k in b["anchor_key"].tolist()]

    whole = keys(0)
    assert len(whole) == 50 and whole != sorted(whole)  # rank 1 of 2: 50 of 101 rows, shuffled
    assert keys(21) == whole[21:] and keys(50) == []
    with pytest.raises(ValueError, match="only the streaming loader resumes mid-epoch"):
        next(iterate_batches([path], [], 16, 1, 2, seed=5, loader="arrow", start=21))


@pytest.mark.parametrize("loader", LOADERS)
def test_vectors_of_different_lengths_raise(tmp_path, loader):
    path = tmp_path / "ragged.parquet"
    columns = {f"{r}_key": [1, 2] for r in ROLES} | {f"{r}_vis": [[0.5, 1.0], [2.0]] for r in ROLES}
    pq.write_table(pa.table(columns), path)
    with pytest.raises(ValueError, match="vectors of different lengths"):
        list(
            iterate_batches(
                _source([str(path)], loader, tmp_path, ["vis"]), ["vis"], 2, 0, 1, 0, loader=loader
            )
        )
    assert not (tmp_path / "mds" / "v0").exists()  # streaming: no shards that look complete


@pytest.mark.parametrize("loader", LOADERS)
def test_distributed_training_learns_checkpoints_and_resumes(spark, pipeline, loader):
    # batch 128 (4 steps per epoch on each rank). The untrained network already ranks this set's topics
    # well (0.727), so learning shows as a small NDCG gain (+0.027 to +0.050 by loader and stack) and a
    # falling training loss (-16 to -19% over 3 epochs)
    training = pipeline.training.model_copy(update={"loader": loader, "batch_size": 128})
    cfg = pipeline.model_copy(update={"training": training})
    info = train(spark, cfg)
    history = info["history"]
    shards = sorted(glob.glob(f"{training.streaming_dir}/triplets-*/v{info['triplets_version']}/index.json"))
    assert len(shards) == 1 or loader != "streaming"  # the MDS copy of this triplets version
    written = [(os.stat(f).st_ino, os.stat(f).st_mtime_ns) for f in shards]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # learns the co-watch metric: validation NDCG above the same network before training
    assert info["val_ndcg"] > info["val_ndcg_untrained"] + 0.015, (info["val_ndcg_untrained"], history)
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"], history
    assert info["best_epoch"] == max(range(1, 4), key=lambda e: history[e - 1]["val_ndcg"])
    assert (
        history[-1]["train_triplets"]
        == TableStore(spark, cfg.storage)
        .read(triplets_spec(cfg.features.modalities, materialize=True))
        .where("split = 'train'")
        .count()
    )  # both ranks together saw every training row once

    artifact = os.path.join(cfg.training.model_dir, info["model_version"])
    model = load_model(artifact)
    assert set(os.listdir(artifact)) >= {"model.pt", "model.json", "training.png"}
    with open(os.path.join(artifact, "model.json")) as handle:
        assert json.load(handle)["spec"]["modality_dims"] == {"vis": 4, "aud": 3}
    assert model({"vis": torch.randn(2, 4), "aud": torch.randn(2, 3)}).shape == (2, 16)
    assert os.path.isdir(cfg.training.mlflow.tracking_uri.removeprefix("file:"))

    more = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 4})})
    resumed = train(spark, more, resume=True)["history"]
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    assert resumed[:3] == history  # restored from the checkpoint, not retrained
    assert resumed[3]["step"] > history[2]["step"]
    assert [(os.stat(f).st_ino, os.stat(f).st_mtime_ns) for f in shards] == written  # same version: reused


@pytest.mark.skipif(ON_SPARK4, reason="the spark4 stack has no Horovod")
def test_horovod_training_learns_and_ranks_agree(spark, pipeline, tmp_path):
    """Horovod (built by scripts/build_horovod.sh): 2 processes as Spark tasks, gloo allreduce."""
    training = pipeline.training.model_copy(
        update={
            "model_dir": str(tmp_path / "models"),
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "mlflow": pipeline.training.mlflow.model_copy(update={"enabled": False}),
        }
    )
    info = train(spark, pipeline.model_copy(update={"training": training}), backend="horovod")
    assert info["backend"] == "horovod"
    assert len(info["rank_param_digests"]) == 2 and len(set(info["rank_param_digests"])) == 1
    history = info["history"]
    assert info["val_ndcg"] > info["val_ndcg_untrained"] + 0.015, (info["val_ndcg_untrained"], history)
    # the fixture's batch 256: 2 steps per epoch on each rank, the loss falls about 10% over 3 epochs
    assert history[-1]["train_loss"] < 0.95 * history[0]["train_loss"], history
    train_rows = (
        TableStore(spark, pipeline.storage)
        .read(triplets_spec(pipeline.features.modalities, materialize=True))
        .where("split = 'train'")
        .count()
    )
    assert history[-1]["train_triplets"] == train_rows  # hvd.join: uneven shards, every row seen once


@pytest.mark.skipif(not ON_SPARK4, reason="the card stack has Horovod and Petastorm")
def test_spark4_refuses_horovod_and_petastorm_in_one_line(spark, pipeline):
    with pytest.raises(ConfigError, match="^--backend horovod: the spark4 stack has no Horovod"):
        train(spark, pipeline, backend="horovod")
    with pytest.raises(ConfigError, match="training.loader=petastorm: the spark4 stack has no Petastorm"):
        load_config(LOCAL_CONF, ["training.loader=petastorm"])


@pytest.mark.skipif(ON_SPARK4, reason="the spark4 stack has Mosaic Streaming")
def test_card_stack_refuses_the_streaming_loader_in_one_line():
    with pytest.raises(
        ConfigError, match="training.loader=streaming: the card stack has no Mosaic Streaming"
    ) as err:
        load_config(LOCAL_CONF, ["training.loader=streaming"])
    assert "\n" not in str(err.value)


@needs_streaming
def test_mds_shards_are_written_once_per_triplets_version(spark, tmp_path):
    """A Delta table's train split as MDS shards: a second call on the same version reuses them (not
    rewritten), a crashed writer's scratch folder never counts, a new version's shards replace the old."""
    path = str(tmp_path / "triplets")

    def commit(rows: range, mode: str) -> tuple[int, list[str]]:
        frame = spark.createDataFrame([(i, i + 1, i + 2, "train" if i % 4 else "validation") for i in rows])
        writer = frame.toDF(*KEYS, "split").repartition(2).write.format("delta")
        writer.partitionBy("split").mode(mode).save(path)  # split a partition, as in triplets
        version = DeltaTable.forPath(spark, path).history(1).first()["version"]
        return version, snapshot_files(spark, path, "train", version=version)

    def rows(directory: str) -> list[int]:
        return sorted(
            k
            for b in iterate_batches([directory], [], 7, 0, 1, 0, loader="streaming")
            for k in b["anchor_key"]
        )

    v0, files = commit(range(40), "overwrite")
    table_dir = str(tmp_path / "mds" / DeltaTable.forPath(spark, path).detail().first()["id"])
    os.makedirs(os.path.join(table_dir, f".v{v0}.tmp-crashed"))  # a writer that died: half a set, no rename
    first = ensure_mds(files, KEYS, table_dir, v0)
    assert first.endswith(f"v{v0}") and rows(first) == [i for i in range(40) if i % 4]
    index = os.path.join(first, "index.json")
    stamp = (os.stat(index).st_ino, os.stat(index).st_mtime_ns)
    assert ensure_mds(files, KEYS, table_dir, v0) == first
    assert (os.stat(index).st_ino, os.stat(index).st_mtime_ns) == stamp  # reused, not rewritten

    v1, files = commit(range(40, 60), "append")
    second = ensure_mds(files, KEYS, table_dir, v1)
    assert second.endswith(f"v{v1}") and rows(second) == [i for i in range(60) if i % 4]
    assert os.listdir(table_dir) == [f"v{v1}"]  # the older version and the crashed scratch are gone


def test_train_refuses_triplets_built_from_other_features(spark, pipeline):
    store = TableStore(spark, pipeline.storage)
    check_inputs(store, triplets_spec(pipeline.features.modalities, True), pipeline)  # consistent now
    # a newer video_features version than the triplets were built from (a full rewrite: same inputs)
    ingest_features(
        spark,
        pipeline.model_copy(update={"features": pipeline.features.model_copy(update={"incremental": False})}),
    )
    try:
        with pytest.raises(StaleTriplets, match="video_features .* rerun make_triplets"):
            train(spark, pipeline)
    finally:
        make_triplets(spark, pipeline)


def _tiny_plan(tmp_path, use_gpu: str, loader: str) -> TrainPlan:
    """64 videos in 8 topics, 256 ids-only triplets in 4 row groups; 2 epochs of 4 steps per rank of 2."""
    rng = np.random.default_rng(0)
    videos, topics, rows = 64, 8, 256
    keys = np.sort(rng.choice(2**62, videos, replace=False)).astype(np.int64)
    topic = np.arange(videos) % topics
    vis = rng.standard_normal((topics, 4))[topic] + 0.3 * rng.standard_normal((videos, 4))
    anchor = rng.integers(0, videos, rows)
    positive = (anchor + topics * rng.integers(1, videos // topics, rows)) % videos  # same topic
    negative = (anchor + rng.integers(1, topics, rows)) % videos  # another topic
    path = str(tmp_path / "triplets.parquet")
    roles = {"anchor_key": anchor, "positive_key": positive, "negative_key": negative}
    pq.write_table(pa.table({k: keys[v] for k, v in roles.items()}), path, row_group_size=64)
    training = TrainingConfig(
        hidden=[8],
        embedding_dim=4,
        dropout=0.5,
        batch_size=32,
        epochs=2,
        learning_rate=0.01,
        num_processes=2,
        local_mode=True,
        use_gpu=use_gpu,
        reader_workers=1,  # row groups in the seed's order: runs are repeatable
        loader=loader,
        model_dir=str(tmp_path / "models"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        mlflow=MlflowConfig(enabled=False, tracking_uri="file:unused"),
    )
    queries = np.arange(topics)
    return TrainPlan(
        training=training,
        spec=ModelSpec({"vis": 4}, hidden=[8], embedding_dim=4, dropout=0.5),
        train_files=_source([path], loader, tmp_path, []),
        train_rows=rows,
        checkpoint_path="",
        resume=False,
        catalog=FeatureTable(keys, {"vis": vis.astype(np.float32)}),
        validation=ValidationSet(
            queries, [np.flatnonzero((topic == t) & (np.arange(videos) != t)) for t in queries]
        ),
        forbidden=ForbiddenPairs.from_keys(keys[anchor], keys[positive]),
        ids_only=True,
    )


def _rank(plan: TrainPlan, rank: int, world: int, port: int) -> dict:
    """One spawned training process, as torchrun would start it."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    os.environ.update(env, WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    return train_worker(plan)


def _uninterrupted_and_resumed(
    tmp_path, world: int, use_gpu: str, loader: str
) -> tuple[dict, dict, list[str]]:
    """Checkpoints of 2 epochs in one run and of 1 epoch + a resumed second; the parameter digests of
    every rank (each rank's view) after the uninterrupted run."""
    plan = _tiny_plan(tmp_path, use_gpu, loader)
    one_epoch = plan.training.model_copy(update={"epochs": 1})
    runs = [
        replace(plan, checkpoint_path=str(tmp_path / "full.pt")),
        replace(plan, training=one_epoch, checkpoint_path=str(tmp_path / "resumed.pt")),
        replace(plan, checkpoint_path=str(tmp_path / "resumed.pt"), resume=True),
    ]
    with ProcessPoolExecutor(world, mp_context=get_context("spawn")) as pool:
        digests = []
        for run in runs:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            futures = [pool.submit(_rank, run, rank, world, port) for rank in range(world)]
            digests.append([f.result(timeout=120)["param_digests"] for f in futures])
    full, resumed = (load_checkpoint(tmp_path / f, "cpu") for f in ("full.pt", "resumed.pt"))
    return full, resumed, [d for rank_view in digests[0] for d in rank_view]


@pytest.mark.parametrize("loader", LOADERS)
def test_ranks_draw_different_dropout_and_resume_continues_the_rng_stream(tmp_path, loader):
    """2 gloo ranks (DDP) on each loader: every row trained on once per epoch; their dropout masks
    differ while their parameters agree; 1 epoch + checkpoint + resume ends with the same generator
    states and bit-identical weights as 2 epochs in one run (re-seeding on resume would replay epoch
    1's masks in epoch 2)."""
    full, resumed, digests = _uninterrupted_and_resumed(tmp_path, world=2, use_gpu="false", loader=loader)
    assert [h["train_triplets"] for h in full["history"]] == [256, 256]
    assert len(set(digests)) == 1
    masks = []
    for state in full["rng"]:  # the masks each rank's next dropout draws
        with torch.random.fork_rng():
            torch.set_rng_state(state["torch"])
            masks.append(torch.nn.functional.dropout(torch.ones(256), 0.5) > 0)
    assert not torch.equal(masks[0], masks[1])
    assert resumed["step"] == full["step"] == 8
    for done, again in zip(full["rng"], resumed["rng"], strict=True):
        assert torch.equal(done["torch"], again["torch"]) and done["python"] == again["python"]
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ranks_on_their_devices_resume_with_the_cuda_rng_state(tmp_path):
    """NCCL on every GPU (up to 2): object collectives on each rank's device, ranks agree, and the
    resumed run's CUDA generator and weights match the uninterrupted run (weights up to atomics' order)."""
    world = min(2, torch.cuda.device_count())
    full, resumed, digests = _uninterrupted_and_resumed(tmp_path, world=world, use_gpu="true", loader="arrow")
    assert len(set(digests)) == 1 and len(full["rng"]) == world
    for done, again in zip(full["rng"], resumed["rng"], strict=True):
        assert torch.equal(done["cuda"], again["cuda"])
    assert all(
        torch.allclose(full["model"][k], resumed["model"][k], rtol=0, atol=1e-4) for k in full["model"]
    )
