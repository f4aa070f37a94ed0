"""Cluster mode for real: a Spark standalone cluster on localhost runs the pipeline from the wheel.

    .venv/bin/python benchmarks/standalone_cluster.py [--work /tmp/cdml-cluster] [--keep]
        [--stages ingest_events build_graph ...] [--set KEY=VALUE ...]

`local[*]` shares one JVM, one Python and the clone's import path between driver and tasks; a
cluster does not. This script:
1. builds the project's wheel and installs it (no dependencies) into a fresh venv layered on this
   clone's library venv, as a Databricks cluster library is installed beside the runtime's packages;
   that venv's Python runs the driver and the executors, so `cdml_spark` comes from the wheel, never
   from the clone (checked);
2. starts a master and 2 workers of 1 core each from the venv's Spark (`spark-class`);
3. submits `jobs/pipeline.py` with `spark-submit --master spark://...` from a directory outside the
   clone, on MovieLens-100K, stages ingest → graph → features → triplets → train (TorchDistributor in
   **barrier mode**, one process per worker) → embed → neighbours;
4. reads every table back (the `deltalake` reader, no Spark) and checks it is not empty and
   consistent, and that a training process ran on each worker (its executor log);
5. stops the cluster. Exits non-zero on any failure, printing the failing step.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pyspark

from cdml_spark.config import load_config
from cdml_spark.runtime import delta_jars, jars_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARK_HOME = os.path.dirname(pyspark.__file__)
MASTER_UI = 8090
STAGES = [
    "ingest_events",
    "build_graph",
    "ingest_features",
    "make_triplets",
    "train",
    "embed_catalog",
    "build_neighbors",
]
OVERRIDES = [
    "events.source=movielens-100k",
    "training.local_mode=false",  # barrier tasks on the executors, not processes on the driver
    "training.num_processes=2",
    "training.epochs=2",
    "spark.shuffle_partitions=4",
]


def step(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    subprocess.run(cmd, check=True, **kwargs)


def build_venv(work: str) -> str:
    """A venv on this clone's library layers with only the project's wheel added; its python."""
    dist, src = os.path.join(work, "dist"), os.path.join(work, "src")
    # databricks.yml's build command, on a copy of the package: setuptools leaves build/ in its source
    shutil.copytree(os.path.join(REPO, "cdml_spark"), os.path.join(src, "cdml_spark"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), src)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", dist, src])
    (wheel,) = glob.glob(os.path.join(dist, "cdml_spark-*.whl"))
    venv = os.path.join(work, "venv")
    run([sys._base_executable, "-m", "venv", "--without-pip", venv])
    site = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]
    # the library venv this clone's .venv is layered on (scripts/setup.sh records it), not the clone
    with open(os.path.join(sys.prefix, "layered-on")) as handle:
        library = glob.glob(os.path.join(handle.read().strip(), "lib", "python3*", "site-packages"))[0]
    with open(os.path.join(site, "00-library.pth"), "w") as handle:
        handle.write(f"import site; site.addsitedir({library!r})\n")
    python = os.path.join(venv, "bin", "python")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel])
    where = subprocess.check_output(
        [python, "-c", "import cdml_spark, pyspark, torch; print(cdml_spark.__file__)"], cwd=work, text=True
    ).strip()
    if not where.startswith(venv):
        raise SystemExit(f"[cluster] cdml_spark imported from {where}, not from the wheel in {venv}")
    step(f"wheel {os.path.basename(wheel)} installed; cdml_spark imports from {where}")
    return python


def spark_conf_dir(work: str, python: str, jars: list[str]) -> str:
    conf = os.path.join(work, "conf")
    os.makedirs(conf, exist_ok=True)
    shutil.copy(os.path.join(REPO, ".venv", "spark-conf", "log4j2.properties"), conf)
    settings = {
        "spark.jars": ",".join(jars),
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        "spark.driver.memory": "2g",
        "spark.executor.memory": "2g",
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.ui.showConsoleProgress": "false",
    }
    with open(os.path.join(conf, "spark-defaults.conf"), "w") as handle:
        handle.writelines(f"{k} {v}\n" for k, v in settings.items())
    return conf


def start_cluster(work: str, env: dict[str, str]) -> list[subprocess.Popen]:
    spark_class = os.path.join(SPARK_HOME, "bin", "spark-class")
    logs = os.path.join(work, "daemons")
    os.makedirs(logs, exist_ok=True)

    def daemon(name: str, args: list[str]) -> subprocess.Popen:
        out = open(os.path.join(logs, f"{name}.log"), "w")  # noqa: SIM115 (lives as long as the process)
        return subprocess.Popen([spark_class, *args], env=env, stdout=out, stderr=subprocess.STDOUT)

    procs = [
        daemon(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "7077"]
            + ["--webui-port", str(MASTER_UI)],
        )
    ]
    time.sleep(5)
    for i in (1, 2):
        workdir = os.path.join(work, f"worker-{i}")
        procs.append(
            daemon(
                f"worker-{i}",
                ["org.apache.spark.deploy.worker.Worker", "--cores", "1", "--memory", "3g"]
                + ["--work-dir", workdir, "--webui-port", str(MASTER_UI + i), "spark://127.0.0.1:7077"],
            )
        )
    for _ in range(60):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{MASTER_UI}/json", timeout=2) as resp:
                state = json.load(resp)
            alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
            if len(alive) == 2:
                step(f"master spark://127.0.0.1:7077 with 2 workers ({', '.join(w['id'] for w in alive)})")
                return procs
        except OSError:
            pass
        time.sleep(2)
    stop(procs)
    raise SystemExit(f"[cluster] the cluster did not come up with 2 workers: see {logs}")


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_tables(tables_root: str) -> None:
    """Every table the stages wrote, read back without Spark: not empty, and consistent."""
    from deltalake import DeltaTable

    names = (
        "watch_events",
        "cowatch_edges",
        "video_stats",
        "video_features",
        "triplets",
        "video_embeddings",
        "video_neighbors",
    )
    frames = {name: DeltaTable(os.path.join(tables_root, name)).to_pandas() for name in names}
    counts = {name: len(frame) for name, frame in frames.items()}
    for name, rows in counts.items():
        if rows == 0:
            raise SystemExit(f"[cluster] table {name} is empty")
    if set(frames["video_embeddings"]["video_id"]) != set(frames["video_features"]["video_id"]):
        raise SystemExit("[cluster] video_embeddings does not cover exactly the video_features catalog")
    step("tables read back: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))


def check_barrier_training(work: str) -> None:
    """A training process ran on each worker: both workers' executor logs hold rank output."""
    ranks = {}
    for i in (1, 2):
        text = ""
        for path in glob.glob(os.path.join(work, f"worker-{i}", "app-*", "*", "std*")):
            with open(path, errors="replace") as handle:
                text += handle.read()
        ranks[i] = sorted(r for r in (0, 1) if f"rank {r}/2 on" in text)
    if sorted(ranks[1] + ranks[2]) != [0, 1] or not ranks[1]:
        raise SystemExit(f"[cluster] training ranks per worker {ranks}: not one process on each worker")
    step(f"barrier training ranks per worker: {ranks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--work", default="/tmp/cdml-cluster")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, tables)")
    parser.add_argument("--stages", nargs="+", default=STAGES)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds the pipeline may take")
    args = parser.parse_args()
    started = time.time()
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    python = build_venv(work)
    base = load_config(os.path.join(REPO, "conf", "local.yaml"))
    conf = spark_conf_dir(work, python, delta_jars(jars_dir(base.storage.cache_dir)))
    env = {**os.environ, "SPARK_HOME": SPARK_HOME, "SPARK_CONF_DIR": conf, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYTHONPATH", None)
    procs = start_cluster(work, env)
    try:
        wh = os.path.join(work, "warehouse")
        overrides = [
            *OVERRIDES,
            f"storage.tables_root={wh}/tables",
            f"training.model_dir={wh}/models/cdml",
            f"training.checkpoint_dir={wh}/checkpoints/cdml",
            f"training.mlflow.tracking_uri=file:{wh}/mlruns",
            *args.set,
        ]
        submit = [
            os.path.join(SPARK_HOME, "bin", "spark-submit"),
            "--master",
            "spark://127.0.0.1:7077",
            "--total-executor-cores",
            "2",
            "--executor-cores",
            "1",
            os.path.join(REPO, "jobs", "pipeline.py"),
            "--config",
            os.path.join(REPO, "conf", "local.yaml"),
            "--stages",
            *args.stages,
        ]
        for item in overrides:
            submit += ["--set", item]
        step("spark-submit jobs/pipeline.py --stages " + " ".join(args.stages))
        submitted = time.time()
        try:
            run(submit, cwd=work, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"[cluster] spark-submit still running after {args.timeout} s: stopped"
            ) from None
        step(f"pipeline finished in {time.time() - submitted:.0f} s")
        check_tables(f"{wh}/tables")
        if "train" in args.stages:
            check_barrier_training(work)
    finally:
        stop(procs)
    step(f"passed in {time.time() - started:.0f} s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
