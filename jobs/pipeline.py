"""spark-submit jobs/pipeline.py --config conf/local.yaml [--stages build_graph train] [--set KEY=VALUE]

Runs the pipeline's stages (default: all of `cdml_spark.pipeline.STAGES`, in order) in one Spark
application with one run id."""

from cdml_spark.cli import run_job
from cdml_spark.pipeline import NAMES, run_pipeline


def _args(parser):
    parser.add_argument(
        "--stages", nargs="+", default=None, help=f"stages to run, in this order (default: {' '.join(NAMES)})"
    )


if __name__ == "__main__":
    run_job(__doc__, run_pipeline, extra_args=_args)
