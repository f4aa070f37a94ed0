# Databricks notebook source
# MAGIC %md
# MAGIC # Neighbours of a movie, with titles
# MAGIC The same movie's neighbours three ways: by co-watch (`cowatch_edges`), by CDML embedding
# MAGIC (`video_neighbors`, through `sql/neighbors_of_video.sql`), and for a video nobody watched.
# MAGIC Locally: `CDML_CONFIG=conf/local.yaml .venv/bin/python notebooks/02_movie_neighbours.py`.

# COMMAND ----------

import os

from pyspark.sql import functions as F

from cdml_spark.config import load_config
from cdml_spark.spark import get_spark
from cdml_spark.sql_queries import run_sql_file
from cdml_spark.tables import COWATCH_EDGES, VIDEO_METADATA, VIDEO_SPLITS, VIDEO_STATS, TableStore

cfg = load_config(os.environ.get("CDML_CONFIG", "conf/local.yaml"))
spark = get_spark(cfg)
store = TableStore(spark, cfg.storage)
show = globals().get("display") or (lambda df: df.show(20, truncate=False))
titles = store.read(VIDEO_METADATA).select("video_id", "title")

# COMMAND ----------

# MAGIC %md Pick a movie: the `video_id` widget on Databricks, else the most-watched video.

# COMMAND ----------

widgets = globals().get("dbutils") and dbutils.widgets  # noqa: F821 (Databricks global)
video_id = widgets.get("video_id") if widgets else None
if not video_id:
    video_id = store.read(VIDEO_STATS).orderBy(F.desc("users"), "video_id").first()["video_id"]
print("video_id:", video_id)

# COMMAND ----------

# MAGIC %md By co-watch: the graph the model was trained on.

# COMMAND ----------

cowatch = store.read(COWATCH_EDGES).where(F.col("video_id") == video_id).where("rank <= 10")
show(
    cowatch.join(titles.withColumnRenamed("video_id", "neighbor_id"), "neighbor_id", "left")
    .select("video_id", "rank", "title", "cowatch_user_days", F.round("score", 3).alias("score"))
    .orderBy("rank")
)

# COMMAND ----------

# MAGIC %md By CDML embedding (the SQL that downstream users run).

# COMMAND ----------

show(run_sql_file(spark, "neighbors_of_video", db=cfg.storage.database, video_id=video_id).limit(10))

# COMMAND ----------

# MAGIC %md A video nobody watched (cold start): its neighbours come from content alone.

# COMMAND ----------

cold = store.read(VIDEO_SPLITS).where("users = 0").orderBy("video_id").first()
if cold:
    print("cold video_id:", cold["video_id"])
    show(
        run_sql_file(spark, "neighbors_of_video", db=cfg.storage.database, video_id=cold["video_id"]).limit(
            10
        )
    )
