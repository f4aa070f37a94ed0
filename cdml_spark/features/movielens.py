"""MovieLens content features (trailer features are not obtainable, so content = metadata):
- `text`: all-MiniLM-L6-v2 embedding (384-d) of "<title> (<year>) <genres>";
- `meta`: genre multi-hot in the first slots, then the release decade and (ML-100K only) its Freebase
  knowledge-graph relations — tokens `relation=entity` shared by at least two movies (actors,
  directors, ...) — hashed into the remaining `dim − #genres` slots.
With `features.genres_as_content: false` no genre reaches the features (not in the sentence, no
multi-hot, no KG genre relations), so genres can serve as held-out classification labels.
Computed by Spark tasks (mapInPandas; one text model per Python worker), so it scales with the catalog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdml_spark.config import AppConfig, FeaturesConfig, Modality
from cdml_spark.datasets import MOVIELENS, movielens_items, movielens_table
from cdml_spark.errors import InputSchemaError
from cdml_spark.features.ingest import FeatureSource
from cdml_spark.features.text_encoder import TEXT_DIM, TEXT_MODEL, encode, model_dir

__all__ = ["movielens_features"]


def _stable_bucket(token: str, buckets: int) -> int:
    """Process-independent hash of a token into [0, buckets)."""
    return int.from_bytes(hashlib.md5(token.encode()).digest()[:8], "little") % buckets


def _meta_vectors(genres: list, relations: list, genre_vocab: list[str], dim: int) -> np.ndarray:
    """Genre multi-hot in the first len(genre_vocab) slots, relation tokens hashed into the rest."""
    index = {g: i for i, g in enumerate(genre_vocab)}
    out = np.zeros((len(genres), dim), dtype=np.float32)
    for row, (gs, rels) in enumerate(zip(genres, relations, strict=False)):
        for g in gs:
            out[row, index[g]] = 1.0
        for token in rels if rels is not None else []:
            out[row, len(genre_vocab) + _stable_bucket(token, dim - len(genre_vocab))] = 1.0
    return out


def _modality(cfg: FeaturesConfig, name: str, dim: int | None = None) -> Modality:
    found = [m for m in cfg.modalities if m.name == name]
    if not found or (dim is not None and found[0].dim != dim):
        raise InputSchemaError(
            f"features.source=movielens needs modality {name!r}{f' with dim {dim}' if dim else ''} in features.modalities"
        )
    return found[0]


def _kg_relations(spark: SparkSession, cache_dir: str, dataset: str, genres: bool = True) -> DataFrame:
    """video_id, relations: KG tokens shared by >= 2 movies (ML-100K has a KG; others get none);
    `genres=False` drops the genre relations."""
    if dataset != "movielens-100k":
        return spark.createDataFrame([], "video_id string, relations array<string>")
    link = movielens_table(spark, cache_dir, dataset, "link")
    kg = movielens_table(spark, cache_dir, dataset, "kg")
    if not genres:
        kg = kg.where(~F.col("relation_id").contains("genre"))
    out_edges = kg.select(
        F.col("head_id").alias("entity_id"), F.concat_ws("=", "relation_id", "tail_id").alias("token")
    )
    in_edges = kg.select(
        F.col("tail_id").alias("entity_id"), F.concat_ws("=~", "relation_id", "head_id").alias("token")
    )
    tokens = link.join(out_edges.unionByName(in_edges), "entity_id").select(
        F.col("item_id").alias("video_id"), "token"
    )
    shared = tokens.groupBy("token").agg(F.countDistinct("video_id").alias("n")).where("n >= 2")
    return (
        tokens.join(shared, "token")
        .groupBy("video_id")
        .agg(F.sort_array(F.collect_set("token")).alias("relations"))
    )


def movielens_features(spark: SparkSession, cfg: AppConfig) -> FeatureSource:
    """Every movie of `events.source` (a MovieLens dataset): inputs video_id, sentence (the text the
    encoder reads), genres (for the multi-hot) and relations (KG tokens and decade), featurized into
    text and meta vectors; the extractor names the text model and the genre vocabulary."""
    dataset = cfg.events.source
    if dataset not in MOVIELENS:
        raise InputSchemaError(
            f"features.source=movielens needs events.source to be one of {sorted(MOVIELENS)}"
        )
    feat = cfg.features
    text, meta = _modality(feat, "text", TEXT_DIM), _modality(feat, "meta")
    items = movielens_items(spark, cfg.storage.cache_dir, dataset)
    with_genres = feat.genres_as_content
    genre_vocab = (
        sorted(r[0] for r in items.select(F.explode("genres")).distinct().collect()) if with_genres else []
    )
    if len(genre_vocab) >= meta.dim:
        raise InputSchemaError(
            f"features modality 'meta' dim {meta.dim} must exceed the {len(genre_vocab)} genres"
        )
    relations = _kg_relations(spark, cfg.storage.cache_dir, dataset, with_genres)
    decade = F.format_string("decade=%d", (F.col("year") / 10).cast("int") * 10)
    genres = F.col("genres") if with_genres else F.array().cast("array<string>")
    year = F.when(F.col("year").isNotNull(), F.format_string("(%d)", "year"))
    inputs = (
        items.join(relations, "video_id", "left")
        .withColumn("relations", F.coalesce("relations", F.array().cast("array<string>")))
        .select(
            "video_id",
            F.concat_ws(" ", "title", year, genres).alias("sentence"),  # "<title> (<year>) <genres>"
            genres.alias("genres"),
            F.when(F.col("year").isNull(), F.col("relations"))
            .otherwise(F.array_union("relations", F.array(decade)))
            .alias("relations"),
        )
    )
    path, batch_size = model_dir(cfg.storage.cache_dir), feat.text_batch_size

    def featurize(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            yield pd.DataFrame(
                {
                    "video_id": b["video_id"],
                    "inputs_hash": b["inputs_hash"],
                    text.name: list(encode(list(b["sentence"]), path, batch_size)),
                    meta.name: list(
                        _meta_vectors(list(b["genres"]), list(b["relations"]), genre_vocab, meta.dim)
                    ),
                }
            )

    schema = f"video_id string, inputs_hash long, {text.name} array<float>, {meta.name} array<float>"
    # one task per core: each Python worker loads the text model once and encodes its share
    return FeatureSource(
        inputs,
        lambda todo: todo.repartition(spark.sparkContext.defaultParallelism).mapInPandas(featurize, schema),
        {"text_model": TEXT_MODEL, "genre_vocab": genre_vocab},
    )
