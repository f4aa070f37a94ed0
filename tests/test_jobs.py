"""The job entry points as users run them: venv spark-submit and plain python, in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def run(args: list[str], tables: Path, *overrides: str) -> subprocess.CompletedProcess:
    sets = [
        f"storage.tables_root={tables}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        *overrides,
    ]
    cmd = [*args, "--config", "conf/local.yaml", *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # as `source .venv/bin/activate`
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_spark_submit_ingest_then_python_build_graph(tmp_path):
    deltalake = pytest.importorskip("deltalake")
    ingest = run(
        [str(BIN / "spark-submit"), "jobs/ingest_events.py"], tmp_path, "events.source=movielens-100k"
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "written 100,000" in ingest.stdout

    graph = run([sys.executable, "jobs/build_graph.py"], tmp_path, "graph.cowatch_window_hours=1")
    assert graph.returncode == 0, graph.stdout + graph.stderr
    assert "edge rows" in graph.stdout
    edges = deltalake.DeltaTable(str(tmp_path / "cowatch_edges")).to_pandas()
    assert len(edges) > 1000 and edges["rank"].max() <= 50


def test_config_error_is_one_clear_line(tmp_path):
    result = run([sys.executable, "jobs/build_graph.py"], tmp_path, "graph.max_neigbors=5")
    assert result.returncode == 2
    assert "unknown config key 'graph.max_neigbors'" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_input_column_fails_before_writing(tmp_path):
    src = tmp_path / "log.csv"
    src.write_text("user,video_id,event_ts\na,x,2026-02-01 10:00:00\n")
    tables = tmp_path / "tables"
    result = run(
        [sys.executable, "jobs/ingest_events.py"],
        tables,
        "events.source=path",
        f"events.path={src}",
        "events.format=csv",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "input column 'user_id' (events.columns.user_id) not found" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tables / "watch_events").exists()
