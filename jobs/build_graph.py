"""spark-submit jobs/build_graph.py --config conf/local.yaml [--set graph.min_users=3]

Builds `cowatch_edges` and `video_stats` from `watch_events`."""

from cdml_spark.cli import run_job
from cdml_spark.graph import build_graph

if __name__ == "__main__":
    run_job(__doc__, build_graph)
