"""Plots generated with the tables, from the same numbers: accuracy against cost, sweep curves.

Each figure is a PNG next to its table, embedded in the Markdown. They are drawn from the table's
numeric frame (:func:`benchbase.leaderboard.build_table`), never from anything else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

THROUGHPUT = "train/images_per_second"
CI_SUFFIX = "_ci95"
_VARIANT = re.compile(r"^(?P<method>[^ ]+) \((?P<param>[^=,]+)=(?P<value>[^,)]+)\)$")


PARAMS = "cost/params_m"
COSTS = {THROUGHPUT: "training images/s", PARAMS: "parameters (M)"}
"""Cost columns that metrics are plotted against, with their axis labels."""


_drawing = True


@contextmanager
def paths_only() -> Iterator[None]:
    """Inside this block the plot functions return the paths they would write without drawing them
    (for :func:`benchbase.leaderboard.check`, which compares only the tables' text)."""
    global _drawing
    saved, _drawing = _drawing, False
    try:
        yield
    finally:
        _drawing = saved


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a table frame (those with a ``_ci95`` twin), cost columns left out."""
    return [c for c in df.columns if c + CI_SUFFIX in df.columns and c != THROUGHPUT and not c.startswith("cost/")]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def cost_plot(df: pd.DataFrame, path: Path, title: str, cost: str = THROUGHPUT) -> Path | None:
    """Each metric against the model's ``cost`` column (a key of :data:`COSTS`), one point per row.

    Returns the written PNG, or None when the table has no such column or no metric.
    """
    metrics = metric_columns(df)
    if cost not in df.columns or not metrics:
        return None
    rows = df[df[cost].map(_finite)]
    if rows.empty:
        return None
    if not _drawing:
        return path
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    for ax, column in zip(axes[0], metrics):
        for _, row in rows.iterrows():
            if not _finite(row[column]):
                continue
            ci = row[column + CI_SUFFIX]
            ax.errorbar(row[cost], row[column], yerr=ci if _finite(ci) else None, fmt="o", capsize=3)
            ax.annotate(row["method"], (row[cost], row[column]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(COSTS[cost])
        ax.set_title(column, fontsize=9)
    fig.suptitle(f"{title}: metric vs {COSTS[cost]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_plots(df: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """For each method swept over one numeric parameter, each metric against that parameter with
    its 95% band; returns the written PNGs (``<name>-<method>-<param>.png``)."""
    groups: dict[tuple[str, str], list[tuple[float, pd.Series]]] = {}
    for _, row in df.iterrows():
        match = _VARIANT.match(str(row["method"]))
        if not match:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        groups.setdefault((match["method"], match["param"]), []).append((value, row))
    written = []
    metrics = metric_columns(df)
    for (method, param), points in sorted(groups.items()):
        if len(points) < 2 or not metrics:
            continue
        path = out_dir / f"{name}-{method}-{param}.png"
        written.append(curve_plot(points, metrics, param, f"{name}: {method} swept over {param} (95% band)", path))
    return written


MIN_HALF_SPAN = 1.0
"""Curves show at least ±1 unit (a point of accuracy or IoU) around their middle."""


def curve_plot(points: list[tuple[float, pd.Series]], metrics: list[str], xlabel: str, title: str,
               path: Path) -> Path:
    """Each metric column of the table rows in ``points`` against their x value, with the 95% band
    of its ``_ci95`` column (no band where a row has none); one panel per metric."""
    if not _drawing:
        return path
    points = sorted(points, key=lambda p: p[0])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    for ax, column in zip(axes[0], metrics):
        ax.set_xlabel(xlabel)
        ax.set_title(column, fontsize=9)
        shown = [(x, r) for x, r in points if _finite(r[column])]  # a row without this metric has no point
        if not shown:
            continue
        xs, ys = [x for x, _ in shown], [float(r[column]) for _, r in shown]
        cis = [float(r[column + CI_SUFFIX]) if _finite(r[column + CI_SUFFIX]) else 0.0 for _, r in shown]
        ax.plot(xs, ys, marker="o")
        low, high = [y - c for y, c in zip(ys, cis)], [y + c for y, c in zip(ys, cis)]
        ax.fill_between(xs, low, high, alpha=0.25)
        middle, half = (min(low) + max(high)) / 2, max((max(high) - min(low)) / 2 * 1.1, MIN_HALF_SPAN)
        ax.set_ylim(middle - half, middle + half)  # a flat curve looks flat, not zoomed to its noise
        ax.ticklabel_format(axis="y", useOffset=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
