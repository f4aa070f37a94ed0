"""spark-submit jobs/recommend.py --config conf/local.yaml

Writes `user_recommendations`: per user, the top-K unwatched videos by mean cosine to their recent watches."""

from cdml_spark.cli import run_job
from cdml_spark.serving.recommend import recommend

if __name__ == "__main__":
    run_job(__doc__, recommend)
