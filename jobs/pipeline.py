"""spark-submit jobs/pipeline.py --config conf/local.yaml [--stages build_graph train] [--set KEY=VALUE]

Runs the pipeline's stages (default: all — ingest_events build_graph ingest_features make_triplets
train embed_catalog build_neighbors recommend evaluate summary) in one Spark application with one run id."""

from cdml_spark.cli import run_job
from cdml_spark.pipeline import run_pipeline


def _args(parser):
    parser.add_argument(
        "--stages", nargs="+", default=None, help="stages to run, in this order (default: all)"
    )


if __name__ == "__main__":
    run_job(__doc__, run_pipeline, extra_args=_args)
