"""spark-submit jobs/run_days.py --config conf/local.yaml --set events.dates=2026-01-01..2026-01-31

Daily operation and backfills: per UTC day of events.dates, in order, ingest that day
(events.mode=append) and add it to the incremental co-watch graph (window ending that day)."""

from cdml_spark.cli import run_job
from cdml_spark.daily import run_days

if __name__ == "__main__":
    run_job(__doc__, run_days)
