"""The Databricks-format notebooks execute locally against a pipeline's tables (04, the evaluation
notebook, runs in tests/test_evaluation.py after the evaluation job)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = [n for n in sorted(NOTEBOOK_DIR.glob("*.py")) if n.name != "04_evaluation.py"]


def run_notebook(notebook: Path, cfg, tmp_path: Path, monkeypatch) -> None:
    assert notebook.read_text().startswith("# Databricks notebook source")
    conf = tmp_path / f"{notebook.stem}.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    monkeypatch.setenv("CDML_CONFIG", str(conf))
    runpy.run_path(str(notebook), run_name="__main__")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_runs(spark, served, tmp_path, monkeypatch, capsys, notebook):
    cfg = served[0]
    cfg = cfg.model_copy(
        update={"evaluation": cfg.evaluation.model_copy(update={"report_dir": str(tmp_path / "report")})}
    )
    run_notebook(notebook, cfg, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    if notebook.name.startswith("03_"):
        assert "206 videos" in out and "topic 0" in out
        assert (tmp_path / "report" / "embeddings_by_genre.png").stat().st_size > 10_000
    else:
        assert "video_id" in out  # its tables were shown
