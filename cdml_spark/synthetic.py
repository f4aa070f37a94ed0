"""Synthetic watch events with latent topic structure, generated in parallel by Spark tasks.

Model (so that content generated from the same topics can later predict co-watch):
- video `v<i>` belongs to topic `i % num_topics` and has popularity rank `i // num_topics` within it;
  watches inside a topic follow Zipf(popularity_exponent) over that rank (power-law popularity);
  the `num_videos % num_topics` highest ids are never watched (a cold tail);
- user `u<j>` has a sparse Dirichlet(0.1) mixture over topics and a Pareto(activity_exponent)
  number of watches (power-law activity, capped at 50× the mean);
- watches come in sessions of `session_size`; a session picks a topic from the user's mixture and
  each watch in it stays on that topic with probability `topic_focus` (else a uniform topic);
  sessions start uniformly over `days`, watches in a session are ~10 minutes apart.

`synthetic_features` gives every video (the cold tail included) per-modality vectors around its
topic's centre, so content predicts co-watch up to the configured noise.

Each of `partitions` tasks generates a contiguous block of users with its own seeded RNG and
streams Arrow batches; nothing is collected to the driver. Same seed and partitions → same events.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from cdml_spark.config import AppConfig, SyntheticConfig

__all__ = ["generate_events", "synthetic_features", "video_topic"]

_EVENT_SCHEMA = "user_id string, video_id string, event_ts timestamp, watch_seconds double"
_BATCH_USERS = 20_000
_NOISE_BLOCK = 4096


def video_topic(video_index: np.ndarray | int, num_topics: int) -> np.ndarray | int:
    """Latent topic of synthetic video `v<index>`."""
    return video_index % num_topics


def _block_events(block: int, users: range, cfg: SyntheticConfig) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, block, users.start])
    n_users, k = len(users), cfg.num_topics
    mean = cfg.num_events / cfg.num_users
    x_min = mean * (cfg.activity_exponent - 1) / cfg.activity_exponent
    activity = np.ceil(x_min * rng.random(n_users) ** (-1 / cfg.activity_exponent))
    counts = np.minimum(activity, 50 * mean).astype(np.int64)
    total = int(counts.sum())

    prefs = rng.gamma(0.1, size=(n_users, k)) + 1e-12
    prefs_cdf = np.cumsum(prefs / prefs.sum(axis=1, keepdims=True), axis=1)

    user_of_event = np.repeat(np.arange(n_users), counts)
    position = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    sessions_per_user = -(-counts // cfg.session_size)
    first_session = np.cumsum(sessions_per_user) - sessions_per_user
    session_of_event = np.repeat(first_session, counts) + position // cfg.session_size
    n_sessions = int(sessions_per_user.sum())
    session_user = np.zeros(n_sessions, dtype=np.int64)
    session_user[session_of_event] = user_of_event
    draws = rng.random(n_sessions)[:, None]
    session_topic = np.minimum((prefs_cdf[session_user] < draws).sum(axis=1), k - 1)
    session_start = rng.random(n_sessions) * cfg.days * 86400.0

    on_topic = rng.random(total) < cfg.topic_focus
    topic = np.where(on_topic, session_topic[session_of_event], rng.integers(0, k, total))
    ranks_per_topic = cfg.num_videos // k
    weights = np.arange(1, ranks_per_topic + 1, dtype=np.float64) ** (-cfg.popularity_exponent)
    rank = np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(total), side="right")
    video = np.minimum(rank, ranks_per_topic - 1) * k + topic

    gap = rng.exponential(600.0, total)
    elapsed = np.cumsum(gap)
    first_event = np.r_[0, np.flatnonzero(np.diff(session_of_event)) + 1]
    in_session = elapsed - (elapsed - gap)[first_event][session_of_event]
    seconds = session_start[session_of_event] + in_session
    start = pd.Timestamp(cfg.start_date, tz="UTC")
    return pd.DataFrame(
        {
            "user_id": "u" + pd.Series(np.asarray(users)[user_of_event]).astype(str),
            "video_id": "v" + pd.Series(video).astype(str),
            "event_ts": start + pd.to_timedelta(np.round(seconds), unit="s"),
            "watch_seconds": np.round(rng.lognormal(5.5, 1.0, total), 1),
        }
    )


def generate_events(spark: SparkSession, cfg: SyntheticConfig) -> DataFrame:
    """A DataFrame of synthetic events (canonical columns), generated lazily by `cfg.partitions` tasks."""
    bounds = np.linspace(0, cfg.num_users, cfg.partitions + 1).astype(int).tolist()

    def generate(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for block in batch["id"]:
                lo, hi = bounds[block], bounds[block + 1]
                for chunk in range(lo, hi, _BATCH_USERS):
                    yield _block_events(int(block), range(chunk, min(chunk + _BATCH_USERS, hi)), cfg)

    blocks = spark.range(0, cfg.partitions, numPartitions=cfg.partitions)
    return blocks.mapInPandas(generate, _EVENT_SCHEMA)


def _standard_normal_rows(ids: np.ndarray, dim: int, seed: list[int]) -> np.ndarray:
    """[len(ids), dim] N(0, 1) rows, row i a function of (seed, ids[i]) only — never of how Spark
    batched the ids: drawn per block of `_NOISE_BLOCK` consecutive ids."""
    out = np.empty((len(ids), dim))
    blocks = ids // _NOISE_BLOCK
    for block in np.unique(blocks):
        rows = blocks == block
        draws = np.random.default_rng([*seed, int(block)]).standard_normal((_NOISE_BLOCK, dim))
        out[rows] = draws[ids[rows] % _NOISE_BLOCK]
    return out


def synthetic_features(spark: SparkSession, cfg: AppConfig) -> DataFrame:
    """One row per synthetic video `v<i>`: per modality, its topic centre (N(0,1), fixed by seed and
    modality) plus N(0, noise²) per video. Noise 0 = content determines topic exactly. Same seeds →
    same vectors, whatever the partitioning or the session's Arrow batch size."""
    syn, feat = cfg.events.synthetic, cfg.features
    k = syn.num_topics
    centres = {
        m.name: np.random.default_rng([feat.synthetic.seed, i]).standard_normal((k, m.dim))
        for i, m in enumerate(feat.modalities)
    }

    def generate(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            ids = batch["id"].to_numpy()
            if len(ids) == 0:
                continue
            out = {"video_id": "v" + pd.Series(ids).astype(str)}
            for i, m in enumerate(feat.modalities):
                noise = _standard_normal_rows(ids, m.dim, [feat.synthetic.seed, i])
                vectors = centres[m.name][ids % k] + feat.synthetic.noise * noise
                out[m.name] = list(vectors.astype(np.float32))
            yield pd.DataFrame(out)

    schema = "video_id string, " + ", ".join(f"{m.name} array<float>" for m in feat.modalities)
    return spark.range(0, syn.num_videos, numPartitions=syn.partitions).mapInPandas(generate, schema)
