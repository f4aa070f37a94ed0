# Databricks notebook source
# MAGIC %md
# MAGIC # Neighbours of a movie, with titles
# MAGIC The same movie's neighbours three ways: by co-watch (`cowatch_edges`), by CDML embedding
# MAGIC (`video_neighbors`, through `sql/neighbors_of_video.sql`), and for a video nobody watched; then
# MAGIC `related_videos`, which blends the two, for a popular, a long-tail and a never-watched movie.
# MAGIC Locally: `CDML_CONFIG=conf/local.yaml .venv/bin/python notebooks/02_movie_neighbours.py`.

# COMMAND ----------

import os
from functools import reduce

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

# COMMAND ----------

# MAGIC %md
# MAGIC One answer to "videos like X" (`related_videos`, through `sql/related_videos.sql`): a popular
# MAGIC movie, a long-tail one (co-watch support nearest `related.support_half_weight`, where co-watch and
# MAGIC embedding weigh the same) and one nobody watched, side by side. `source` says which neighbour
# MAGIC list a row is in; `cowatch_weight` is the co-watch score's share for that movie.

# COMMAND ----------

stats = store.read(VIDEO_STATS)
half = cfg.related.support_half_weight
examples = {
    "popular": video_id,
    "long tail": stats.orderBy(F.abs(F.col("user_days") - half), "video_id").first()["video_id"],
}
if cold:
    examples["never watched"] = cold["video_id"]
columns = []
for label, example in examples.items():
    rows = run_sql_file(spark, "related_videos", db=cfg.storage.database, video_id=example)
    first = rows.first()
    print(
        f"{label}: {example} (co-watch support {first['video_support']}, "
        f"co-watch weight {first['cowatch_weight']:.2f})"
    )
    cell = F.concat_ws(" · ", "title", "source", F.format_number("score", 3)).alias(label)
    columns.append(rows.where("rank <= 10").select("rank", cell))
show(reduce(lambda left, right: left.join(right, "rank", "full"), columns).orderBy("rank"))
