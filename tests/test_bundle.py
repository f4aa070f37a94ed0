"""The Databricks Asset Bundle, validated offline: structure, files, task DAG, configs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from databricks.bundles.jobs import Job

from cdml_spark.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def bundle_jobs() -> dict:
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text())
    assert bundle["bundle"]["name"] == "cdml-spark"
    jobs = {}
    for pattern in bundle["include"]:
        files = sorted(ROOT.glob(pattern))
        assert files, pattern
        for f in files:
            for name, job in yaml.safe_load(f.read_text())["resources"]["jobs"].items():
                jobs[name] = (f, job)
    return jobs


def test_pipeline_job_is_a_valid_dag_of_existing_scripts():
    ((source, job),) = bundle_jobs().values()
    parsed = Job.from_dict(job)  # the bundle schema (databricks-bundles): unknown fields raise
    assert [t.task_key for t in parsed.tasks] == [t["task_key"] for t in job["tasks"]]
    with pytest.raises(ValueError, match="python_fil"):
        Job.from_dict({**job, "tasks": [{"task_key": "x", "spark_python_task": {"python_fil": "a.py"}}]})
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert len(tasks) == len(job["tasks"])  # unique keys
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    for cluster in clusters.values():
        assert cluster["spark_version"].startswith("15.4.x-") and "-ml-" in cluster["spark_version"]
    assert job["schedule"]["quartz_cron_expression"] and job["email_notifications"]["on_failure"]
    for key, task in tasks.items():
        assert task["job_cluster_key"] in clusters, key
        script = (source.parent / task["spark_python_task"]["python_file"]).resolve()
        assert script.is_file() and script.parent == ROOT / "jobs", key
        params = task["spark_python_task"]["parameters"]
        assert params[params.index("--config") + 1].endswith("/conf/databricks.yaml")
        for dep in task.get("depends_on", []):
            assert dep["task_key"] in tasks, (key, dep)

    order, done = [], set()  # topological sort: fails on a cycle
    while len(done) < len(tasks):
        ready = [
            k
            for k, t in tasks.items()
            if k not in done and all(d["task_key"] in done for d in t.get("depends_on", []))
        ]
        assert ready, f"cycle among {set(tasks) - done}"
        order += sorted(ready)
        done |= set(ready)
    assert (
        order.index("ingest_events")
        < order.index("build_graph")
        < order.index("make_triplets")
        < order.index("train")
    )
    assert order.index("train") < order.index("embed_catalog") < order.index("build_neighbors")
    assert order[-2:] == ["evaluate", "maintain_tables"]
    assert tasks["maintain_tables"]["run_if"] == "ALL_DONE"  # runs even when evaluate fails
    assert clusters[tasks["train"]["job_cluster_key"]]["spark_version"].startswith("15.4.x-gpu-ml")


def test_databricks_config_targets_unity_catalog():
    cfg = load_config(ROOT / "conf" / "databricks.yaml")
    assert cfg.storage.tables_root is None and cfg.storage.database.count(".") == 1
    assert cfg.training.model_dir.startswith("/Volumes/") and not cfg.training.local_mode


def test_wheel_leaves_the_runtime_stack_alone():
    """The bundle installs the project wheel on DBR 15.4 ML: its unconditional requirements (the wheel's
    Requires-Dist without an extra) must not name a package the runtime ships, or pip would re-resolve
    pyspark/torch over the runtime's own."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~ ;\[]", r)[0].lower() for r in project["dependencies"]}
    runtime = {"pyspark", "torch", "petastorm", "pyarrow", "numpy", "pandas", "delta-spark", "mlflow-skinny"}
    assert names and not names & runtime
    local = {re.split(r"[<>=!~ ;\[]", r)[0].lower() for r in project["optional-dependencies"]["local"]}
    assert runtime <= local  # elsewhere, `pip install .[local]` brings the stack
