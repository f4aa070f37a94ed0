"""The Databricks Asset Bundle, validated offline: structure, files, tasks = pipeline stages, targets,
configs."""

from __future__ import annotations

import re
import tomllib
from datetime import date
from pathlib import Path

import pytest
import yaml
from databricks.bundles.jobs import Job
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from cdml_spark.config import AppConfig, load_config
from cdml_spark.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = yaml.safe_load((ROOT / "databricks.yml").read_text())
ANN = ["--set", "neighbors.mode=ann"]  # build_neighbors' one extra parameter


def bundle_jobs() -> dict:
    assert BUNDLE["bundle"]["name"] == "cdml-spark"
    jobs = {}
    for pattern in BUNDLE["include"]:
        files = sorted(ROOT.glob(pattern))
        assert files, pattern
        for f in files:
            for name, job in yaml.safe_load(f.read_text())["resources"]["jobs"].items():
                jobs[name] = (f, job)
    return jobs


def test_pipeline_job_is_valid_and_runs_existing_scripts():
    ((source, job),) = bundle_jobs().values()
    parsed = Job.from_dict(job)  # the bundle schema (databricks-bundles): unknown fields raise
    assert [t.task_key for t in parsed.tasks] == [t["task_key"] for t in job["tasks"]]
    with pytest.raises(ValueError, match="python_fil"):
        Job.from_dict({**job, "tasks": [{"task_key": "x", "spark_python_task": {"python_fil": "a.py"}}]})
    assert job["name"].startswith("${bundle.target}-")
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    assert job["schedule"]["quartz_cron_expression"] and job["email_notifications"]["on_failure"]
    for task in job["tasks"]:
        key = task["task_key"]
        assert task["job_cluster_key"] in clusters and task["libraries"] == [{"whl": "../dist/*.whl"}], key
        script = (source.parent / task["spark_python_task"]["python_file"]).resolve()
        assert script == ROOT / "jobs" / f"{key}.py" and script.is_file(), key
    train = next(t for t in job["tasks"] if t["task_key"] == "train")
    assert train["job_cluster_key"] == "gpu"


# the runtime variable's two lines: (runtime, scala) -> the spark_version keys Databricks lists
RUNTIME_KEYS = {
    ("15.4.x", "2.12"): {"cpu": "15.4.x-cpu-ml-scala2.12", "gpu": "15.4.x-gpu-ml-scala2.12"},
    ("17.3.x", "2.13"): {"cpu": "17.3.x-cpu-ml-scala2.13", "gpu": "17.3.x-gpu-ml-scala2.13"},
}


@pytest.mark.parametrize("runtime, scala", RUNTIME_KEYS)
def test_runtime_variable_picks_every_cluster_runtime(runtime, scala):
    """Every job cluster's spark_version comes from the `runtime` and `scala` variables; the defaults
    are the card's 15.4 LTS ML, and `--var runtime=17.3.x --var scala=2.13` gives 17.3 LTS ML."""
    ((_, job),) = bundle_jobs().values()
    variables = {"runtime": runtime, "scala": scala}
    versions = {
        c["job_cluster_key"]: re.sub(
            r"\$\{var\.(\w+)\}", lambda m: variables[m.group(1)], c["new_cluster"]["spark_version"]
        )
        for c in job["job_clusters"]
    }
    assert versions == RUNTIME_KEYS[runtime, scala]
    defaults = target_variables("prod")
    assert (defaults["runtime"], defaults["scala"]) == ("15.4.x", "2.12")


def test_tasks_are_the_pipeline_stages():
    """Task keys, order and depends_on equal `cdml_spark.pipeline.STAGES`; a stage depends only on
    earlier ones, so the job is a DAG and `jobs/pipeline.py`'s order is one of its orders."""
    ((_, job),) = bundle_jobs().values()
    tasks = job["tasks"]
    assert [t["task_key"] for t in tasks] == [s.name for s in STAGES]
    for i, (task, stage) in enumerate(zip(tasks, STAGES, strict=True)):
        assert tuple(d["task_key"] for d in task.get("depends_on", [])) == stage.depends_on, stage.name
        assert set(stage.depends_on) <= {s.name for s in STAGES[:i]}, stage.name
    assert [t["task_key"] for t in tasks if "run_if" in t] == ["maintain_tables"]
    assert tasks[-1]["run_if"] == "ALL_DONE"  # tables are maintained even when a task fails


def test_tasks_share_one_parameter_list():
    ((_, job),) = bundle_jobs().values()
    params = job["tasks"][0]["spark_python_task"]["parameters"]
    assert params[:2] == ["--config", "${workspace.file_path}/conf/databricks.yaml"]
    for task in job["tasks"]:
        extra = ANN if task["task_key"] == "build_neighbors" else []
        assert task["spark_python_task"]["parameters"] == params + extra, task["task_key"]


def target_variables(target: str) -> dict[str, str]:
    defaults = {k: v.get("default") for k, v in BUNDLE["variables"].items()}
    values = {**defaults, **BUNDLE["targets"][target].get("variables", {})}
    assert all(v is not None for v in values.values()), (target, values)
    return {k: str(v) for k, v in values.items()}


RUN_DATE = "2026-11-29"  # what Databricks puts for {{job.start_time.iso_date}} in a run that day


def job_parameters(**given: str) -> dict[str, str]:
    """The job's parameters in a run started on RUN_DATE: their defaults, or `given` values."""
    ((_, job),) = bundle_jobs().values()
    defaults = {
        p["name"]: p["default"].replace("{{job.start_time.iso_date}}", RUN_DATE) for p in job["parameters"]
    }
    return {**defaults, **given}


def target_config(target: str, **parameters: str) -> AppConfig:
    """What a task of `target` runs with: conf/databricks.yaml plus the task's `--set` overrides, in a
    run started on RUN_DATE with the job parameters `parameters` (else their defaults)."""
    ((_, job),) = bundle_jobs().values()
    params = job["tasks"][0]["spark_python_task"]["parameters"]
    assert set(params[2::2]) == {"--set"}
    variables, values = target_variables(target), job_parameters(**parameters)
    overrides = [re.sub(r"\$\{var\.(\w+)\}", lambda m: variables[m.group(1)], p) for p in params[3::2]]
    overrides = [
        re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: values[m.group(1)], p) for p in overrides
    ]
    return load_config(ROOT / "conf" / "databricks.yaml", overrides)


def strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_dev_target_never_points_at_prod():
    assert (
        BUNDLE["targets"]["dev"]["mode"] == "development"
        and BUNDLE["targets"]["prod"]["mode"] == "production"
    )
    dev, prod = target_config("dev"), target_config("prod")
    # prod runs the shipped config as is, on the run's date
    assert prod == load_config(ROOT / "conf" / "databricks.yaml", [f"events.run_date={RUN_DATE}"])
    assert dev.storage.database != prod.storage.database
    dev_root, prod_root = (target_variables(t)["volume_root"] for t in ("dev", "prod"))
    assert not f"{dev_root}/".startswith(f"{prod_root}/") and not f"{prod_root}/".startswith(f"{dev_root}/")
    for cfg, root in ((dev, dev_root), (prod, prod_root)):
        volumes = [s for s in strings(cfg.model_dump()) if s.startswith("/Volumes/")]
        assert volumes and all(v.startswith(f"{root}/") for v in volumes), volumes


def test_scheduled_run_ingests_the_day_before_it_started_and_a_backfill_its_range():
    scheduled = target_config("prod")
    assert scheduled.events.mode == "append" and scheduled.graph.mode == "incremental"
    assert scheduled.events.date_range() == (date(2026, 11, 28), date(2026, 11, 28))
    backfill = target_config("prod", dates="2026-01-01..2026-01-31")
    assert backfill.events.date_range() == (date(2026, 1, 1), date(2026, 1, 31))


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


@pytest.mark.parametrize(
    "lock, python", [("requirements.lock", "3.11"), ("requirements-spark4.lock", "3.12")]
)
def test_wheel_installs_on_both_runtimes(lock, python):
    """The wheel's requirements accept each stack's pinned versions and its runtime's Python (15.4 LTS
    ML: 3.11; 17.3 LTS ML: 3.12), so installing it on either runtime changes none of its packages."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert Version(python) in SpecifierSet(project["requires-python"])
    pins = {}
    for line in (ROOT / lock).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, pinned = line.split("==")
            pins[canonicalize_name(name)] = Version(pinned)
    for requirement in map(Requirement, project["dependencies"]):
        name = canonicalize_name(requirement.name)
        assert name in pins and pins[name] in requirement.specifier, (lock, str(requirement))
