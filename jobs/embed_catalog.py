"""spark-submit jobs/embed_catalog.py --config conf/local.yaml [--set embedding.model_version=...]

Embeds every video in `video_features` (cold ones included) into `video_embeddings`."""

from cdml_spark.cli import run_job
from cdml_spark.serving.embed import embed_catalog

if __name__ == "__main__":
    run_job(__doc__, embed_catalog)
