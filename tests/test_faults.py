"""Faults with real processes on tiny synthetic data (no mocks): `kill -9` of each table-writing job in
the middle of its Delta write, two writers of one table at once, and `kill -9` of distributed training
mid-epoch followed by `--resume`.

One uninterrupted pipeline run (module fixture) is the reference. A job is killed mid-write by running
it with `spark.sql.files.maxRecordsPerFile=1` (a real Spark setting: one data file per row, so the
write lasts seconds) and killing its process group as soon as data files that no `_delta_log` commit
references have appeared. The two writers are held inside their write by `tables.fault_hold`
(CDML_FAULT_HOLD_WRITE) until both have written files, then released together. `kill -9` goes to the
job's process group (spark-submit started with start_new_session=True: JVM, Python driver, torchrun),
then to the groups of descendants that left it (PySpark's daemon and torchrun's workers make their own).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from deltalake import DeltaTable

from cdml_spark.tables import FAULT_HOLD_ENV
from cdml_spark.training.worker import load_checkpoint
from tests.conftest import ROOT, SMALL

BIN = Path(sys.executable).parent
LINEAGE = ["run_id", "params_hash", "built_at"]
WRITES = {  # job -> the table killed mid-write
    "ingest_events": "watch_events",
    "build_graph": "cowatch_edges",
    "make_triplets": "triplets",
    "embed_catalog": "video_embeddings",
    "build_neighbors": "video_neighbors",
}
TINY = [
    "spark.shuffle_partitions=2",
    *(s for s in SMALL if not s.startswith("triplets.cold_fraction")),
    "training.hidden=[16]",
    "training.embedding_dim=8",
    "training.batch_size=32",
    "training.epochs=3",
    "training.patience=10",  # no early stopping: every run trains all epochs
    "training.mlflow.enabled=false",
    "neighbors.k=5",
    # every rerun here reads unchanged inputs, which the incremental modes answer without a write:
    # the write under test is the full replacement
    "embedding.incremental=false",
    "neighbors.incremental=false",
]
TIMEOUT = 900  # seconds for one job on a busy 2-core machine
# short-lived tiny jobs: about half the CPU of the defaults (C1 JIT only, serial GC, no UI, no codegen)
JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
LEAN = {"spark.ui.enabled": "false", "spark.sql.codegen.wholeStage": "false"}


@dataclass
class Warehouse:
    root: Path
    model_version: str

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def sets(self, tables: Path | None = None, models: Path | None = None) -> list[str]:
        """The reference run's overrides (another tables folder / model folder if given)."""
        models = models or self.root / "models"
        return [
            *TINY,
            f"storage.tables_root={tables or self.tables}",
            f"training.model_dir={models}",
            f"training.checkpoint_dir={models / 'checkpoints'}",
            f"embedding.model_version={self.model_version}",
        ]


def submit(
    script: str, sets: list[str], log: Path, *args: str, conf: dict | None = None, env: dict | None = None
) -> subprocess.Popen:
    """`spark-submit jobs/<script> --config conf/local.yaml --set ...` in its own process group."""
    confs = [x for k, v in {**LEAN, **(conf or {})}.items() for x in ("--conf", f"{k}={v}")]
    cmd = [str(BIN / "spark-submit"), "--driver-memory", "1g", "--driver-java-options", JVM, *confs]
    cmd.append(f"jobs/{script}")
    cmd += ["--config", "conf/local.yaml", *[x for s in sets for x in ("--set", s)], *args]
    environ = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    environ.pop("PYSPARK_GATEWAY_PORT", None)
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=TIMEOUT)
    return log.read_text()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text().splitlines()[-lines:])


def uncommitted(table: Path) -> list[Path]:
    """Data files in `table` that no commit in its `_delta_log` adds."""
    added = set()
    for commit in glob.glob(str(table / "_delta_log" / "*.json")):
        with open(commit) as handle:
            added |= {unquote(a["add"]["path"]) for a in map(json.loads, handle) if "add" in a}
    files = [os.path.relpath(f, table) for f in glob.glob(str(table / "**" / "*.parquet"), recursive=True)]
    return [table / f for f in files if f not in added and not f.startswith("_delta_log")]


def written(table: Path) -> int:
    """Uncommitted data files with content (a task's freshly opened file is still empty)."""
    return sum(1 for f in uncommitted(table) if f.exists() and f.stat().st_size > 0)


def wait_until(
    condition: Callable[[], bool], procs: list[subprocess.Popen], timeout: float = TIMEOUT
) -> bool:
    """Poll `condition` every 20 ms while all `procs` run; False if one ends or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if condition():
            return True
        time.sleep(0.02)
    return False


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
    except OSError:
        return None


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat:
            children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def kill_job(proc: subprocess.Popen) -> int:
    """`kill -9` of the job's process group (JVM, Python driver, Python workers, torchrun); then of
    the groups of descendants that left it (torchrun starts its workers in new sessions). Returns
    how many processes outlived the group kill."""
    tree = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(0.5)
    escaped = [pid for pid in tree if alive(pid)]
    for pid in escaped:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    return len(escaped)


def content(table: Path, version: int | None = None, lineage: bool = False) -> pd.DataFrame:
    """The table's rows at `version` (default: current), sorted; lineage columns only if asked."""
    df = DeltaTable(str(table), version=version).to_pandas()
    if not lineage:
        df = df.drop(columns=LINEAGE)
    df = df.apply(
        lambda c: c.map(lambda v: tuple(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
    )
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def version(table: Path) -> int:
    return DeltaTable(str(table)).version()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    """The uninterrupted reference run: every stage up to video_neighbors, one Spark application."""
    root = tmp_path_factory.mktemp("faults")
    house = Warehouse(root, "null")
    started = time.time()
    stages = ["ingest_events", "build_graph", "ingest_features", "make_triplets", "train"]
    stages += ["embed_catalog", "build_neighbors"]
    log = root / "reference.log"
    proc = submit("pipeline.py", house.sets(), log, "--stages", *stages)
    assert "stage" in finish(proc, log) and proc.returncode == 0, tail(log)
    house.model_version = (root / "models" / "LATEST").read_text().strip()
    print(f"reference pipeline run: {time.time() - started:.0f}s")
    return house


@dataclass
class Kill:
    before_version: int
    before: pd.DataFrame
    seconds: float = float("nan")
    files: int = 0  # closed uncommitted data files when the kill was sent
    returncode: int | None = None
    escaped: int = 0
    after_version: int = -1
    after: pd.DataFrame | None = None


def kill_when_writing(procs: dict[str, subprocess.Popen], tables: Path, kills: dict[str, Kill]) -> None:
    """`kill -9` each job once its table holds >= 2 closed data files that no commit references."""
    started, deadline = time.time(), time.time() + TIMEOUT
    pending = dict(procs)
    while pending and time.time() < deadline:
        for job, proc in list(pending.items()):
            files = written(tables / WRITES[job])
            if files >= 2 or proc.poll() is not None:
                escaped = kill_job(proc) if proc.poll() is None else 0
                kills[job].seconds, kills[job].files = time.time() - started, files
                kills[job].returncode, kills[job].escaped = proc.returncode, escaped
                del pending[job]
        time.sleep(0.02)


@pytest.fixture(scope="module")
def killed(warehouse) -> dict[str, Kill]:
    """The five writing jobs started at once, each killed in the middle of its table's write (one data
    file per row makes the write last seconds)."""
    tables = warehouse.tables
    kills = {job: Kill(version(tables / t), content(tables / t, lineage=True)) for job, t in WRITES.items()}
    one_file_per_row = {"spark.sql.files.maxRecordsPerFile": "1"}
    procs = {
        job: submit(f"{job}.py", warehouse.sets(), warehouse.root / f"kill-{job}.log", conf=one_file_per_row)
        for job in WRITES
    }
    try:
        kill_when_writing(procs, tables, kills)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                kill_job(proc)
    for job, kill in kills.items():
        kill.after_version = version(tables / WRITES[job])
        kill.after = content(tables / WRITES[job], lineage=True)
        print(
            f"{job}: killed {kill.seconds:.0f}s after start with {kill.files} closed uncommitted files in "
            f"{WRITES[job]} (v{kill.before_version} before, v{kill.after_version} after); "
            f"{kill.escaped} processes outlived the group kill"
        )
    return kills


@pytest.mark.parametrize("job", list(WRITES))
def test_kill_mid_write_leaves_previous_version(warehouse, killed, job):
    kill = killed[job]
    log = warehouse.root / f"kill-{job}.log"
    assert kill.returncode == -signal.SIGKILL, f"{job} was not killed mid-write:\n{tail(log)}"
    assert kill.files >= 2  # the write had begun: closed data files no commit references
    assert kill.after_version == kill.before_version
    pd.testing.assert_frame_equal(kill.after, kill.before)
    assert uncommitted(warehouse.tables / WRITES[job])  # the killed write's files are left, unreferenced


@pytest.fixture(scope="module")
def rerun(warehouse, killed) -> str:
    """The five killed jobs rerun to completion (one Spark application, pipeline order)."""
    started = time.time()
    log = warehouse.root / "rerun.log"
    proc = submit("pipeline.py", warehouse.sets(), log, "--stages", *WRITES)
    output = finish(proc, log)
    assert proc.returncode == 0, tail(log)
    print(f"rerun of {len(WRITES)} jobs: {time.time() - started:.0f}s")
    return output


@pytest.mark.parametrize("job", list(WRITES))
def test_rerun_after_kill_matches_uninterrupted_run(warehouse, killed, rerun, job):
    table = warehouse.tables / WRITES[job]
    reference = killed[job].before.drop(columns=LINEAGE)
    assert version(table) == killed[job].before_version + 1  # one commit, the kill added none
    pd.testing.assert_frame_equal(content(table), reference)


def test_two_writers_one_commits_the_other_fails_cleanly(warehouse, tmp_path):
    """Two build_neighbors jobs replace video_neighbors at once: both are held inside the write
    (`tables.fault_hold`) until both have written data files, then released together."""
    tables = tmp_path / "tables"
    shutil.copytree(warehouse.tables, tables)
    table = tables / "video_neighbors"
    start_version, reference = version(table), content(table)
    gate = tmp_path / "gate"
    env = {FAULT_HOLD_ENV: f"video_neighbors:{gate}"}
    logs = {w: tmp_path / f"{w}.log" for w in ("writer-a", "writer-b")}
    started = time.time()
    procs = {
        w: submit("build_neighbors.py", warehouse.sets(tables), logs[w], "--run-id", w, env=env) for w in logs
    }

    def both_mid_write() -> bool:  # each held writer has closed one data file (its first task's)
        held = all("holding the write" in log.read_text() for log in logs.values())
        return held and written(table) >= 2

    try:
        both_held = wait_until(both_mid_write, list(procs.values()))
        held_at = time.time() - started
        gate.touch()
        outputs = {w: finish(p, logs[w]) for w, p in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                kill_job(proc)
    codes = {w: p.returncode for w, p in procs.items()}
    assert both_held, f"writers not both held mid-write (does TableStore.write call _fault_hold?) {codes}"
    print(
        f"both writers mid-write {held_at:.0f}s after start; exit codes {codes}; {time.time() - started:.0f}s"
    )
    assert sorted(codes.values()) == [0, 2], codes
    winner = next(w for w, c in codes.items() if c == 0)
    loser = next(w for w, c in codes.items() if c == 2)
    errors = [line for line in outputs[loser].splitlines() if " ERROR " in line]
    print(f"{loser}: {errors}")
    assert len(errors) == 1 and "ConcurrentAppendException: another job committed" in errors[0]
    assert "Traceback" not in outputs[loser]
    assert "\tat " not in outputs[loser]  # no JVM stack trace either
    assert version(table) == start_version + 1  # exactly one new version: the winner's
    rows = content(table, lineage=True)
    assert set(rows["run_id"]) == {winner}
    pd.testing.assert_frame_equal(rows.drop(columns=LINEAGE), reference)


def test_training_killed_mid_epoch_resumes_to_the_same_steps(warehouse, tmp_path):
    """`kill -9` of jobs/train.py (TorchDistributor, 2 processes) once the first epoch's checkpoint
    exists; `--resume` then trains the remaining epochs to the uninterrupted run's step count."""
    models = tmp_path / "models"
    checkpoint = models / "checkpoints" / "last.pt"
    sets = warehouse.sets(models=models)
    log = tmp_path / "train-killed.log"
    started = time.time()
    proc = submit("train.py", sets, log)
    try:
        saved = wait_until(checkpoint.exists, [proc])  # rank 0 saves, then starts the next epoch
        at = time.time() - started
        escaped = kill_job(proc) if proc.poll() is None else 0
    finally:
        if proc.poll() is None:
            kill_job(proc)
    assert saved and proc.returncode == -signal.SIGKILL, tail(log)
    state = load_checkpoint(checkpoint, "cpu")
    print(
        f"train killed {at:.0f}s after start with the checkpoint at epoch {state['epoch']}, step "
        f"{state['step']}; {escaped} worker processes outlived the group kill"
    )
    assert 1 <= state["epoch"] < 3  # killed between checkpoints, before the end
    assert not list(models.glob("cdml-*"))  # no model artifact

    log = tmp_path / "train-resumed.log"
    proc = submit("train.py", sets, log, "--resume")
    output = finish(proc, log)
    assert proc.returncode == 0, tail(log)
    assert f"resumed from {checkpoint}: epoch {state['epoch']}, step {state['step']}" in output
    resumed = json.loads(next(models.glob("cdml-*/model.json")).read_text())
    reference_dir = warehouse.root / "models" / warehouse.model_version
    reference = json.loads((reference_dir / "model.json").read_text())
    steps = [(h["epoch"], h["step"], h["train_triplets"]) for h in resumed["history"]]
    print(f"resumed: (epoch, step, triplets) {steps}; total {time.time() - started:.0f}s")
    assert steps == [(h["epoch"], h["step"], h["train_triplets"]) for h in reference["history"]]
    assert resumed["history"][: state["epoch"]] == state["history"]  # restored, not retrained
