"""The related-videos blend: the one definition that `build_related` (table `related_videos`) and the
evaluation's `related_<fusion>` methods both call.

For a video v with co-watch support s (`video_stats.user_days`: the (user, day)s with v exposed, the
c_v of the co-watch cosine) and a candidate n:

    score(v, n) = w(s) · cowatch(v, n) + (1 − w(s)) · cosine(v, n),    w(s) = s / (s + k)

`cowatch` is the `cowatch_edges` score (the co-watch cosine; 0 when n is not among v's co-watch
neighbours), `cosine` the CDML embedding cosine and k = `related.support_half_weight` > 0, the support at
which both weigh the same. A never-watched video (s = 0) ranks by its embedding alone; one with
thousands of co-watchers almost by co-watch alone. Rescaling either score is the same as changing k,
so k is the blend's only parameter (calibrated by `benchmarks/calibrate_related.py` on validation data).
"""

from __future__ import annotations

import numpy as np

__all__ = ["blend", "cowatch_weight"]


def cowatch_weight(support: np.ndarray, half_weight: float) -> np.ndarray:
    """w(s) = s / (s + k): the co-watch score's share for videos of support `support`."""
    support = np.asarray(support, dtype=np.float64)
    return support / (support + half_weight)


def blend(cowatch: np.ndarray, cosine: np.ndarray, support: np.ndarray, half_weight: float) -> np.ndarray:
    """w(s) · cowatch + (1 − w(s)) · cosine, element-wise with numpy broadcasting (e.g. a [Q, 1] support
    column against [Q, N] scores)."""
    weight = cowatch_weight(support, half_weight)
    return weight * np.asarray(cowatch, dtype=np.float64) + (1.0 - weight) * np.asarray(
        cosine, dtype=np.float64
    )
