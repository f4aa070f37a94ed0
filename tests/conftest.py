"""One local SparkSession (local[2], 2 shuffle partitions) for the whole test run. Tests in
`SPARK4_SET` get the `spark4` marker: the set `CDML_STACK=spark4 ./scripts/test.sh` runs (`-m spark4`)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from cdml_spark.config import AppConfig, load_config
from cdml_spark.pipeline import run_stages
from cdml_spark.spark import get_spark
from cdml_spark.tables import VIDEO_EMBEDDINGS, TableStore
from cdml_spark.training.model import CDMLNet, ModelSpec, save_model

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONF = ROOT / "conf" / "local.yaml"
# graph, triplets, training (arrow loader, DDP over gloo), embedding, neighbours, recommendations, the
# end-to-end pipeline; their Petastorm and Horovod tests skip on spark4
SPARK4_SET = ("test_graph.py", "test_triplets.py", "test_training.py", "test_serving.py", "test_pipeline.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SPARK4_SET:
            item.add_marker(pytest.mark.spark4)


def make_config(tables_root: Path, *overrides: str) -> AppConfig:
    """conf/local.yaml pointed at a private tables folder and database, plus overrides."""
    return load_config(
        LOCAL_CONF,
        [
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "spark.driver_memory=2g",
            f"storage.tables_root={tables_root}",
            f"storage.database=t_{uuid.uuid4().hex[:8]}",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    cfg = make_config(tmp_path_factory.mktemp("warmup"))
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def cfg_factory(tmp_path):
    def factory(*overrides: str) -> AppConfig:
        return make_config(tmp_path / "tables", *overrides)

    return factory


SMALL = [
    "events.source=synthetic",
    "events.synthetic.num_events=12000",
    "events.synthetic.num_users=300",
    "events.synthetic.num_videos=206",  # 6 never-watched videos in the cold tail
    "events.synthetic.num_topics=10",
    "events.synthetic.partitions=2",
    "features.source=synthetic",
    "features.modalities=[{name: vis, dim: 4}, {name: aud, dim: 3}]",
    "features.synthetic.noise=0.3",
    "graph.max_neighbors=10",
    "triplets.positives_per_anchor=3",
    "triplets.negatives_per_positive=2",
    "triplets.validation_fraction=0.15",
    "triplets.cold_fraction=0.15",
]


@pytest.fixture(scope="session")
def pipeline(spark, tmp_path_factory):
    """A tiny synthetic pipeline up to triplets, built once per test session (tests may rebuild triplets)."""
    root = tmp_path_factory.mktemp("triplets")
    holdout = root / "holdout.txt"
    holdout.write_text("v1\nv2\n\nv3\n")
    cfg = make_config(
        root / "tables",
        *SMALL,
        f"triplets.holdout_path={holdout}",
        "triplets.materialize_features=true",  # the Petastorm path Databricks uses (local.yaml: ids only)
        f"training.model_dir={root / 'models'}",
        f"training.checkpoint_dir={root / 'checkpoints'}",
        f"training.streaming_dir={root / 'mds'}",  # loader=streaming's MDS shards
        f"training.mlflow.tracking_uri=file:{root / 'mlruns'}",
        "training.hidden=[32]",
        "training.embedding_dim=16",
        "training.batch_size=256",
        "training.epochs=3",
        "training.learning_rate=0.01",
        "training.dropout=0.1",  # the default 0.3 is tuned for ML-1M; 3 epochs of this tiny set learn too little
    )
    run_stages(spark, cfg, "ingest_events", "make_triplets")
    return cfg


@pytest.fixture(scope="session")
def served(spark, pipeline, tmp_path_factory):
    """An (untrained but real) model artifact, embedded catalog and exact neighbours."""
    models = tmp_path_factory.mktemp("served-models")
    torch.manual_seed(0)
    save_model(CDMLNet(ModelSpec({"vis": 4, "aud": 3}, hidden=[8], embedding_dim=6)), str(models / "test-v1"))
    cfg = pipeline.model_copy(
        update={
            "training": pipeline.training.model_copy(update={"model_dir": str(models)}),
            "embedding": pipeline.embedding.model_copy(update={"model_version": "test-v1"}),
            "neighbors": pipeline.neighbors.model_copy(update={"k": 5, "block_size": 37}),
            "recommend": pipeline.recommend.model_copy(update={"history": 3, "k": 4}),
        }
    )
    run_stages(spark, cfg, "embed_catalog", "recommend")
    store = TableStore(spark, cfg.storage)
    emb = store.read(VIDEO_EMBEDDINGS).toPandas().sort_values("video_id")
    return (
        cfg,
        store,
        list(emb["video_id"]),
        np.stack(emb["embedding"]).astype(np.float64),
        models / "test-v1",
    )
