# Databricks notebook source
# MAGIC %md
# MAGIC # Evaluation results
# MAGIC `eval_metrics` (written by `jobs/evaluate.py`): per dataset and protocol (`time_split`,
# MAGIC `user_holdout`), the headline metrics, then per task every method's metrics as a table and a bar
# MAGIC chart. Definitions: `cdml_spark/evaluation/metrics.py`; protocols: README "Evaluation".
# MAGIC Locally: `CDML_CONFIG=conf/local.yaml .venv/bin/python notebooks/04_evaluation.py`.

# COMMAND ----------

import os

from pyspark.sql import functions as F

from cdml_spark.config import load_config
from cdml_spark.evaluation.report import headline, markdown_table, pivot, plot_task
from cdml_spark.spark import get_spark
from cdml_spark.tables import EVAL_METRICS, TableStore

cfg = load_config(os.environ.get("CDML_CONFIG", "conf/local.yaml"))
spark = get_spark(cfg)
store = TableStore(spark, cfg.storage)
show = globals().get("display") or (lambda df: df.show(50, truncate=False))

# COMMAND ----------

metrics = store.read(EVAL_METRICS)
if "protocol" not in metrics.columns:  # written before the user-held-out protocol existed
    metrics = metrics.withColumn("protocol", F.lit("time_split"))
show(metrics.groupBy("dataset", "protocol", "task", "run_id").count().orderBy("dataset", "protocol", "task"))
frame = metrics.toPandas()

# COMMAND ----------

# MAGIC %md
# MAGIC Headline per dataset and protocol (the protocols have different truths: compare methods within a
# MAGIC table, not numbers across tables).

# COMMAND ----------

for (dataset, protocol), rows in frame.groupby(["dataset", "protocol"], sort=False):
    print(f"\n{dataset} / {protocol}\n{markdown_table(headline(rows, protocol))}")

# COMMAND ----------

os.makedirs(cfg.evaluation.report_dir, exist_ok=True)
for (dataset, protocol, task), rows in frame.groupby(["dataset", "protocol", "task"], sort=False):
    table = pivot(rows)
    print(f"\n{dataset} / {protocol} / {task}\n{markdown_table(table)}")
    png = os.path.join(cfg.evaluation.report_dir, f"{dataset}_{protocol}_{task}.png")
    plot_task(table, f"{dataset} ({protocol}): {task}", png)
