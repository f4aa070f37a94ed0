"""Offline evaluation (`jobs/evaluate.py`): for each dataset in `evaluation.datasets` and each protocol
in `evaluation.protocols`, run the real pipeline in a workspace of its own
(`<evaluation.workspace>/<dataset>/<protocol>`) on the protocol's *training events* only, then score
CDML and baselines on what those events did not contain.

`time_split` (retrieval, recommendation, classification):
1. Per user, the latest ⌊test_fraction · n⌋ of their n distinct videos (by last watch time, ties by a
   hash of user and video) are held out; everything earlier is the training period. Cold-test videos
   (the triplet split's hash rule with `evaluation.cold_fraction`) lose all their training-period
   watches, so they are truly cold: no co-watch edges, no popularity, no triplets — only content.
2. The training-period events go through ingest → build_graph → ingest_features (genres kept out of
   the inputs unless `evaluation.genres_as_content`) → make_triplets → train (+ embed) once per fusion.
3. Held-out co-watch graph: the whole `cowatch_edges` rule (window, min_users, cosine top
   `max_neighbors`) on the held-out events. Retrieval: query = a video with held-out neighbours,
   relevant = its top neighbours; warm = split
   train (trained on), cold = split cold_test (never in a triplet).
4. Recommendation: users with ≥ `min_test_items` held-out videos; profile = their `recommend.history`
   latest training-period videos; training-period watches are never recommended.
5. Classification: genres (MovieLens) or latent topic (synthetic), fit on train videos, scored on
   cold_test videos.

`user_holdout` (retrieval only):
1. Users with hash_uniform(`user_holdout.salt`, user_id) < `user_holdout.user_fraction` are held out,
   with all their events. Cold videos: the triplet split rule with `user_holdout.cold_fraction`; they
   have no training event at all.
2. Training events = the other users' events on non-cold videos, through the same pipeline (genres in
   the content features when `user_holdout.genres_as_content`: this protocol scores no genre task).
3. Truth = the held-out users' co-watch graph (same rule, every one of their events, cold videos
   included); retrieval as in the time split (warm = split train watched in training, cold = cold_test).

Nothing is tuned on the truth. The metric definitions are in `cdml_spark.evaluation.metrics`; methods in
`cdml_spark.evaluation.tasks`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdml_spark.config import AppConfig
from cdml_spark.evaluation.protocols import (
    Protocol,
    held_out_events,
    held_out_neighbours,
    index_of,
    load_catalog,
    load_users,
    protocol_split,
    training_events,
    workspace_config,
)
from cdml_spark.evaluation.report import write_report
from cdml_spark.evaluation.tasks import (
    Catalog,
    MetricRow,
    classification,
    recommendation,
    related_method,
    related_scorers,
    retrieval,
    scorers,
)
from cdml_spark.events import ingest_events, read_events_source, validate_events
from cdml_spark.serving.embed import current_embeddings
from cdml_spark.tables import (
    EVAL_METRICS,
    Lineage,
    TableStore,
)

__all__ = ["evaluate", "model_vectors", "run_training_period", "workspace_models"]

log = logging.getLogger(__name__)


def _embeddings_by_id(spark: SparkSession, ecfg: AppConfig) -> tuple[str, dict[str, np.ndarray]]:
    """(model version, video id -> embedding) of the workspace's current `video_embeddings`."""
    embeddings, version = current_embeddings(TableStore(spark, ecfg.storage))
    frame = embeddings.select("video_id", "embedding").toPandas()
    return version, dict(zip(frame["video_id"], frame["embedding"], strict=True))


def run_training_period(
    spark: SparkSession, ecfg: AppConfig, source: DataFrame, split: DataFrame, protocol: Protocol, run_id: str
) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """The pipeline on the split's training events in the workspace (`source`: the dataset's events as
    read); per fusion: method -> (model version, embeddings). Ingest takes the training events rather
    than reading the source; the stages after embed_catalog are not run."""
    from cdml_spark.pipeline import run_stages  # here: the pipeline's stages include `evaluate`

    ingest_events(spark, ecfg, training_events(source, split), run_id)
    run_stages(spark, ecfg, "build_graph", "make_triplets", run_id)
    out = {}
    for fusion in ecfg.evaluation.fusions:
        version = f"eval-{ecfg.events.source}-{protocol}-{fusion}-{run_id}"
        fcfg = ecfg.model_copy(
            update={
                "training": ecfg.training.model_copy(update={"fusion": fusion, "model_version": version}),
                "embedding": ecfg.embedding.model_copy(update={"model_version": version}),
            }
        )
        run_stages(spark, fcfg, "train", "embed_catalog", run_id)
        out[f"cdml_{fusion}"] = _embeddings_by_id(spark, ecfg)
    return out


def workspace_models(spark: SparkSession, ecfg: AppConfig) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """`run_training_period`'s result without running it: the workspace's current `video_embeddings`
    (the fusion embedded last) as `cdml_<fusion>` of the model that wrote them."""
    version, by_id = _embeddings_by_id(spark, ecfg)
    with open(os.path.join(ecfg.training.model_dir, version, "model.json")) as handle:
        fusion = json.load(handle)["spec"]["fusion"]
    return {f"cdml_{fusion}": (version, by_id)}


def model_vectors(
    models: dict[str, tuple[str, dict[str, np.ndarray]]], catalog: Catalog
) -> dict[str, np.ndarray]:
    """method -> [N, d] embeddings in catalog order."""
    return {
        method: np.stack([by_id[v] for v in catalog.ids]).astype(np.float32)
        for method, (_, by_id) in models.items()
    }


def _users_counts(split: DataFrame) -> dict[str, int]:
    """Held-out and training users of a split (user-held-out protocol)."""
    per_user = split.groupBy("user_id").agg(F.max(F.col("held_out").cast("int")).alias("held"))
    row = per_user.agg(F.count(F.lit(1)).alias("users"), F.sum("held").alias("held")).first()
    held = int(row["held"] or 0)
    return {"held_out_users": held, "training_users": int(row["users"]) - held}


def _score(
    cfg: AppConfig,
    protocol: Protocol,
    catalog: Catalog,
    vectors: dict[str, np.ndarray],
    relevant: dict[int, set[int]],
    split: DataFrame,
) -> tuple[list[MetricRow], dict]:
    """The protocol's tasks and counts: retrieval; plus recommendation and classification for the
    time split (the user-held-out protocol scores retrieval only)."""
    ev = cfg.evaluation
    methods = {
        **scorers(catalog, vectors, ev.seed),
        **related_scorers(catalog, vectors, cfg.related.support_half_weight),
    }
    rows = retrieval(catalog, methods, relevant, ev.ks)
    counts = {
        "videos": catalog.size,
        "videos_by_split": {s: int((catalog.split == s).sum()) for s in ("train", "validation", "cold_test")},
        "retrieval_queries": len(relevant),
    }
    if protocol == "user_holdout":
        return rows, {**counts, **_users_counts(split)}
    users = load_users(split, index_of(catalog.ids), cfg.recommend.history, ev.min_test_items)
    rows += recommendation(catalog, methods, users, ev.recommend_k)
    rows += classification(catalog, vectors, ev.gap_k, ev.seed)
    return rows, {**counts, "users": len(users.test)}


def _evaluate_protocol(
    spark: SparkSession,
    cfg: AppConfig,
    dataset: str,
    protocol: Protocol,
    events: tuple[DataFrame, DataFrame],
    run_id: str,
    reuse: bool,
) -> tuple[list[dict], dict]:
    """Metric rows (dicts with model_version, dataset, protocol) and counts for one (dataset, protocol)
    workspace. `events`: the dataset's events as read, and their valid rows; `reuse`: score the
    workspace's tables and embeddings as they are (no pipeline run)."""
    started = time.time()
    source, valid = events
    ecfg = workspace_config(cfg, dataset, protocol)
    split = protocol_split(valid.select("user_id", "video_id", "event_ts"), ecfg, protocol).persist()
    if reuse:
        models = workspace_models(spark, ecfg)
    else:
        models = run_training_period(spark, ecfg, source, split, protocol, run_id)
    catalog = load_catalog(spark, ecfg)
    vectors = model_vectors(models, catalog)
    relevant = held_out_neighbours(held_out_events(valid, split), ecfg.graph, index_of(catalog.ids))
    rows, counts = _score(cfg, protocol, catalog, vectors, relevant, split)
    split.unpersist()
    counts["seconds"] = round(time.time() - started, 1)
    log.info("evaluate %s / %s: %s", dataset, protocol, counts)
    versions = {
        m: version for method, (version, _) in models.items() for m in (method, related_method(method))
    }
    meta = {"dataset": dataset, "protocol": protocol}
    return [{**asdict(r), **meta, "model_version": versions.get(r.method)} for r in rows], counts


def _evaluate_dataset(
    spark: SparkSession, cfg: AppConfig, dataset: str, run_id: str, reuse: bool
) -> tuple[list[dict], dict[str, dict]]:
    """Metric rows and counts (by protocol) of every configured protocol on one dataset; the events
    are read (or generated) once."""
    ecfg = workspace_config(cfg, dataset, cfg.evaluation.protocols[0])
    source = read_events_source(spark, ecfg).persist()
    valid = validate_events(source, ecfg.events).where(F.col("reason").isNull())
    rows, counts = [], {}
    for protocol in cfg.evaluation.protocols:
        protocol_rows, counts[protocol] = _evaluate_protocol(
            spark, cfg, dataset, protocol, (source, valid), run_id, reuse
        )
        rows += protocol_rows
    source.unpersist()
    return rows, counts


def _log_evaluation_run(cfg: AppConfig, metrics: pd.DataFrame, report_dir: str, run_id: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.training.mlflow.tracking_uri)
    mlflow.set_experiment(cfg.training.mlflow.experiment)
    keys = ("dataset", "protocol", "task", "method", "item_split", "metric", "k")
    with mlflow.start_run(run_name=f"evaluate-{run_id}"):
        mlflow.log_params({"run_id": run_id, **cfg.evaluation.model_dump()})
        mlflow.log_metrics(
            {
                "/".join(str(r[k]) for k in keys if pd.notna(r[k])): r["value"]
                for r in metrics.to_dict("records")
            }
        )
        mlflow.log_table(metrics, artifact_file="eval_metrics.json")
        mlflow.log_artifacts(report_dir, artifact_path="report")


def _protocol_header(cfg: AppConfig) -> list[str]:
    """One report line per configured protocol."""
    ev, uh = cfg.evaluation, cfg.evaluation.user_holdout
    lines = {
        "time_split": f"time_split: per-user time split (latest {ev.test_fraction:.0%} held out), "
        f"{ev.cold_fraction:.0%} of videos cold, genres {'in' if ev.genres_as_content else 'kept out of'} "
        "the content features; retrieval, recommendation, classification.",
        "user_holdout": f"user_holdout: {uh.user_fraction:.0%} of users held out (salted hash), their co-watch "
        f"graph is the truth; {uh.cold_fraction:.0%} of videos cold (no training event), genres "
        f"{'in' if uh.genres_as_content else 'kept out of'} the content features; retrieval only.",
    }
    return [f"- {lines[p]}" for p in ev.protocols]


def evaluate(
    spark: SparkSession, cfg: AppConfig, run_id: str | None = None, reuse: bool = False
) -> pd.DataFrame:
    """Job entry: evaluate every configured dataset × protocol; replace `eval_metrics`; write the report.
    `reuse`: score each workspace's current tables and embeddings (left by an earlier evaluation with
    the same config; only the fusion embedded last) instead of running the pipeline again."""
    ev = cfg.evaluation
    sections = ("evaluation", "graph", "features", "triplets", "training", "related")
    params = {**{k: getattr(cfg, k).model_dump() for k in sections}, "reuse": reuse}
    lineage = Lineage.new("evaluate", params, run_id)
    rows, counts = [], {}
    for dataset in ev.datasets:
        dataset_rows, counts[dataset] = _evaluate_dataset(spark, cfg, dataset, lineage.run_id, reuse)
        rows += dataset_rows
    metrics = pd.DataFrame(rows)
    store = TableStore(spark, cfg.storage)
    names = [f.name for f in EVAL_METRICS.fields]
    records = [tuple(None if pd.isna(r[n]) else r[n] for n in names) for r in rows]
    schema = T.StructType([T.StructField(f.name, f.dataType, True) for f in EVAL_METRICS.fields])
    store.write(EVAL_METRICS, spark.createDataFrame(records, schema), lineage)
    header = [
        f"run_id `{lineage.run_id}`; table `{store.qualified(EVAL_METRICS)}` v{store.version(EVAL_METRICS)}.",
        "",
        "Protocols (per dataset, each in its own workspace running the real pipeline; see README):",
        *_protocol_header(cfg),
    ]
    report = write_report(metrics, counts, ev.report_dir, header)
    if cfg.training.mlflow.enabled:
        _log_evaluation_run(cfg, metrics, ev.report_dir, lineage.run_id)
    log.info("evaluate: %d metric rows in %s; report %s", len(metrics), store.qualified(EVAL_METRICS), report)
    return metrics
