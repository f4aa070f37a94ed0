"""Independent pure-Python references for the Spark jobs (small data only)."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

Day = date | None

_P1, _P2, _P3, _P4, _P5 = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
)
_M64 = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M64, 31) * _P1) & _M64


def xxh64(data: bytes, seed: int) -> int:
    """XXH64, unsigned (the reference algorithm, as Spark's xxhash64 applies it to UTF-8 strings)."""
    n, i, seed = len(data), 0, seed & _M64
    lane = lambda at, width: int.from_bytes(data[at : at + width], "little")  # noqa: E731
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        while i + 32 <= n:
            v = [_round(v[j], lane(i + 8 * j, 8)) for j in range(4)]
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for x in v:
            h = ((h ^ _round(0, x)) * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, lane(i, 8)), 27) * _P1 + _P4) & _M64
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ ((lane(i, 4) * _P1) & _M64), 23) * _P2 + _P3) & _M64
        i += 4
    for byte in data[i:]:
        h = (_rotl(h ^ ((byte * _P5) & _M64), 11) * _P1) & _M64
    for shift, prime in ((33, _P2), (29, _P3)):
        h = ((h ^ (h >> shift)) * prime) & _M64
    return h ^ (h >> 32)


def xxhash64(text: str) -> int:
    """Spark's `xxhash64(text)`: XXH64 of the UTF-8 bytes, seed 42, as a signed long."""
    h = xxh64(text.encode(), 42)
    return h - (1 << 64) if h >= 1 << 63 else h


def _kept_watches(
    events: list[tuple[str, str, datetime]], max_history: int
) -> dict[str, list[tuple[str, datetime]]]:
    """user -> kept (video, latest watch that day): per (user, UTC day) the max_history most recent
    (ties: smaller video key first)."""
    latest: dict[tuple[str, date], dict[str, datetime]] = defaultdict(dict)
    for user, video, ts in events:
        day = ts.astimezone(UTC).date()
        if video not in latest[(user, day)] or ts > latest[(user, day)][video]:
            latest[(user, day)][video] = ts
    kept: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for (user, _), watched in latest.items():
        kept[user] += sorted(watched.items(), key=lambda kv: (-kv[1].timestamp(), xxhash64(kv[0])))[
            :max_history
        ]
    return kept


def _in_days(day: date, first: Day, last: Day) -> bool:
    return (first is None or day >= first) and (last is None or day <= last)


def brute_force_counts(
    events: list[tuple[str, str, datetime]], max_history: int, window_hours: float, first: Day, last: Day
) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """(c_ij per pair (a < b), c_i per video) over the days first..last, from graph.py's definition."""
    window = timedelta(hours=window_hours)
    pair_days: set[tuple[str, date, str, str]] = set()
    exposed: set[tuple[str, date, str]] = set()
    for user, kept in _kept_watches(events, max_history).items():
        for vi, ti in kept:
            exposed.add((user, ti.astimezone(UTC).date(), vi))
            for vj, tj in kept:
                if tj >= ti and tj - ti <= window:  # a later (or equal) watch within the window
                    day = tj.astimezone(UTC).date()
                    exposed.add((user, day, vi))
                    if vi != vj:
                        pair_days.add((user, day, min(vi, vj), max(vi, vj)))
    pair_users: dict[tuple[str, str], int] = defaultdict(int)
    for _, day, a, b in pair_days:
        if _in_days(day, first, last):
            pair_users[(a, b)] += 1
    user_days: dict[str, int] = defaultdict(int)
    for _, day, video in exposed:
        if _in_days(day, first, last):
            user_days[video] += 1
    return pair_users, user_days


def brute_force_edges(
    events: list[tuple[str, str, datetime]],
    max_history: int,
    window_hours: float,
    min_users: int,
    max_neighbors: int,
    first: Day = None,
    last: Day = None,
) -> dict[tuple[str, str], tuple[int, int, float]]:
    """(video, neighbor) -> (rank, cowatch_user_days, score), straight from the definition in graph.py."""
    pair_users, user_days = brute_force_counts(events, max_history, window_hours, first, last)
    candidates: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for (a, b), count in pair_users.items():
        if count >= min_users:
            score = count / math.sqrt(user_days[a] * user_days[b])
            candidates[a].append((score, count, b))
            candidates[b].append((score, count, a))
    edges = {}
    for video, cands in candidates.items():
        cands.sort(key=lambda c: (-c[0], -c[1], c[2]))
        for rank, (score, count, neighbor) in enumerate(cands[:max_neighbors], start=1):
            edges[(video, neighbor)] = (rank, count, score)
    return edges


def brute_force_stats(
    events: list[tuple[str, str, datetime]],
    max_history: int,
    window_hours: float,
    first: Day = None,
    last: Day = None,
) -> dict[str, tuple[int, int, int, datetime, datetime]]:
    """video -> (events, users, user_days, first_watch, last_watch) over the days first..last;
    exact duplicate events count once."""
    _, user_days = brute_force_counts(events, max_history, window_hours, first, last)
    watches: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for user, video, ts in set(events):
        if _in_days(ts.astimezone(UTC).date(), first, last):
            watches[video].append((user, ts))
    return {
        video: (
            len(rows),
            len({user for user, _ in rows}),
            user_days[video],
            min(ts for _, ts in rows),
            max(ts for _, ts in rows),
        )
        for video, rows in watches.items()
    }
