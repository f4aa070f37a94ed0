# Databricks notebook source
# MAGIC %md
# MAGIC # Evaluation results
# MAGIC `eval_metrics` (written by `jobs/evaluate.py`): per dataset and task, every method's metrics as
# MAGIC a table and a bar chart. Definitions: `cdml_spark/metrics.py`; protocol: README "Evaluation".
# MAGIC Locally: `CDML_CONFIG=conf/local.yaml .venv/bin/python notebooks/04_evaluation.py`.

# COMMAND ----------

import os

from cdml_spark.config import load_config
from cdml_spark.eval_report import markdown_table, pivot, plot_task
from cdml_spark.spark import get_spark
from cdml_spark.tables import EVAL_METRICS, TableStore

cfg = load_config(os.environ.get("CDML_CONFIG", "conf/local.yaml"))
spark = get_spark(cfg)
store = TableStore(spark, cfg.storage)
show = globals().get("display") or (lambda df: df.show(50, truncate=False))

# COMMAND ----------

metrics = store.read(EVAL_METRICS)
show(metrics.groupBy("dataset", "task", "run_id").count().orderBy("dataset", "task"))
frame = metrics.toPandas()

# COMMAND ----------

os.makedirs(cfg.evaluation.report_dir, exist_ok=True)
for (dataset, task), rows in frame.groupby(["dataset", "task"], sort=False):
    table = pivot(rows)
    print(f"\n{dataset} / {task}\n{markdown_table(table)}")
    plot_task(table, f"{dataset}: {task}", os.path.join(cfg.evaluation.report_dir, f"{dataset}_{task}.png"))
