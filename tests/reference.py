"""Independent pure-Python references for the Spark jobs (small data only)."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime


def brute_force_edges(
    events: list[tuple[str, str, datetime]],
    max_history: int,
    window_hours: float,
    min_users: int,
    max_neighbors: int,
) -> dict[tuple[str, str], tuple[int, int, float]]:
    """(video, neighbor) -> (rank, cowatch_users, score), straight from the definition in graph.py."""
    latest: dict[str, dict[str, datetime]] = defaultdict(dict)
    for user, video, ts in events:
        if video not in latest[user] or ts > latest[user][video]:
            latest[user][video] = ts
    pair_users: dict[tuple[str, str], int] = defaultdict(int)
    history_users: dict[str, int] = defaultdict(int)
    for watched in latest.values():
        kept = sorted(watched.items(), key=lambda kv: (-kv[1].timestamp(), kv[0]))[:max_history]
        for video, _ in kept:
            history_users[video] += 1
        for i, (vi, ti) in enumerate(kept):
            for vj, tj in kept[i + 1 :]:
                if abs((ti - tj).total_seconds()) <= window_hours * 3600:
                    pair_users[(min(vi, vj), max(vi, vj))] += 1
    candidates: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for (a, b), count in pair_users.items():
        if count >= min_users:
            score = count / math.sqrt(history_users[a] * history_users[b])
            candidates[a].append((score, count, b))
            candidates[b].append((score, count, a))
    edges = {}
    for video, cands in candidates.items():
        cands.sort(key=lambda c: (-c[0], -c[1], c[2]))
        for rank, (score, count, neighbor) in enumerate(cands[:max_neighbors], start=1):
            edges[(video, neighbor)] = (rank, count, score)
    return edges


def brute_force_stats(
    events: list[tuple[str, str, datetime]], max_history: int
) -> dict[str, tuple[int, int, int, datetime, datetime]]:
    """video -> (events, users, history_users, first_watch, last_watch); exact duplicate events count once."""
    watches: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    latest: dict[str, dict[str, datetime]] = defaultdict(dict)
    for user, video, ts in set(events):
        watches[video].append((user, ts))
        latest[user][video] = max(ts, latest[user].get(video, ts))
    history_users: dict[str, int] = defaultdict(int)
    for watched in latest.values():
        for video, _ in sorted(watched.items(), key=lambda kv: (-kv[1].timestamp(), kv[0]))[:max_history]:
            history_users[video] += 1
    return {
        video: (
            len(rows),
            len({user for user, _ in rows}),
            history_users[video],
            min(ts for _, ts in rows),
            max(ts for _, ts in rows),
        )
        for video, rows in watches.items()
    }
