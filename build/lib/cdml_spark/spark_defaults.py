"""Write this clone's Spark conf dir (`.venv/spark-conf`): a `spark-defaults.conf` that runs our jobs
with Delta and this clone's Python, and a `log4j2.properties` that keeps Spark's console at WARN.
`.venv/bin/spark-submit` and `spark.get_spark` point `SPARK_CONF_DIR` at it.
Called by scripts/setup.sh: `python -m cdml_spark.spark_defaults JARS_DIR CONFIG CONF_DIR` (the driver
memory is the config's `spark.driver_memory`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyspark

from cdml_spark.runtime import delta_jars
from cdml_spark.spark import DELTA_CONF

__all__ = ["write_spark_defaults"]

_LOG4J = """rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
"""


def write_spark_defaults(jars_dir: str, driver_memory: str, conf_dir: Path) -> Path:
    jars = delta_jars(jars_dir)  # this stack's Scala build, else SetupError
    settings = {
        "spark.jars": ",".join(jars),
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.session.timeZone": "UTC",
        # local mode runs the tasks in the driver JVM: its default 1 GiB heap spills the co-watch join
        "spark.driver.memory": driver_memory,
        "spark.ui.showConsoleProgress": "false",
        **DELTA_CONF,
    }
    conf_dir.mkdir(parents=True, exist_ok=True)
    header = "# written by cdml-spark scripts/setup.sh\n"
    # older setups wrote these into the shared venv's pyspark, for all clones at once
    for legacy in (Path(pyspark.__file__).parent / "conf").glob("*"):
        if legacy.read_text().startswith(header):
            legacy.unlink()
    (conf_dir / "log4j2.properties").write_text(header + _LOG4J)
    target = conf_dir / "spark-defaults.conf"
    target.write_text(header + "".join(f"{k} {v}\n" for k, v in settings.items()))
    return target


if __name__ == "__main__":
    from cdml_spark.config import load_config

    memory = load_config(sys.argv[2]).spark.driver_memory
    target = write_spark_defaults(sys.argv[1], memory, Path(sys.argv[3]))
    print(f"[setup] wrote {target} (driver memory {memory})")
