"""spark-submit jobs/evaluate.py --config conf/local.yaml [--reuse]

Evaluates CDML (early and late fusion) and the related-videos blend against random, popularity,
raw-feature and co-occurrence CF baselines for every `evaluation.datasets` entry and
`evaluation.protocols` entry: `time_split` (retrieval, recommendation, genre classification) and
`user_holdout` (retrieval on held-out users' co-watch graph); writes `eval_metrics` and
`<evaluation.report_dir>/report.md`."""

import argparse

from cdml_spark.cli import run_job
from cdml_spark.evaluation.run import evaluate


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score each workspace's current tables and embeddings (from an earlier evaluation with the "
        "same config; the fusion embedded last) without running the pipeline again",
    )


if __name__ == "__main__":
    run_job(__doc__, evaluate, extra_args=_args)
