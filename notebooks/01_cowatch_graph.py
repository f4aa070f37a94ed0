# Databricks notebook source
# MAGIC %md
# MAGIC # The co-watch graph
# MAGIC Sizes, degree distribution and the strongest neighbours of the most-watched videos.
# MAGIC Runs on Databricks (cluster SparkSession, `conf/databricks.yaml`) or locally against the demo
# MAGIC tables: `CDML_CONFIG=conf/local.yaml .venv/bin/python notebooks/01_cowatch_graph.py`.

# COMMAND ----------

import os

from pyspark.sql import functions as F

from cdml_spark.config import load_config
from cdml_spark.spark import get_spark
from cdml_spark.tables import COWATCH_EDGES, VIDEO_STATS, TableStore

cfg = load_config(os.environ.get("CDML_CONFIG", "conf/local.yaml"))
spark = get_spark(cfg)
store = TableStore(spark, cfg.storage)
show = globals().get("display") or (lambda df: df.show(20, truncate=False))

# COMMAND ----------

edges, stats = store.read(COWATCH_EDGES), store.read(VIDEO_STATS)
show(
    stats.agg(
        F.count("*").alias("videos"),
        F.sum("events").alias("events"),
        F.sum((F.col("neighbors") > 0).cast("int")).alias("videos_with_neighbors"),
        F.expr("percentile(neighbors, 0.5)").alias("median_neighbors"),
    )
)

# COMMAND ----------

# MAGIC %md Degree distribution: how many videos have k neighbours (capped at `graph.max_neighbors`).

# COMMAND ----------

show(stats.groupBy("neighbors").count().orderBy("neighbors"))

# COMMAND ----------

top = [r.video_id for r in stats.orderBy(F.desc("users"), "video_id").limit(3).collect()]
show(edges.where(F.col("video_id").isin(top)).where("rank <= 5").orderBy("video_id", "rank"))
