"""What the demo prints at the end: table sizes, quarantine counts, the model's validation NDCG by
epoch, and "videos like X" with titles (the most watched videos and `_FEATURED`) — by co-watch and,
once embedded, by CDML embedding and by the related-videos blend (including a video nobody watched)."""

from __future__ import annotations

import json
import os

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig
from cdml_spark.evaluation.report import headline
from cdml_spark.tables import (
    ALL_TABLE_NAMES,
    COWATCH_EDGES,
    EVAL_METRICS,
    RELATED_VIDEOS,
    VIDEO_METADATA,
    VIDEO_NEIGHBORS,
    VIDEO_SPLITS,
    VIDEO_STATS,
    WATCH_EVENTS_QUARANTINE,
    TableSpec,
    TableStore,
)

__all__ = ["summary"]


_FEATURED = ("American Beauty (1999)",)  # shown by co-watch and by embedding when in the catalog


def _with_titles(store: TableStore, rows: DataFrame, id_col: str) -> DataFrame:
    if not store.exists(VIDEO_METADATA):
        return rows.withColumn("title", F.col(id_col))
    titles = store.read(VIDEO_METADATA).select(F.col("video_id").alias(id_col), "title")
    return rows.join(titles, id_col, "left").withColumn("title", F.coalesce("title", id_col))


def _neighbours(store: TableStore, table: TableSpec, video_ids: list[str], top: int) -> list[str]:
    rows = store.read(table).where(F.col("video_id").isin(video_ids) & (F.col("rank") <= top))
    rows = _with_titles(store, rows, "neighbor_id")
    named = _with_titles(store, rows.select("video_id").distinct(), "video_id").collect()
    names = {r["video_id"]: r["title"] for r in named}
    lines = []
    by_video: dict[str, list] = {}
    for r in rows.orderBy("video_id", "rank").collect():
        by_video.setdefault(r["video_id"], []).append(r)
    for vid in video_ids:
        listed = by_video.get(vid, [])
        weight = listed and "cowatch_weight" in listed[0]
        lines.append(
            f'  like "{names.get(vid, vid)}"'
            + (f" (co-watch weight {listed[0]['cowatch_weight']:.2f}):" if weight else ":")
        )
        for r in listed:
            extra = f", {r['cowatch_user_days']:,} co-watching user-days" if "cowatch_user_days" in r else ""
            extra += f", {r['source']}" if "source" in r else ""
            lines.append(f"    {r['rank']:>2}. {r['title']}  ({r['score']:.3f}{extra})")
    return lines


def summary(
    spark: SparkSession,
    cfg: AppConfig,
    run_id: str | None = None,
    examples: int = 3,
    top: int = 5,
    featured: tuple[str, ...] = _FEATURED,
) -> str:
    """Print (and return) the summary of the tables that exist."""
    store = TableStore(spark, cfg.storage)
    lines = ["tables:"]
    for spec in map(TableSpec, ALL_TABLE_NAMES):
        if store.exists(spec):
            lines.append(
                f"  {store.qualified(spec):<34} {store.read(spec).count():>12,} rows  (v{store.version(spec)})"
            )
    if store.exists(WATCH_EVENTS_QUARANTINE):
        for row in store.read(WATCH_EVENTS_QUARANTINE).groupBy("reason").count().orderBy("reason").collect():
            lines.append(f"  quarantined {row['reason']}: {row['count']:,}")
    latest = os.path.join(cfg.training.model_dir, "LATEST")
    if os.path.exists(latest):
        with open(latest) as handle:
            version = handle.read().strip()
        with open(os.path.join(cfg.training.model_dir, version, "model.json")) as handle:
            info = json.load(handle)
        history = info.get("history", [])
        ndcg = ", ".join(f"{h['val_ndcg']:.3f}" for h in history)
        lines.append(
            f"model {version}: validation NDCG@{cfg.training.validation_k} by epoch {ndcg} "
            f"(untrained {info.get('val_ndcg_untrained', float('nan')):.3f}; kept epoch {info.get('best_epoch')})"
        )
    if store.exists(EVAL_METRICS):
        lines += _evaluation(store)
    if not store.exists(VIDEO_STATS):
        return _emit(lines)
    popular = [
        r["video_id"]
        for r in store.read(VIDEO_STATS).orderBy(F.desc("users"), "video_id").limit(examples).collect()
    ]
    present = {
        r["video_id"] for r in store.read(VIDEO_STATS).where(F.col("video_id").isin(*featured)).collect()
    }
    popular += [v for v in featured if v in present and v not in popular]
    lines.append("by co-watch (cowatch_edges):")
    lines += _neighbours(store, COWATCH_EDGES, popular, top)
    cold = []
    if store.exists(VIDEO_SPLITS):
        cold = [
            r["video_id"]
            for r in store.read(VIDEO_SPLITS).where("users = 0").orderBy("video_id").limit(1).collect()
        ]
    if store.exists(VIDEO_NEIGHBORS):
        lines.append("by CDML embedding (video_neighbors):")
        lines += _neighbours(store, VIDEO_NEIGHBORS, popular, top)
        if cold:
            lines.append("a video nobody watched, by CDML embedding:")
            lines += _neighbours(store, VIDEO_NEIGHBORS, cold, top)
    if store.exists(RELATED_VIDEOS):
        lines.append("related (related_videos: co-watch and embedding, weighted by co-watch support):")
        lines += _neighbours(store, RELATED_VIDEOS, popular + cold, top)
    return _emit(lines)


def _evaluation(store: TableStore) -> list[str]:
    """Headline metrics per dataset, protocol and method from `eval_metrics` (the full table: the report)."""
    frame = store.read(EVAL_METRICS).toPandas()
    lines = [
        f"evaluation ({store.qualified(EVAL_METRICS)}, run {frame['run_id'].iloc[0] if len(frame) else '-'}):"
    ]
    for (dataset, protocol), rows in frame.groupby(["dataset", "protocol"]):
        table = headline(rows, protocol)
        lines.append(f"  {dataset} ({protocol})".ljust(36) + "".join(f"{c:>19}" for c in table.columns))
        for method, values in table.iterrows():
            lines.append(
                f"    {method:<32}" + "".join(f"{'—' if pd.isna(v) else f'{v:.4f}':>19}" for v in values)
            )
    return lines


def _emit(lines: list[str]) -> str:
    text = "\n".join(lines)
    print(text)
    return text
