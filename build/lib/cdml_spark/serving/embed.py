"""`video_features` → `video_embeddings` with a trained model: batched torch inference inside Spark
tasks (mapInPandas); the model is loaded once per Python worker process, on GPU when one exists."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.tables import VIDEO_EMBEDDINGS, Lineage, TableStore, video_features_spec

__all__ = ["current_embeddings", "embed_catalog", "resolve_model"]

log = logging.getLogger(__name__)


def resolve_model(cfg: AppConfig) -> tuple[str, str]:
    """(model_version, artifact directory): `embedding.model_version` or the one in LATEST."""
    version = cfg.embedding.model_version
    if version is None:
        latest = os.path.join(cfg.training.model_dir, "LATEST")
        if not os.path.exists(latest):
            raise FileNotFoundError(f"no {latest}: train a model first or set embedding.model_version")
        with open(latest) as handle:
            version = handle.read().strip()
    path = os.path.abspath(os.path.join(cfg.training.model_dir, version))
    if not os.path.exists(os.path.join(path, "model.json")):
        raise FileNotFoundError(f"model {version!r} not found at {path}")
    return version, path


@lru_cache(maxsize=2)
def _model(path: str):
    import torch

    from cdml_spark.training.model import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(path, map_location=device).to(device), device


def _embed_frame(path: str, names: list[str], batch: pd.DataFrame, batch_size: int) -> np.ndarray:
    import torch

    model, device = _model(path)
    out = []
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            part = batch.iloc[start : start + batch_size]
            inputs = {n: torch.from_numpy(np.stack(part[n]).astype(np.float32)).to(device) for n in names}
            out.append(model(inputs).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def current_embeddings(store: TableStore) -> tuple[DataFrame, str]:
    """The `video_embeddings` table and the model version that wrote it."""
    embeddings = store.read(VIDEO_EMBEDDINGS)
    return embeddings, embeddings.select("model_version").first()["model_version"]


def _held(store: TableStore, cfg: AppConfig, version: str) -> DataFrame | None:
    """(video_id, features_hash) of the current `video_embeddings` when an incremental run can build
    on them: the table exists, incremental mode is on and its rows come from model `version`."""
    if not (cfg.embedding.incremental and store.exists(VIDEO_EMBEDDINGS)):
        return None
    held = store.read(VIDEO_EMBEDDINGS)
    models = [r["model_version"] for r in held.select("model_version").distinct().collect()]
    return held.select("video_id", "features_hash") if models == [version] else None


def embed_catalog(spark: SparkSession, cfg: AppConfig, run_id: str | None = None) -> dict:
    """Job entry: embed every video in `video_features` with the configured model. With the model of
    the current table (and `embedding.incremental`), only videos whose feature vectors changed or are
    new are embedded and upserted, and videos that left `video_features` are deleted."""
    start = time.time()
    version, path = resolve_model(cfg)
    store = TableStore(spark, cfg.storage)
    features_spec = video_features_spec(cfg.features.modalities)
    names = [m.name for m in cfg.features.modalities]
    lineage = Lineage.new(
        "embed_catalog", {"model": version, "features": store.version(features_spec)}, run_id
    )
    batch_size = cfg.embedding.batch_size

    def task(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            vectors = _embed_frame(path, names, batch, batch_size)
            yield pd.DataFrame(
                {
                    "video_id": batch["video_id"],
                    "embedding": list(vectors),
                    "features_hash": batch["features_hash"],
                }
            )

    features = store.read(features_spec).select("video_id", *names, F.xxhash64(*names).alias("features_hash"))
    schema = "video_id string, embedding array<float>, features_hash long"
    held = _held(store, cfg, version)
    if held is None:
        embedded = features.mapInPandas(task, schema).withColumn("model_version", F.lit(version))
        written = store.write(VIDEO_EMBEDDINGS, embedded, lineage)
    else:
        todo = features.join(held, ["video_id", "features_hash"], "left_anti")
        gone = held.join(features.select("video_id"), "video_id", "left_anti").select("video_id")
        embedded = todo.mapInPandas(task, schema).withColumn("model_version", F.lit(version))
        written = store.upsert(VIDEO_EMBEDDINGS, embedded, lineage, ["video_id"], deleted=gone)
    count = store.read(VIDEO_EMBEDDINGS).count()
    seconds = time.time() - start
    log.info(
        "embed_catalog: %s of %s videos embedded (%s) with model %s in %.1fs (%.0f videos/s)",
        f"{written:,}",
        f"{count:,}",
        "all" if held is None else "changed or new only",
        version,
        seconds,
        written / max(seconds, 1e-9),
    )
    return {"videos": count, "embedded": written, "model_version": version, "seconds": seconds}
