"""spark-submit jobs/generate_events.py --config conf/local.yaml [--set events.synthetic.num_events=10000000]

Generates synthetic topic-structured watch events (config `events.synthetic`) into `watch_events`."""

from cdml_spark.cli import run_job
from cdml_spark.events import run_ingest

if __name__ == "__main__":
    run_job(__doc__, run_ingest, forced_overrides=["events.source=synthetic"])
