"""The run report's plots: matplotlib (Agg backend, no display) figures returned as base64 PNG, so report.html
embeds them and opens from disk or in Colab with no network. Pure: data in, image out."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless CI machine or a TPU VM has no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

WIDTH = 6.2  # inches; at DPI 90 a plot is ~560 px wide: two side by side in the report's 1180 px
DPI = 90
COLORS = ("#3b6ea5", "#d9822b", "#5a9e4b", "#b04a5a", "#7d5ba6")


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def funnel(rows: Sequence[tuple[str, int, int]]) -> str:
    """(stage, records in, records out) per stage, top to bottom: the out bar drawn over the in bar."""
    names = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(WIDTH, 0.45 * len(rows) + 1.0))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [r[1] for r in rows], color="#d9d9d9", label="records in")
    ax.barh(y, [r[2] for r in rows], color=COLORS[0], label="records out")
    for yi, (_, n_in, n_out) in zip(y, rows):
        share = f" ({n_out / n_in:.0%})" if n_in else ""
        ax.text(max(n_in, n_out), yi, f" {n_out:,}{share}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlabel("records")
    ax.set_xlim(0, 1.25 * max([max(r[1], r[2]) for r in rows] + [1]))
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def histograms(series: Mapping[str, Sequence[float]], xlabel: str, *, threshold: float | None = None,
               threshold_label: str = "threshold", bins: int = 30) -> str:
    """Overlaid histograms (share of each series' rows per bin; series are bounded samples) on shared bins, with
    an optional vertical threshold line."""
    values = [np.asarray(v, float) for v in series.values() if len(v)]
    if not values:
        raise ValueError(f"no values to plot for {xlabel!r}")
    low = min(float(v.min()) for v in values)
    high = max(float(v.max()) for v in values)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0))
    for color, (label, v) in zip(COLORS, series.items()):
        v = np.asarray(v, float)
        if len(v):
            ax.hist(v, bins=edges, weights=np.full(len(v), 1.0 / len(v)), alpha=0.55, color=color,
                    label=f"{label} (n={len(v):,})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"{threshold_label} {threshold:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of rows")
    ax.legend(fontsize=8)
    return _png(fig)


def curves(metrics: Mapping[str, Mapping[str, Sequence[Sequence[float]]]]) -> str:
    """One panel per metric: its train values by step (a line) and its eval values (markers)."""
    names = list(metrics)
    if not names:
        raise ValueError("no training metrics to plot")
    fig, axes = plt.subplots(1, len(names), figsize=(WIDTH, 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for kind, style in (("train", {"color": COLORS[0], "linewidth": 1.2}),
                            ("eval", {"color": COLORS[1], "marker": "o", "linestyle": "--"})):
            points = np.asarray(metrics[name].get(kind) or [], float).reshape(-1, 2)
            if len(points):
                ax.plot(points[:, 0], points[:, 1], label=kind, **style)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return _png(fig)


def bars(values: Mapping[str, float], xlabel: str) -> str:
    """Horizontal bars, one per label, top to bottom, each with its value."""
    labels = list(values)
    fig, ax = plt.subplots(figsize=(WIDTH, 0.32 * len(labels) + 1.0))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, list(values.values()), color=COLORS[0])
    for yi, v in zip(y, values.values()):
        ax.text(v, yi, f" {v:,.1f}", va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, 1.15 * max(list(values.values()) + [1e-9]))
    return _png(fig)
