"""The clone's own code everywhere: driver, Spark's Python workers and spark-submit's driver import
`cdml_spark` from this clone (its `.venv` layers it on the shared venv), not from another clone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cdml_spark

ROOT = Path(__file__).resolve().parents[1]


def _package_dir(_) -> str:
    import cdml_spark as worker_side

    return str(Path(worker_side.__file__).resolve().parent)


def test_driver_and_workers_import_this_clone(spark):
    assert Path(cdml_spark.__file__).resolve().parent == ROOT / "cdml_spark"
    seen = set(spark.sparkContext.parallelize(range(4), 2).map(_package_dir).collect())
    assert seen == {str(ROOT / "cdml_spark")}


def test_venv_python_puts_this_clone_first():
    code = "import cdml_spark, sys; print(cdml_spark.__file__); print(sys.prefix)"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    package, prefix = out.stdout.split()
    assert Path(package).resolve().parent == ROOT / "cdml_spark"
    assert Path(prefix).resolve() == (ROOT / ".venv").resolve()
