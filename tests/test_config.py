"""Config loading: both shipped configs validate; errors name the key."""

from __future__ import annotations

import pytest

from cdml_spark.config import ConfigError, load_config
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["local.yaml", "databricks.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "conf" / name)
    assert cfg.graph.max_history >= 2


def test_override_sets_nested_key():
    cfg = load_config(ROOT / "conf/local.yaml", ["graph.min_users=5", "events.synthetic.seed=3"])
    assert (cfg.graph.min_users, cfg.events.synthetic.seed) == (5, 3)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'graph.min_user'"):
        load_config(ROOT / "conf/local.yaml", ["graph.min_user=5"])


def test_missing_key_is_named(tmp_path):
    text = (ROOT / "conf/local.yaml").read_text().replace("  min_users: 2\n", "")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match="missing config key 'graph.min_users'"):
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
