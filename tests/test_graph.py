"""build_graph against the brute-force reference on random event sets, plus idempotency."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pyspark.sql import functions as F

from cdml_spark.errors import VideoKeyCollision
from cdml_spark.events import ingest_events
from cdml_spark.graph import build_graph, group_sum
from cdml_spark.tables import (
    COWATCH_DAILY_PAIRS,
    COWATCH_DAYS,
    COWATCH_EDGES,
    COWATCH_WINDOW_PAIRS,
    VIDEO_KEYS,
    VIDEO_STATS,
    Lineage,
    TableStore,
)
from tests.reference import brute_force_edges, brute_force_stats, xxhash64

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def random_events(seed: int, users: int, videos: int, events: int, span_hours: float):
    rng = random.Random(seed)
    out = []
    for _ in range(events):
        ts = T0 + timedelta(seconds=rng.randrange(int(span_hours * 3600)))
        out.append((f"u{rng.randrange(users)}", f"v{rng.randrange(videos):02d}", ts))
    # a few exact-time ties and repeated watches exercise latest-watch and tie-breaking rules
    out += [(u, v, ts) for (u, v, ts) in out[: events // 10]]
    out += [(u, f"v{(int(v[1:]) + 1) % videos:02d}", ts) for (u, v, ts) in out[: events // 10]]
    return out


def load_events(spark, cfg, events):
    rows = [(u, v, ts, 60.0) for u, v, ts in events]
    df = spark.createDataFrame(
        rows, "user_id string, video_id string, event_ts timestamp, watch_seconds double"
    )
    ingest_events(spark, cfg, df)


CASES = [
    # seed, users, videos, events, span_h, max_history, window_h, min_users, max_neighbors
    (1, 30, 12, 400, 72, 5, 24, 1, 3),  # history cap bites, window bites
    (2, 20, 8, 300, 200, 50, 6, 2, 4),  # short window, threshold 2
    (3, 40, 15, 500, 48, 8, 1000, 3, 2),  # window never bites, tight top-N (ties likely)
]


@pytest.mark.parametrize("case", CASES, ids=[f"seed{c[0]}" for c in CASES])
def test_edges_match_brute_force(spark, cfg_factory, case):
    seed, users, videos, n, span, max_history, window, min_users, max_neighbors = case
    cfg = cfg_factory(
        f"graph.max_history={max_history}",
        f"graph.cowatch_window_hours={window}",
        f"graph.min_users={min_users}",
        f"graph.max_neighbors={max_neighbors}",
    )
    events = random_events(seed, users, videos, n, span)
    load_events(spark, cfg, events)
    build_graph(spark, cfg)

    expected = brute_force_edges(events, max_history, window, min_users, max_neighbors)
    store = TableStore(spark, cfg.storage)
    assert len(expected) > 10, "case too sparse to test anything"
    _assert_edges(_edges(store), expected)
    assert _stats(store.read(VIDEO_STATS).collect()) == brute_force_stats(events, max_history, window)


def test_rerun_is_idempotent_and_stats_consistent(spark, cfg_factory):
    cfg = cfg_factory("graph.min_users=1", "graph.max_neighbors=5")
    load_events(spark, cfg, random_events(9, 25, 10, 300, 48))
    store = TableStore(spark, cfg.storage)
    data_cols = [f.name for f in COWATCH_EDGES.fields]

    build_graph(spark, cfg)
    version = store.version(COWATCH_EDGES)
    first = sorted(store.read(COWATCH_EDGES).select(*data_cols).collect())
    first_stats = sorted(store.read(VIDEO_STATS).drop("run_id", "built_at").collect())
    build_graph(spark, cfg)
    second = sorted(store.read(COWATCH_EDGES).select(*data_cols).collect())
    assert first == second  # same rows, no duplicates
    assert first_stats == sorted(store.read(VIDEO_STATS).drop("run_id", "built_at").collect())
    assert store.version(COWATCH_EDGES) == version + 1  # one replacing commit, not an append

    stats = store.read(VIDEO_STATS)
    per_video = store.read(COWATCH_EDGES).groupBy("video_id").count()
    mismatched = stats.join(per_video, "video_id", "left").where(
        F.coalesce("count", F.lit(0)) != F.col("neighbors")
    )
    assert mismatched.count() == 0


def test_video_keys_dictionary_grows_and_refuses_a_collision(spark, cfg_factory):
    cfg = cfg_factory("graph.min_users=1")
    events = random_events(5, 15, 8, 150, 24)
    load_events(spark, cfg, events)
    build_graph(spark, cfg)
    store = TableStore(spark, cfg.storage)
    expected = {(xxhash64(video), video) for _, video, _ in events}  # every video has a kept watch here
    assert {(r.key, r.video_id) for r in store.read(VIDEO_KEYS).collect()} == expected
    version = store.version(VIDEO_KEYS)
    build_graph(spark, cfg)
    assert store.version(VIDEO_KEYS) == version  # nothing new: no commit

    load_events(spark, cfg, [*events, ("u1", "new video", T0)])
    build_graph(spark, cfg)
    assert store.read(VIDEO_KEYS).count() == len(expected) + 1

    impostor = spark.createDataFrame([(xxhash64("v01"), "impostor")], "key long, video_id string")
    store.upsert(VIDEO_KEYS, impostor, Lineage.new("test", {}), ["key"])  # v01's key, another id
    edges = store.version(COWATCH_EDGES)
    with pytest.raises(VideoKeyCollision, match="'v01' has the key .* holds for 'impostor'"):
        build_graph(spark, cfg)
    assert store.version(COWATCH_EDGES) == edges  # refused before any graph table changed


def test_tables_readable_without_spark(spark, cfg_factory):
    deltalake = pytest.importorskip("deltalake")
    cfg = cfg_factory("graph.min_users=1")
    load_events(spark, cfg, random_events(4, 15, 8, 150, 24))
    report = build_graph(spark, cfg)
    store = TableStore(spark, cfg.storage)
    edges = deltalake.DeltaTable(store.path(COWATCH_EDGES)).to_pandas()
    assert len(edges) == report.edges > 0
    assert {"video_id", "neighbor_id", "rank", "score", "run_id", "params_hash", "built_at"} <= set(
        edges.columns
    )
    stats = deltalake.DeltaTable(store.path(VIDEO_STATS))
    assert stats.metadata().description.startswith("Per-video")


def test_window_edge_is_inclusive_across_time_buckets(spark, cfg_factory):
    """Pairs exactly one window apart count (whatever time bucket each watch falls in); one microsecond
    more does not; a video below min_users is pruned before pairing yet keeps its stats."""
    cfg = cfg_factory("graph.cowatch_window_hours=2", "graph.min_users=2", "graph.max_history=10")
    start = T0 + timedelta(minutes=37)  # not aligned with the 2 h buckets
    events = []
    for user in ("u1", "u2", "u3"):
        events += [(user, "a", start), (user, "b", start + timedelta(hours=2))]
        events += [(user, "c", start + timedelta(hours=2, microseconds=1))]
    events += [("u1", "lonely", start)]
    load_events(spark, cfg, events)
    build_graph(spark, cfg)
    rows = TableStore(spark, cfg.storage).read(COWATCH_EDGES).collect()
    got = {(r.video_id, r.neighbor_id): r.cowatch_user_days for r in rows}
    assert got == dict.fromkeys([("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")], 3)
    assert got == {pair: count for pair, (_, count, _) in brute_force_edges(events, 10, 2, 2, 50).items()}
    stats = {r.video_id: r.user_days for r in TableStore(spark, cfg.storage).read(VIDEO_STATS).collect()}
    assert stats["lonely"] == 1


def _edges(store: TableStore) -> dict:
    rows = store.read(COWATCH_EDGES).collect()
    return {(r.video_id, r.neighbor_id): (r.rank, r.cowatch_user_days, r.score) for r in rows}


def _stats(rows: list) -> dict:
    return {
        r.video_id: (
            r.events,
            r.users,
            r.user_days,
            r.first_watch.astimezone(UTC),
            r.last_watch.astimezone(UTC),
        )
        for r in rows
    }


def _assert_edges(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, (rank, count, score) in expected.items():
        assert got[key][:2] == (rank, count), key
        assert got[key][2] == pytest.approx(score, rel=1e-12)


def test_incremental_days_match_brute_force_and_full_mode(spark, cfg_factory):
    """Days appended one at a time (events.mode=append, events.dates), each followed by an
    incremental build over a 2-day window, give the brute-force edges of that window; rerunning a day
    changes nothing; a corrected day is recomputed with the day after it; days that left the window
    are dropped; the full mode gives the same edges and stats."""
    params = ["graph.window_days=2", "graph.cowatch_window_hours=6", "graph.min_users=1"]
    params += ["graph.max_history=6", "graph.max_neighbors=4", "graph.mode=incremental"]
    events = random_events(11, 25, 10, 700, 4 * 24)  # 4 UTC days from T0 (midnight)
    days = sorted({ts.date() for _, _, ts in events})
    store = TableStore(spark, cfg_factory().storage)

    def append_and_build(day, rows, *extra):
        cfg = cfg_factory("events.mode=append", f"events.dates={day}", *params, *extra)
        load_events(spark, cfg, rows)
        build_graph(spark, cfg)

    for day in days:
        append_and_build(day, events)  # the whole list each time: events.dates selects the day
        so_far = [e for e in events if e[2].date() <= day]
        expected = brute_force_edges(so_far, 6, 6, 1, 4, day - timedelta(days=1), day)
        assert len(expected) > 10
        _assert_edges(_edges(store), expected)
    assert store.commit_inputs(COWATCH_WINDOW_PAIRS)["method"] == "delta"  # not summed again
    held = {r.day for r in store.read(COWATCH_DAYS).collect()}
    assert held == set(days[-2:])  # the earlier days left the window
    assert {r.day for r in store.read(COWATCH_DAILY_PAIRS).select("day").distinct().collect()} <= held

    version = store.version(COWATCH_DAILY_PAIRS)
    append_and_build(days[-1], events)  # rerun of the last day: nothing to recompute
    assert store.version(COWATCH_DAILY_PAIRS) == version
    _assert_edges(_edges(store), expected)

    # a run that died between the per-day write and the sums' write: the sums are summed again
    wrong = spark.createDataFrame([(1, 2, 5)], "key_a long, key_b long, cowatch_user_days long")
    store.write(COWATCH_WINDOW_PAIRS, wrong, Lineage.new("test", {}), inputs={"daily_pairs_version": -1})
    corrected = [e for i, e in enumerate(events) if e[2].date() != days[-2] or i % 3]
    append_and_build(days[-2], corrected)  # a correction of day 3 also changes day 4's counts
    expected = brute_force_edges(corrected, 6, 6, 1, 4, days[-2], days[-1])
    _assert_edges(_edges(store), expected)
    assert store.commit_inputs(COWATCH_WINDOW_PAIRS)["method"] == "resum"
    incremental_stats = sorted(store.read(VIDEO_STATS).drop("run_id", "built_at", "params_hash").collect())

    build_graph(spark, cfg_factory(*params, "graph.mode=full"))
    _assert_edges(_edges(store), expected)
    assert sorted(store.read(VIDEO_STATS).drop("run_id", "built_at", "params_hash").collect()) == (
        incremental_stats
    )
    assert _stats(incremental_stats) == brute_force_stats(corrected, 6, 6, days[-2], days[-1])


@pytest.mark.parametrize("wide", [False, True])
def test_group_sum_equals_a_counter(wide):
    """group_sum against collections.Counter: packed into one int64 sort (small ranges), and the
    lexsort it falls back to when a column spans 64 bits (video keys)."""
    rng = np.random.default_rng(3)
    user, day = rng.integers(0, 50, 5000), rng.integers(-3, 4, 5000).astype(np.int32)
    video = rng.choice(np.array([-(2**63), 7, 2**62], np.int64) if wide else np.arange(9), 5000)
    weight = rng.integers(1, 5, 5000)
    (u, d, v), sums = group_sum([user, day, video], weight)
    rows = list(zip(user.tolist(), day.tolist(), video.tolist(), strict=True))
    expected = Counter()
    for row, w in zip(rows, weight.tolist(), strict=True):
        expected[row] += w
    assert list(zip(u.tolist(), d.tolist(), v.tolist(), strict=True)) == sorted(expected)
    assert sums.tolist() == [expected[row] for row in sorted(expected)]
