"""Shared entry-point plumbing for `jobs/*.py`: args → config → SparkSession → one function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from delta import exceptions as delta_errors
from pyspark.sql import SparkSession

from cdml_spark.config import AppConfig, load_config
from cdml_spark.errors import (
    ConfigError,
    DeletedRowsInFiles,
    InputSchemaError,
    RefusedWrite,
    SetupError,
    StaleTriplets,
)
from cdml_spark.spark import get_spark

__all__ = ["run_job", "setup_logging"]

log = logging.getLogger("cdml_spark")

_USER_ERRORS = (
    ConfigError,
    InputSchemaError,
    SetupError,
    FileNotFoundError,
    StaleTriplets,
    RefusedWrite,
    DeletedRowsInFiles,
)


# Delta's commit conflicts (delta.exceptions: no common Python base class): another job committed to
# a table this job was replacing; this job's commit was refused and its files are never referenced
_CONCURRENT_WRITES = (
    delta_errors.DeltaConcurrentModificationException,
    delta_errors.ConcurrentWriteException,
    delta_errors.ConcurrentAppendException,
    delta_errors.ConcurrentDeleteReadException,
    delta_errors.ConcurrentDeleteDeleteException,
    delta_errors.ConcurrentTransactionException,
    delta_errors.MetadataChangedException,
    delta_errors.ProtocolChangedException,
)


def _concurrent_write_message(exc: Exception) -> str:
    """One line for a Delta commit conflict."""
    lines = str(exc).strip().splitlines()
    return (
        f"{type(exc).__name__}: another job committed to a table this job was replacing, so this "
        "job's write was not committed (the table holds the other job's version); rerun it if its "
        f"result is wanted. Delta: {lines[0] if lines else ''}"
    )


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def run_job(
    description: str,
    job: Callable[..., Any],
    forced_overrides: list[str] | None = None,
    argv: list[str] | None = None,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Any:
    """Parse `--config/--set/--run-id` (+ `extra_args`), build the session and call
    `job(spark, cfg, run_id=..., **extras)`.

    Configuration, input-schema and setup problems, refused writes and Delta commit conflicts print
    one clear line and exit with status 2.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="conf/local.yaml", help="YAML config (default: conf/local.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--run-id", default=None, help="lineage run id (default: generated)")
    if extra_args:
        extra_args(parser)
    args = parser.parse_args(argv)
    extras = {k: v for k, v in vars(args).items() if k not in ("config", "set", "run_id")}
    setup_logging()
    # a session this job creates is stopped when it ends: under spark-submit on a standalone or YARN
    # cluster the driver JVM otherwise outlives the Python app (the cluster client's threads keep it
    # up); a session that already existed (Databricks, a notebook, tests) is left running
    owned = SparkSession.getActiveSession() is None
    spark = None
    try:
        cfg: AppConfig = load_config(args.config, [*args.set, *(forced_overrides or [])])
        spark = get_spark(cfg)
        return job(spark, cfg, run_id=args.run_id, **extras)
    except _USER_ERRORS as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        raise SystemExit(2) from None
    except _CONCURRENT_WRITES as exc:
        log.error("%s", _concurrent_write_message(exc))
        raise SystemExit(2) from None
    finally:
        if owned and spark is not None:
            spark.stop()
