"""One local SparkSession (local[2], 2 shuffle partitions) for the whole test run."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cdml_spark.config import AppConfig, load_config
from cdml_spark.spark import get_spark

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CONF = ROOT / "conf" / "local.yaml"


def make_config(tables_root: Path, *overrides: str) -> AppConfig:
    """conf/local.yaml pointed at a private tables folder and database, plus overrides."""
    return load_config(
        LOCAL_CONF,
        [
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "spark.driver_memory=2g",
            f"storage.tables_root={tables_root}",
            f"storage.database=t_{uuid.uuid4().hex[:8]}",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    cfg = make_config(tmp_path_factory.mktemp("warmup"))
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def cfg_factory(tmp_path):
    def factory(*overrides: str) -> AppConfig:
        return make_config(tmp_path / "tables", *overrides)

    return factory
