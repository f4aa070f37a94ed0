"""spark-submit jobs/build_neighbors.py --config conf/local.yaml [--set neighbors.mode=ann]

Writes `video_neighbors`: top-K videos by embedding cosine (exact blocked search or faiss ANN)."""

from cdml_spark.cli import run_job
from cdml_spark.serving.neighbors import build_neighbors

if __name__ == "__main__":
    run_job(__doc__, build_neighbors)
