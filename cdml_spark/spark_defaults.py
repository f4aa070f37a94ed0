"""Write the venv's `pyspark/conf/spark-defaults.conf` so its spark-submit runs our jobs with
Delta and the venv's Python. Called by scripts/setup.sh: `python -m cdml_spark.spark_defaults JARS_DIR`."""

from __future__ import annotations

import sys
from pathlib import Path

import pyspark

from cdml_spark.spark import DELTA_CONF


def write_spark_defaults(jars_dir: str) -> Path:
    jars = sorted(str(p) for p in Path(jars_dir).glob("delta-*.jar"))
    if not jars:
        raise SystemExit(f"no Delta jars in {jars_dir}")
    settings = {
        "spark.jars": ",".join(jars),
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        **DELTA_CONF,
    }
    target = Path(pyspark.__file__).parent / "conf" / "spark-defaults.conf"
    target.parent.mkdir(exist_ok=True)
    target.write_text("# written by cdml-spark scripts/setup.sh\n" + "".join(f"{k} {v}\n" for k, v in settings.items()))
    return target


if __name__ == "__main__":
    print(f"[setup] wrote {write_spark_defaults(sys.argv[1])}")
