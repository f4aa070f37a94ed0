"""The one SparkSession factory: reuse an active session (spark-submit, Databricks), else build a
local one with Delta from the jars that `scripts/setup.sh` cached."""

from __future__ import annotations

import os
import sys

from py4j.java_gateway import JavaClass
from pyspark.sql import SparkSession

from cdml_spark.config import AppConfig
from cdml_spark.errors import SetupError
from cdml_spark.runtime import delta_jars, jars_dir

__all__ = ["DELTA_CONF", "get_spark"]


DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def get_spark(cfg: AppConfig) -> SparkSession:
    """Active session if there is one (Databricks, or a job that already built it), else a new one.

    Under spark-submit the JVM already exists: its master and jars come from the command line and
    `spark-defaults.conf` (setup writes one into this clone's `.venv/spark-conf`); we only add SQL settings.
    """
    spark = SparkSession.getActiveSession()
    if spark is None:
        builder = SparkSession.builder.appName(cfg.spark.app_name)
        if "PYSPARK_GATEWAY_PORT" not in os.environ:  # plain `python job.py`: we launch the JVM
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            clone_conf = os.path.join(sys.prefix, "spark-conf")  # written by setup into this clone's .venv
            if os.path.isdir(clone_conf):
                os.environ.setdefault("SPARK_CONF_DIR", clone_conf)
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = (
                builder.master(cfg.spark.master)
                .config("spark.jars", ",".join(delta_jars(jars_dir(cfg.storage.cache_dir))))
                .config("spark.driver.memory", cfg.spark.driver_memory)
                .config("spark.ui.showConsoleProgress", "false")
            )
            for key, value in DELTA_CONF.items():
                builder = builder.config(key, value)
        spark = builder.getOrCreate()
    _check_delta(spark)
    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")  # toPandas/createDataFrame via Arrow
    for key, value in cfg.spark.extra_conf.items():
        spark.conf.set(key, value)
    return spark


def _check_delta(spark: SparkSession) -> None:
    if not isinstance(spark._jvm.io.delta.tables.DeltaTable, JavaClass):
        raise SetupError(
            "Delta Lake is not on this Spark's classpath: run scripts/setup.sh and use .venv/bin/spark-submit, "
            "or pass --packages io.delta:delta-spark_2.12:3.3.2"
        )
    if "DeltaSparkSessionExtension" not in spark.conf.get("spark.sql.extensions", ""):
        raise SetupError("spark.sql.extensions lacks io.delta.sql.DeltaSparkSessionExtension")
