# Databricks notebook source
# MAGIC %md
# MAGIC # The embedding space, coloured by genre
# MAGIC A 2-D PCA projection of `video_embeddings` (unit vectors), each video coloured by its first
# MAGIC genre (MovieLens) or topic (synthetic data); cold videos are drawn as crosses. The PNG is
# MAGIC saved next to the evaluation report. Locally:
# MAGIC `CDML_CONFIG=conf/local.yaml .venv/bin/python notebooks/03_embeddings_by_genre.py`.

# COMMAND ----------

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from cdml_spark.config import load_config
from cdml_spark.serving.embed import current_embeddings
from cdml_spark.spark import get_spark
from cdml_spark.tables import VIDEO_METADATA, VIDEO_SPLITS, TableStore

cfg = load_config(os.environ.get("CDML_CONFIG", "conf/local.yaml"))
spark = get_spark(cfg)
store = TableStore(spark, cfg.storage)
show = globals().get("display") or (lambda df: df.show(20, truncate=False))

# COMMAND ----------

embeddings, model_version = current_embeddings(store)
rows = (
    embeddings.join(store.read(VIDEO_METADATA).select("video_id", "genres"), "video_id", "left")
    .join(store.read(VIDEO_SPLITS).select("video_id", "split"), "video_id", "left")
    .toPandas()
)
matrix = np.stack(rows["embedding"]).astype(np.float64)
centred = matrix - matrix.mean(axis=0)
_, singular, axes = np.linalg.svd(centred, full_matrices=False)
xy = centred @ axes[:2].T
explained = singular[:2] ** 2 / (singular**2).sum()
rows["genre"] = [g[0] if g is not None and len(g) else "unknown" for g in rows["genres"]]
print(f"{len(rows):,} videos, model {model_version}; PCA explains {explained[0]:.1%} + {explained[1]:.1%}")
show(spark.createDataFrame(rows.groupby("genre").size().rename("videos").reset_index()).orderBy("genre"))

# COMMAND ----------

fig, ax = plt.subplots(figsize=(9, 7))
genres = rows["genre"].value_counts().index[:12]  # the 12 most common first genres; the rest grey
colours = plt.get_cmap("tab20")
for i, genre in enumerate([*genres, "other"]):
    picked = ~rows["genre"].isin(genres) if genre == "other" else rows["genre"] == genre
    for cold, marker in ((False, "o"), (True, "x")):
        mask = picked & ((rows["split"] == "cold_test") == cold)
        ax.scatter(
            xy[mask, 0],
            xy[mask, 1],
            s=8,
            marker=marker,
            color="lightgrey" if genre == "other" else colours(i),
            label=genre if not cold else None,
        )
ax.set_title(f"CDML embeddings (PCA), model {model_version}; x = cold videos")
ax.legend(markerscale=2, fontsize=7, ncol=2)
out = os.path.join(cfg.evaluation.report_dir, "embeddings_by_genre.png")
os.makedirs(os.path.dirname(out), exist_ok=True)
fig.savefig(out, dpi=110)
print("saved", out)
globals().get("display", lambda f: None)(fig)
