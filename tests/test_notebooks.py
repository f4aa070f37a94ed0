"""The Databricks-format notebooks execute locally against a pipeline's tables."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_runs(spark, pipeline, tmp_path, monkeypatch, capsys, notebook):
    assert notebook.read_text().startswith("# Databricks notebook source")
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump(pipeline.model_dump(mode="json")))
    monkeypatch.setenv("CDML_CONFIG", str(conf))
    runpy.run_path(str(notebook), run_name="__main__")
    assert "video_id" in capsys.readouterr().out  # its tables were shown
