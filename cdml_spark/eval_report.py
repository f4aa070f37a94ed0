"""The evaluation report: `report.md` with one table and one bar chart (PNG) per dataset and task."""

from __future__ import annotations

import os

import pandas as pd

TASK_NOTES = {
    "retrieval": "query = a video with held-out co-watch neighbours; warm = train-split videos watched in the "
    "training period, cold = cold_test videos (no training-period watches, never in a triplet). cooccurrence_cf is undefined for cold videos (no co-watch data).",
    "recommendation": "users with >= min_test_items held-out videos; all = every unwatched catalog video is a "
    "candidate, cold = only cold_test videos (users with >= 1 held-out cold video).",
    "classification": "multi-label genres; one-vs-rest logistic regression fitted on train videos, scored on "
    "cold_test videos (GAP@k = YouTube-8M global average precision, MAP = mean over genres).",
}


def column_label(row: pd.Series) -> str:
    at = "" if pd.isna(row["k"]) else f"@{int(row['k'])}"
    return f"{row['metric']}{at} {row['item_split']}"


def pivot(frame: pd.DataFrame) -> pd.DataFrame:
    """method × 'metric@k split' table of values, columns in a stable order."""
    frame = frame.assign(column=frame.apply(column_label, axis=1))
    order = frame.sort_values(["item_split", "metric", "k"], ascending=[False, True, True])["column"].unique()
    methods = list(dict.fromkeys(frame["method"]))
    return frame.pivot_table(index="method", columns="column", values="value").reindex(methods)[list(order)]


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


def write_report(metrics: pd.DataFrame, counts: dict[str, dict], report_dir: str, header: list[str]) -> str:
    """Write report.md and its PNGs into `report_dir`; returns the report path."""
    os.makedirs(report_dir, exist_ok=True)
    lines = ["# CDML evaluation", "", *header, ""]
    for dataset, by_dataset in metrics.groupby("dataset", sort=False):
        lines += [f"## {dataset}", "", f"Counts: {counts.get(dataset, {})}", ""]
        for task, rows in by_dataset.groupby("task", sort=False):
            table = pivot(rows)
            png = f"{dataset}_{task}.png"
            plot_task(table, f"{dataset}: {task}", os.path.join(report_dir, png))
            lines += [
                f"### {task}",
                "",
                TASK_NOTES.get(task, ""),
                "",
                markdown_table(table),
                "",
                f"![{task}]({png})",
                "",
            ]
    path = os.path.join(report_dir, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path
