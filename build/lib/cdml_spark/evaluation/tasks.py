"""The paper's three evaluation tasks on in-memory arrays (no Spark), for any scoring method.

Items are rows 0..N-1 of a `Catalog`. A method scores items for a batch of queries:
- vector methods (raw features, CDML embeddings): cosine = dot product of unit vectors; a user is
  the mean of their history's vectors (= mean cosine to the history, the paper's rule);
- `popularity`: training-period distinct users of the candidate;
- `cooccurrence_cf`: the training co-watch graph's cosine score (a user sums it over the history),
  ties broken by popularity; defined for warm items only (a cold item has no co-watch data);
- `random`: uniform scores from a seeded generator;
- `related_<fusion>` (retrieval only: it ranks videos like one video): the `related_videos` blend of the
  co-watch score and the `cdml_<fusion>` cosine, weighted by the query's co-watch support
  (`cdml_spark.serving.blend`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cdml_spark.evaluation.metrics import (
    global_average_precision,
    mean_average_precision,
    mean_ranking_metric,
    rank_items,
)
from cdml_spark.serving.blend import blend

__all__ = [
    "Catalog",
    "Graph",
    "MetricRow",
    "Scorer",
    "Users",
    "classification",
    "recommendation",
    "related_method",
    "related_scorers",
    "retrieval",
    "scorers",
]

Scorer = Callable[[list[np.ndarray]], np.ndarray]  # item-index groups (1 per query) -> scores[Q, N]
_CHUNK = 512


@dataclass(frozen=True)
class Graph:
    """Sparse rows (CSR) of the training co-watch graph: row i = scores of i's neighbours."""

    size: int
    indptr: np.ndarray
    indices: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_edges(cls, size: int, rows: np.ndarray, cols: np.ndarray, scores: np.ndarray) -> Graph:
        order = np.argsort(rows, kind="stable")
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=size))])
        return cls(size, indptr, cols[order].astype(int), scores[order].astype(np.float64))

    def row_sum(self, items: np.ndarray) -> np.ndarray:
        """Dense [size] sum of the rows of `items`."""
        out = np.zeros(self.size)
        for i in items:
            lo, hi = self.indptr[i], self.indptr[i + 1]
            np.add.at(out, self.indices[lo:hi], self.scores[lo:hi])
        return out

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Dense [len(items), size] rows of `items`."""
        return np.stack([self.row_sum([i]) for i in items]) if len(items) else np.zeros((0, self.size))


@dataclass
class Catalog:
    ids: np.ndarray  # [N] video ids
    split: np.ndarray  # [N] train / validation / cold_test
    popularity: np.ndarray  # [N] training-period distinct users
    support: np.ndarray  # [N] training-period co-watch support (video_stats.user_days)
    graph: Graph  # training co-watch scores
    raw: np.ndarray  # [N, D] unit-norm concatenated content features
    genres: list[list[str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class MetricRow:
    task: str
    method: str
    item_split: str
    metric: str
    k: int | None
    value: float
    support: int


def _vector_scorer(matrix: np.ndarray) -> Scorer:
    """Mean cosine to the group's items (unit rows of `matrix`)."""
    return lambda groups: np.stack([matrix[g].mean(axis=0) for g in groups]) @ matrix.T


def scorers(catalog: Catalog, vectors: dict[str, np.ndarray], seed: int) -> dict[str, Scorer]:
    """Every method's scorer: baselines plus one per entry of `vectors` (name -> [N, d] unit rows)."""
    rng = np.random.default_rng(seed)
    tie_break = 1e-6 * catalog.popularity / max(catalog.popularity.max(), 1.0)
    out: dict[str, Scorer] = {
        "random": lambda groups: rng.random((len(groups), catalog.size)),
        "popularity": lambda groups: np.tile(catalog.popularity.astype(float), (len(groups), 1)),
        "cooccurrence_cf": lambda groups: np.stack([catalog.graph.row_sum(g) for g in groups]) + tie_break,
        "raw_features": _vector_scorer(catalog.raw),
    }
    out.update({name: _vector_scorer(matrix) for name, matrix in vectors.items()})
    return out


def related_method(vector_method: str) -> str:
    """The blend method of a `cdml_<fusion>` vector method: `related_<fusion>`."""
    return vector_method.replace("cdml_", "related_", 1)


def related_scorers(
    catalog: Catalog, vectors: dict[str, np.ndarray], half_weight: float
) -> dict[str, Scorer]:
    """`related_<fusion>` per `cdml_<fusion>` entry of `vectors`: `blend` of the query's co-watch row
    and its cosines (computed as `cdml_<fusion>` computes them), weighted by the query's support. A
    query is one video."""

    def related_scorer(matrix: np.ndarray) -> Scorer:
        cosine = _vector_scorer(matrix)

        def score(groups: list[np.ndarray]) -> np.ndarray:
            queries = np.array([g.item() for g in groups], dtype=int)
            cowatch = catalog.graph.rows(queries)
            return blend(cowatch, cosine(groups), catalog.support[queries][:, None], half_weight)

        return score

    return {
        related_method(name): related_scorer(matrix)
        for name, matrix in vectors.items()
        if name.startswith("cdml_")
    }


def _defined(task: str, method: str, item_split: str) -> bool:
    """Co-occurrence CF is undefined for cold items (they have no co-watch data); a `related_*` list
    ranks videos like one video: retrieval only."""
    if method.startswith("related_"):
        return task == "retrieval"
    return not (method == "cooccurrence_cf" and item_split == "cold")


def _ranked(
    scorer: Scorer, groups: list[np.ndarray], excluded: list[np.ndarray], allowed: np.ndarray | None, k: int
) -> Iterator[np.ndarray]:
    """Top-k item indices per query, in chunks (memory O(_CHUNK · N))."""
    for start in range(0, len(groups), _CHUNK):
        scores = np.array(scorer(groups[start : start + _CHUNK]), dtype=np.float64)
        for row, skip in enumerate(excluded[start : start + _CHUNK]):
            scores[row, skip] = -np.inf
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        yield from rank_items(scores, k)


def _ranking_rows(
    task: str,
    method: str,
    item_split: str,
    ranked: list[np.ndarray],
    relevant: list[set],
    metrics: list[tuple[str, int]],
) -> list[MetricRow]:
    return [
        MetricRow(
            task, method, item_split, name, k, mean_ranking_metric(name, ranked, relevant, k), len(relevant)
        )
        for name, k in metrics
    ]


def retrieval(
    catalog: Catalog, methods: dict[str, Scorer], relevant: dict[int, set[int]], ks: list[int]
) -> list[MetricRow]:
    """Query = a video with ≥ 1 held-out co-watch neighbour; candidates = the whole catalog but the
    query. Reported separately for warm queries (split train, watched in the training period) and
    cold ones (split cold_test)."""
    rows = []
    warm = (catalog.split == "train") & (catalog.popularity > 0)
    for item_split, members in (("warm", warm), ("cold", catalog.split == "cold_test")):
        queries = [q for q in sorted(relevant) if members[q]]
        if not queries:
            continue
        metrics = [(m, k) for k in ks for m in ("ndcg", "map")]
        for method, scorer in methods.items():
            if not _defined("retrieval", method, item_split):
                continue
            groups = [np.array([q]) for q in queries]
            ranked = list(_ranked(scorer, groups, groups, None, max(ks)))
            rows += _ranking_rows(
                "retrieval", method, item_split, ranked, [relevant[q] for q in queries], metrics
            )
    return rows


@dataclass(frozen=True)
class Users:
    history: list[np.ndarray]  # most recent training-period watches (the user's profile)
    watched: list[np.ndarray]  # every training-period watch (never recommended)
    test: list[set[int]]  # held-out later watches


def recommendation(catalog: Catalog, methods: dict[str, Scorer], users: Users, k: int) -> list[MetricRow]:
    """Rank unwatched items per user by the method's score; `all` candidates, then cold items only
    (candidates and relevant restricted to split cold_test; users with ≥ 1 such test item)."""
    rows = []
    cold = catalog.split == "cold_test"
    metrics = [("ndcg", k), ("map", k), ("recall", k)]
    for item_split, allowed in (("all", None), ("cold", cold)):
        relevant = [t if allowed is None else {i for i in t if allowed[i]} for t in users.test]
        keep = [u for u, r in enumerate(relevant) if r and len(users.history[u])]
        if not keep:
            continue
        for method, scorer in methods.items():
            if not _defined("recommendation", method, item_split):
                continue
            groups = [users.history[u] for u in keep]
            ranked = list(_ranked(scorer, groups, [users.watched[u] for u in keep], allowed, k))
            rows += _ranking_rows(
                "recommendation", method, item_split, ranked, [relevant[u] for u in keep], metrics
            )
    return rows


def _fit_one_vs_rest(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 200) -> Callable:
    """One-vs-rest logistic regression (independent sigmoid per class, L2 penalty), fitted with
    L-BFGS; returns a function x -> class probabilities."""
    import torch

    torch.manual_seed(0)
    features, targets = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    linear = torch.nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(linear(features), targets) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda new: torch.sigmoid(linear(torch.from_numpy(new.astype(np.float32)))).detach().numpy()


def classification(
    catalog: Catalog, vectors: dict[str, np.ndarray], gap_k: int, seed: int
) -> list[MetricRow]:
    """Multi-label genre prediction: fit on warm videos (split train), test on cold_test videos, whose
    embeddings no training step saw. Baselines: random scores and the class prior (genre frequency)."""
    vocab = sorted({g for gs in catalog.genres for g in gs})
    labels = np.array([[g in gs for g in vocab] for gs in catalog.genres], dtype=bool)
    train, test = catalog.split == "train", catalog.split == "cold_test"
    if not test.any() or not vocab:
        return []
    y_test = labels[test]
    predictions = {
        "random": np.random.default_rng(seed).random(y_test.shape),
        "genre_prior": np.tile(labels[train].mean(axis=0), (int(test.sum()), 1)),
    }
    for name, matrix in {"raw_features": catalog.raw, **vectors}.items():
        predictions[name] = _fit_one_vs_rest(matrix[train], labels[train])(matrix[test])
    support = int(test.sum())
    return [
        row
        for name, scores in predictions.items()
        for row in (
            MetricRow(
                "classification",
                name,
                "cold",
                "gap",
                gap_k,
                global_average_precision(scores, y_test, gap_k),
                support,
            ),
            MetricRow(
                "classification", name, "cold", "map", None, mean_average_precision(scores, y_test), support
            ),
        )
    ]
