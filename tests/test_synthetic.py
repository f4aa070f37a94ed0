"""Synthetic generator: deterministic, about the requested size, power-law, topic-structured."""

from __future__ import annotations

from collections import Counter, defaultdict

from cdml_spark.synthetic import generate_events, video_topic


def synth(cfg_factory, **kw):
    defaults = {"num_events": 20000, "num_users": 400, "num_videos": 500, "num_topics": 10, "partitions": 3}
    defaults.update(kw)
    return cfg_factory(*[f"events.synthetic.{k}={v}" for k, v in defaults.items()]).events.synthetic


def test_same_seed_same_events_other_seed_differs(spark, cfg_factory):
    cfg = synth(cfg_factory)
    first = sorted(generate_events(spark, cfg).collect())
    assert first == sorted(generate_events(spark, cfg).collect())
    assert first != sorted(generate_events(spark, synth(cfg_factory, seed=99)).collect())


def test_size_popularity_and_topics(spark, cfg_factory):
    cfg = synth(cfg_factory)
    rows = generate_events(spark, cfg).collect()
    assert 0.8 * cfg.num_events < len(rows) < 1.2 * cfg.num_events
    assert len({r.user_id for r in rows}) == cfg.num_users

    per_video = Counter(r.video_id for r in rows).most_common()
    top_share = sum(c for _, c in per_video[: len(per_video) // 20]) / len(rows)
    assert top_share > 0.25  # top 5% of videos draw far more than 5% of watches

    per_user = Counter(r.user_id for r in rows)
    counts = sorted(per_user.values())
    assert counts[-1] > 5 * counts[len(counts) // 2]  # heavy-tailed activity

    topics_per_user = defaultdict(Counter)
    for r in rows:
        topics_per_user[r.user_id][video_topic(int(r.video_id[1:]), cfg.num_topics)] += 1
    main_share = sum(c.most_common(1)[0][1] for c in topics_per_user.values()) / len(rows)
    assert main_share > 3 / cfg.num_topics  # users concentrate on few topics
    assert all(r.watch_seconds > 0 for r in rows[:1000])
