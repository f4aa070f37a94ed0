"""The evaluation report: `report.md` with, per dataset and protocol, a headline table, then one table
and one bar chart (PNG) per task."""

from __future__ import annotations

import os

import pandas as pd

__all__ = ["headline", "markdown_table", "pivot", "plot_task", "write_report"]

_RELATED_NOTE = (
    "related_<fusion> = the related_videos blend: w(s) · co-watch score + (1 − w(s)) · cdml_<fusion> "
    "cosine, w(s) = s / (s + related.support_half_weight), s = the query's training co-watch support."
)
_TASK_NOTES = {  # protocol -> task -> note
    "time_split": {
        "retrieval": "truth = the held-out period's co-watch graph (the cowatch_edges rule: cosine, top "
        "max_neighbors); query = a video with held-out co-watch neighbours; warm = train-split videos watched "
        "in the training period, cold = cold_test videos (no training-period watches, never in a triplet). "
        "cooccurrence_cf is undefined for cold videos (no co-watch data). " + _RELATED_NOTE,
        "recommendation": "users with >= min_test_items held-out videos; all = every unwatched catalog video "
        "is a candidate, cold = only cold_test videos (users with >= 1 held-out cold video).",
        "classification": "multi-label genres; one-vs-rest logistic regression fitted on train videos, "
        "scored on cold_test videos (GAP@k = YouTube-8M global average precision, MAP = mean over genres).",
    },
    "user_holdout": {
        "retrieval": "truth = the held-out users' co-watch graph (every one of their watches, the cowatch_edges "
        "rule: cosine, top max_neighbors); query = a "
        "video with neighbours in it; warm = train-split videos watched by the training users, cold = "
        "cold_test videos (no training event at all). cooccurrence_cf is undefined for cold videos. "
        + _RELATED_NOTE,
    },
}
_METHOD_ORDER = [
    "random",
    "popularity",
    "genre_prior",
    "cooccurrence_cf",
    "raw_features",
    "cdml_early",
    "cdml_late",
    "related_early",
    "related_late",
]
# protocol -> headline columns: (label, task, metric, k, item_split)
_HEADLINES: dict[str, list[tuple[str, str, str, int, str]]] = {
    "time_split": [
        ("retr ndcg@10 warm", "retrieval", "ndcg", 10, "warm"),
        ("retr ndcg@10 cold", "retrieval", "ndcg", 10, "cold"),
        ("rec ndcg@10 all", "recommendation", "ndcg", 10, "all"),
        ("rec ndcg@10 cold", "recommendation", "ndcg", 10, "cold"),
        ("genre gap@20", "classification", "gap", 20, "cold"),
    ],
    "user_holdout": [
        ("retr ndcg@10 warm", "retrieval", "ndcg", 10, "warm"),
        ("retr ndcg@10 cold", "retrieval", "ndcg", 10, "cold"),
        ("retr map@10 warm", "retrieval", "map", 10, "warm"),
        ("retr map@10 cold", "retrieval", "map", 10, "cold"),
    ],
}


def _column_label(row: pd.Series) -> str:
    at = "" if pd.isna(row["k"]) else f"@{int(row['k'])}"
    return f"{row['metric']}{at} {row['item_split']}"


def _method_order(methods: list[str]) -> list[str]:
    """Baselines first, then CDML, in _METHOD_ORDER (unknown methods last, by name)."""
    return sorted(set(methods), key=lambda m: (_METHOD_ORDER.index(m) if m in _METHOD_ORDER else 99, m))


def pivot(frame: pd.DataFrame) -> pd.DataFrame:
    """method × 'metric@k split' table of values, columns in a stable order."""
    frame = frame.assign(column=frame.apply(_column_label, axis=1))
    order = frame.sort_values(["item_split", "metric", "k"], ascending=[False, True, True])["column"].unique()
    methods = list(dict.fromkeys(frame["method"]))
    return frame.pivot_table(index="method", columns="column", values="value").reindex(methods)[list(order)]


def headline(frame: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """method × headline column (_HEADLINES[protocol]) of one dataset's rows for `protocol`; NaN where
    a method has no such metric (e.g. cooccurrence_cf on cold videos)."""
    rows = frame[frame["protocol"] == protocol] if "protocol" in frame else frame
    value = {
        (r.method, r.task, r.metric, None if pd.isna(r.k) else int(r.k), r.item_split): r.value
        for r in rows.itertuples()
    }
    columns = _HEADLINES.get(protocol, [])
    table = {
        label: [value.get((m, task, metric, k, split)) for m in _method_order(list(rows["method"]))]
        for label, task, metric, k, split in columns
    }
    return pd.DataFrame(table, index=_method_order(list(rows["method"])), dtype=float)


def markdown_table(table: pd.DataFrame) -> str:
    header = ["method", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, values in table.iterrows():
        cells = ["—" if pd.isna(v) else f"{v:.4f}" for v in values]
        lines.append("| " + " | ".join([str(method), *cells]) + " |")
    return "\n".join(lines)


def plot_task(table: pd.DataFrame, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(table.columns)), 4))
    table.T.plot.bar(ax=ax, width=0.8)
    ax.set_title(title)
    ax.set_ylabel("value")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _section(rows: pd.DataFrame, dataset: str, protocol: str, counts: dict, report_dir: str) -> list[str]:
    """Markdown of one (dataset, protocol): counts, headline table, then a table and a PNG per task."""
    lines = [
        f"## {dataset} — {protocol}",
        "",
        f"Counts: {counts}",
        "",
        markdown_table(headline(rows, protocol)),
        "",
    ]
    for task, by_task in rows.groupby("task", sort=False):
        table = pivot(by_task)
        png = f"{dataset}_{protocol}_{task}.png"
        plot_task(table, f"{dataset} ({protocol}): {task}", os.path.join(report_dir, png))
        note = _TASK_NOTES.get(protocol, {}).get(task, "")
        lines += [f"### {task}", "", note, "", markdown_table(table), "", f"![{task}]({png})", ""]
    return lines


def write_report(
    metrics: pd.DataFrame, counts: dict[str, dict[str, dict]], report_dir: str, header: list[str]
) -> str:
    """Write report.md and its PNGs into `report_dir` (`counts`: dataset -> protocol -> counts); returns
    the report path."""
    os.makedirs(report_dir, exist_ok=True)
    lines = ["# CDML evaluation", "", *header, ""]
    for (dataset, protocol), rows in metrics.groupby(["dataset", "protocol"], sort=False):
        lines += _section(rows, dataset, protocol, counts.get(dataset, {}).get(protocol, {}), report_dir)
    path = os.path.join(report_dir, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path
