"""spark-submit jobs/evaluate.py --config conf/local.yaml

Evaluates CDML (early and late fusion) against random, popularity, raw-feature and co-occurrence CF
baselines for every `evaluation.datasets` entry and `evaluation.protocols` entry: `time_split`
(retrieval, recommendation, genre classification) and `user_holdout` (retrieval on held-out users'
co-watch graph); writes `eval_metrics` and `<evaluation.report_dir>/report.md`."""

from cdml_spark.cli import run_job
from cdml_spark.evaluation.run import evaluate

if __name__ == "__main__":
    run_job(__doc__, evaluate)
