"""Shared entry-point plumbing for `jobs/*.py`: args → config → SparkSession → one function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from cdml_spark.config import AppConfig, ConfigError, load_config
from cdml_spark.events import InputSchemaError
from cdml_spark.spark import SetupError, get_spark
from cdml_spark.tables import RefusedWrite
from cdml_spark.train_inputs import StaleTriplets

log = logging.getLogger("cdml_spark")

USER_ERRORS = (ConfigError, InputSchemaError, SetupError, FileNotFoundError, StaleTriplets, RefusedWrite)


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

    Configuration, input-schema and setup problems print one clear line and exit with status 2.
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
    try:
        cfg: AppConfig = load_config(args.config, [*args.set, *(forced_overrides or [])])
        spark = get_spark(cfg)
        return job(spark, cfg, run_id=args.run_id, **extras)
    except USER_ERRORS as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        raise SystemExit(2) from None
