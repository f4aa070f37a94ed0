"""spark-submit jobs/make_triplets.py --config conf/local.yaml [--set triplets.positives_per_anchor=10]

Splits videos (train / validation / cold_test) into `video_splits` and samples `triplets` from
`cowatch_edges` and `video_features`."""

from cdml_spark.cli import run_job
from cdml_spark.triplets import make_triplets

if __name__ == "__main__":
    run_job(__doc__, make_triplets)
