"""Frame-level features → video-level vectors, as in the paper: PCA of per-frame vectors, then the
mean over a video's frames.

Input rows: video_id, frame_index, modality, vector (array of numbers). Per modality named in
`features.modalities` (its `dim` is the PCA size k):
1. optional dequantisation of YouTube-8M 8-bit vectors (0..255):
   x = q · (max − min)/255 + (max − min)/512 + min, with `quantized_min/max` (YouTube-8M: −2, 2);
2. frames with a non-finite value or a length other than the modality's input length go to the
   quarantine (reason `frame_non_finite` / `frame_wrong_dimension`);
3. PCA fitted with Spark ML on a `sample_fraction` sample: centre (StandardScaler, mean only), then
   PCA(k); optional whitening divides component i by √λ_i. The fitted pipeline is saved under
   `model_dir/<modality>` and reused by later batches (projections stay comparable) unless `refit`;
4. mean-pool per video. The result goes through `features.validate_features` like any other source.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig, FramesConfig, Modality
from cdml_spark.errors import InputSchemaError

__all__ = ["frame_features"]

log = logging.getLogger(__name__)

_FRAME_COLUMNS = ("video_id", "frame_index", "modality", "vector")


def _dequantize(col, lo: float, hi: float):
    """YouTube-8M's dequantisation of 8-bit features (see module docstring)."""
    span = hi - lo
    return F.transform(col, lambda q: q * (span / 255.0) + (span / 512.0) + lo)


def _read_frames(spark: SparkSession, cfg: FramesConfig) -> DataFrame:
    if not cfg.path:
        raise InputSchemaError("features.source is 'frames' but config key 'features.frames.path' is not set")
    frames = spark.read.format(cfg.format).load(cfg.path)
    missing = [c for c in _FRAME_COLUMNS if c not in frames.columns]
    if missing:
        raise InputSchemaError(f"frame input lacks columns {missing}; has {frames.columns}")
    return frames


def _fit_or_load(
    frames: DataFrame, modality: Modality, cfg: FramesConfig, input_dim: int
) -> tuple[PipelineModel, np.ndarray]:
    """The modality's PCA pipeline and per-component output scale (1, or 1/√λ when whitening)."""
    path = os.path.join(cfg.model_dir, modality.name)
    meta_path = os.path.join(path, "cdml_pca.json")
    if os.path.exists(meta_path) and not cfg.refit:
        with open(meta_path) as handle:
            meta = json.load(handle)
        if (meta["input_dim"], meta["k"], meta["whiten"]) != (input_dim, modality.dim, cfg.whiten):
            raise InputSchemaError(
                f"saved PCA {path} has input_dim={meta['input_dim']} k={meta['k']} whiten={meta['whiten']}; "
                f"this batch needs {input_dim}/{modality.dim}/{cfg.whiten}: set features.frames.refit=true"
            )
        log.info("frames: reusing PCA %s", path)
        return PipelineModel.load(path), np.array(meta["scale"])
    if modality.dim > input_dim:
        raise InputSchemaError(f"modality {modality.name!r}: PCA dim {modality.dim} > input dim {input_dim}")
    sample = frames.sample(fraction=cfg.sample_fraction, seed=17) if cfg.sample_fraction < 1 else frames
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="x", outputCol="centred", withMean=True, withStd=False),
            PCA(k=modality.dim, inputCol="centred", outputCol="pca"),
        ]
    )
    model = pipeline.fit(sample)
    scaler, pca = model.stages
    total_variance = float(np.sum(scaler.std.toArray() ** 2))
    eigenvalues = pca.explainedVariance.toArray() * total_variance
    scale = 1 / np.sqrt(np.maximum(eigenvalues, 1e-12)) if cfg.whiten else np.ones(modality.dim)
    model.write().overwrite().save(path)
    with open(meta_path, "w") as handle:
        json.dump(
            {"input_dim": input_dim, "k": modality.dim, "whiten": cfg.whiten, "scale": scale.tolist()}, handle
        )
    log.info(
        "frames: fitted PCA %s (%d -> %d, %.1f%% variance kept)",
        path,
        input_dim,
        modality.dim,
        100 * float(pca.explainedVariance.toArray().sum()),
    )
    return model, scale


def frame_features(spark: SparkSession, cfg: AppConfig) -> tuple[DataFrame, DataFrame]:
    """(video_id + one pooled array per modality, quarantined frames: video_id, reason, modality)."""
    fcfg = cfg.features.frames
    frames = _read_frames(spark, fcfg)
    pooled, quarantined = None, []
    for modality in cfg.features.modalities:
        rows = frames.where(F.col("modality") == modality.name).select(
            "video_id", F.col("vector").cast("array<double>").alias("v")
        )
        if fcfg.quantized:
            rows = rows.select(
                "video_id", _dequantize(F.col("v"), fcfg.quantized_min, fcfg.quantized_max).alias("v")
            )
        sizes = rows.groupBy(F.size("v").alias("n")).count().orderBy(F.desc("count")).first()
        if sizes is None:
            raise InputSchemaError(f"no frames for modality {modality.name!r} in {fcfg.path}")
        input_dim = sizes["n"]
        non_finite = F.exists("v", lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
        reason = F.when(F.size("v") != input_dim, "frame_wrong_dimension").when(
            non_finite, "frame_non_finite"
        )
        checked = rows.withColumn("reason", reason)
        quarantined.append(
            checked.where(F.col("reason").isNotNull()).select(
                "video_id", "reason", F.lit(modality.name).alias("modality")
            )
        )
        good = checked.where(F.col("reason").isNull()).select("video_id", array_to_vector("v").alias("x"))
        model, scale = _fit_or_load(good, modality, fcfg, input_dim)
        scale_col = F.array(*[F.lit(float(s)) for s in scale])
        projected = model.transform(good).select(
            "video_id", F.zip_with(vector_to_array("pca"), scale_col, lambda a, b: a * b).alias("p")
        )
        per_video = projected.groupBy("video_id").agg(
            F.array(*[F.avg(F.col("p")[i]) for i in range(modality.dim)]).alias(modality.name)
        )
        pooled = per_video if pooled is None else pooled.join(per_video, "video_id", "full_outer")
    quarantine = quarantined[0]
    for q in quarantined[1:]:
        quarantine = quarantine.unionByName(q)
    return pooled, quarantine
