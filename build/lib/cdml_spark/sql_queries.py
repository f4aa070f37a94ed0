"""Run the example queries in `sql/` with `${name}` parameters (the database comes from config)."""

from __future__ import annotations

import re
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from cdml_spark.tables import quote_dotted

__all__ = ["render", "run_sql_file"]

_SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


def render(text: str, params: dict[str, object]) -> str:
    """Substitute `${name}` (`db` as a quoted identifier, the others escaped for string literals);
    a name without a value is an error naming it."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in params:
            raise KeyError(f"SQL parameter ${{{name}}} has no value")
        raw = str(params[name])
        if name == "db":  # `db` or `catalog.schema`: quoted identifiers
            return quote_dotted(raw)
        return raw.replace("\\", "\\\\").replace("'", "\\'")

    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return re.sub(r"\$\{(\w+)\}", value, body)


def run_sql_file(spark: SparkSession, name: str, **params: object) -> DataFrame:
    return spark.sql(render((_SQL_DIR / f"{name}.sql").read_text(), params))
