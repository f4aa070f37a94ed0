"""spark-submit jobs/maintain_tables.py --config conf/local.yaml [--set storage.retention_hours=24]

OPTIMIZE then VACUUM every table, keeping `storage.retention_hours` of history and the versions the
current model was trained from."""

from cdml_spark.cli import run_job
from cdml_spark.maintenance import maintain_tables

if __name__ == "__main__":
    run_job(__doc__, maintain_tables)
