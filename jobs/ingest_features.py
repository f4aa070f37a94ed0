"""spark-submit jobs/ingest_features.py --config conf/local.yaml [--set features.source=synthetic]

Writes `video_features` (+ `video_features_quarantine`) from the configured source: MovieLens
metadata (text embedding + genres/KG), synthetic topic features, frame-level vectors (PCA + mean
pooling) or your own video-level vectors."""

from cdml_spark.cli import run_job
from cdml_spark.features.ingest import ingest_features

if __name__ == "__main__":
    run_job(__doc__, ingest_features)
