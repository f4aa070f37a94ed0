"""spark-submit jobs/ingest_events.py --config conf/local.yaml [--set events.source=movielens-100k]

Validates the configured watch-event source into `watch_events` (+ `watch_events_quarantine`)."""

from cdml_spark.cli import run_job
from cdml_spark.events import run_ingest

if __name__ == "__main__":
    run_job(__doc__, run_ingest)
