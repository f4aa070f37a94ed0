"""spark-submit jobs/build_related.py --config conf/local.yaml [--set related.exclude_table=main.shop.unavailable]

Writes `related_videos`: per video one list of co-watch and embedding neighbours, blended by the video's
co-watch support (cdml_spark/serving/blend.py)."""

from cdml_spark.cli import run_job
from cdml_spark.serving.related import build_related

if __name__ == "__main__":
    run_job(__doc__, build_related)
