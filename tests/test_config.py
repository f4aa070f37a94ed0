"""Config loading: both shipped configs validate and hold no default; errors name the key."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from cdml_spark.config import AppConfig, load_config
from cdml_spark.errors import ConfigError
from cdml_spark.evaluation.protocols import workspace_config
from cdml_spark.sql_queries import render
from cdml_spark.tables import VIDEO_METADATA, Lineage, TableStore
from tests.conftest import ROOT, make_config


@pytest.mark.parametrize("name", ["local.yaml", "databricks.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "conf" / name)
    assert cfg.graph.max_history >= 2


def restated_defaults(model: type[BaseModel], data: dict, value: BaseModel, prefix: str = "") -> list[str]:
    """Dotted keys of `data` (a config section as written) whose value equals the field's default."""
    found = []
    for key, raw in data.items():
        field, current = model.model_fields[key], getattr(value, key)
        if isinstance(current, BaseModel) and isinstance(raw, dict):
            found += restated_defaults(type(current), raw, current, f"{prefix}{key}.")
        elif not field.is_required() and current == field.get_default(call_default_factory=True):
            found.append(prefix + key)
    return found


@pytest.mark.parametrize("name", ["local.yaml", "databricks.yaml"])
def test_shipped_configs_restate_no_default(name):
    """Defaults live in cdml_spark/config.py only; a shipped config sets what its environment needs."""
    path = ROOT / "conf" / name
    assert restated_defaults(AppConfig, yaml.safe_load(path.read_text()), load_config(path)) == []
    assert restated_defaults(AppConfig, {"graph": {"min_users": 2}}, load_config(path)) == ["graph.min_users"]


def test_override_sets_nested_key():
    cfg = load_config(ROOT / "conf/local.yaml", ["graph.min_users=5", "events.synthetic.seed=3"])
    assert (cfg.graph.min_users, cfg.events.synthetic.seed) == (5, 3)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'graph.min_user'"):
        load_config(ROOT / "conf/local.yaml", ["graph.min_user=5"])


def test_missing_key_is_named(tmp_path):
    text = (ROOT / "conf/local.yaml").read_text().replace("  shuffle_partitions: 8\n", "")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match="missing config key 'spark.shuffle_partitions'"):
        load_config(tmp_path / "c.yaml")


def test_bad_value_and_bad_override_are_named():
    with pytest.raises(ConfigError, match="config key 'graph.max_neighbors'"):
        load_config(ROOT / "conf/local.yaml", ["graph.max_neighbors=0"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(ROOT / "conf/local.yaml", ["graph.max_neighbors"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ROOT / "conf/nope.yaml")


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("CDML_CACHE", "/somewhere/cache")
    assert load_config(ROOT / "conf/local.yaml").storage.cache_dir == "/somewhere/cache"
    monkeypatch.delenv("CDML_CACHE")
    assert load_config(ROOT / "conf/local.yaml").storage.cache_dir.endswith(".cache/cdml-spark")


def test_zero_margin_with_semi_hard_mining_is_rejected():
    with pytest.raises(ConfigError, match="training.margin = 0 with training.miner = semi_hard"):
        load_config(ROOT / "conf/local.yaml", ["training.margin=0", "training.miner=semi_hard"])
    assert (
        load_config(ROOT / "conf/local.yaml", ["training.margin=0", "training.miner=none"]).training.margin
        == 0
    )


@pytest.mark.parametrize("name", ["cdml-dev", "cdml; DROP TABLE x", "a.b.c", "1db", "db.", "`db`", ""])
def test_bad_database_name_is_named(name):
    with pytest.raises(ConfigError, match="config key 'storage.database'"):
        load_config(ROOT / "conf/local.yaml", [f"storage.database={name!r}"])


@pytest.mark.parametrize("name", ["cdml", "main.cdml", "_x.Y_2"])
def test_plain_database_names_are_accepted(name):
    assert load_config(ROOT / "conf/local.yaml", [f"storage.database={name}"]).storage.database == name


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("events.columns.user_id='us`er'", "events.columns.user_id"),
        ('events.columns.watch_seconds="secs\\n"', "events.columns.watch_seconds"),
        ("features.columns={video_id: 'id`x'}", "features.columns.video_id"),
    ],
)
def test_unsafe_source_column_is_named(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'.*backtick or control characters"):
        load_config(ROOT / "conf/local.yaml", [override])


def test_odd_source_column_names_are_accepted():
    cfg = load_config(
        ROOT / "conf/local.yaml",
        ["events.columns.user_id='viewer id (raw)'", "features.columns={video_id: 'video.id'}"],
    )
    assert (cfg.events.columns.user_id, cfg.features.columns) == ("viewer id (raw)", {"video_id": "video.id"})


META = "video_id string, title string, genres array<string>"


def test_tables_root_with_a_quote(spark, tmp_path):
    cfg = make_config(tmp_path / "it's_tables")
    df = spark.createDataFrame([("v1", "Schindler's List (1993)", ["Drama"])], META)
    TableStore(spark, cfg.storage).write(VIDEO_METADATA, df, Lineage.new("t", {}))
    store = TableStore(spark, cfg.storage)  # finds the table already registered
    assert [(r.video_id, r.title) for r in store.read(VIDEO_METADATA).collect()] == [
        ("v1", "Schindler's List (1993)")
    ]
    other = make_config(tmp_path / "it's_tables").storage  # another database: registers the folder
    TableStore(spark, other)
    for db in (cfg.storage.database, other.database):
        assert [r.title for r in spark.table(f"{db}.video_metadata").collect()] == ["Schindler's List (1993)"]
        location = spark.sql(f"DESCRIBE DETAIL {db}.video_metadata").first()["location"]
        assert location.endswith("/it's_tables/video_metadata")
    rendered = render(
        "SELECT title FROM ${db}.video_metadata WHERE title = '${t}'",
        {"db": other.database, "t": "Schindler's List (1993)"},
    )
    assert spark.sql(rendered).count() == 1  # the sql/ files' quoting runs on Spark


def test_related_keys_are_checked():
    cfg = load_config(ROOT / "conf/local.yaml", ["related.exclude_table=main.shop.unavailable"])
    assert cfg.related.exclude_table == "main.shop.unavailable" and cfg.related.support_half_weight > 0
    with pytest.raises(ConfigError, match="config key 'related.exclude_table'"):
        load_config(ROOT / "conf/local.yaml", ["related.exclude_table='x; DROP TABLE y'"])
    with pytest.raises(ConfigError, match="config key 'related.support_half_weight'"):
        load_config(ROOT / "conf/local.yaml", ["related.support_half_weight=0"])


def test_evaluation_workspaces_read_the_whole_dataset_whatever_the_daily_schedule_says():
    daily = load_config(ROOT / "conf" / "databricks.yaml")
    assert daily.events.mode == "append" and daily.graph.window_days
    for protocol in ("time_split", "user_holdout"):
        ecfg = workspace_config(daily, "movielens-1m", protocol)
        assert (ecfg.events.mode, ecfg.events.dates) == ("replace", None)
        assert (ecfg.graph.mode, ecfg.graph.window_days, ecfg.graph.as_of) == ("full", None, None)
