"""spark-submit jobs/summary.py --config conf/local.yaml

Prints table sizes, quarantine counts and "videos like X" (with MovieLens titles)."""

from cdml_spark.cli import run_job
from cdml_spark.summary import summary

if __name__ == "__main__":
    run_job(__doc__, summary)
