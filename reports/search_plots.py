"""Figures of a search analysis (``reports.search_analysis``): parameter importances, parallel
coordinates, the p × λ scatter and the optimisation history.

Made without pyplot, like ``reports.plots``. Recalls are drawn in percent. In the scatter and
the parallel coordinates every finished run is one mark or line, coloured by its mR@100.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from reports.search_analysis import PARAM_LABELS, best_so_far
from sgstudy.errors import UserError
from sgstudy.metric_names import display_name

COLOR_METRIC = "mR_100"
CMAP = "viridis"
BAR_COLOR = "#4575b4"


def importance_figure(importances: dict[str, float], n_trials: int) -> Figure:
    """Horizontal bars of fANOVA importance, most important on top."""
    names = list(importances)[::-1]
    fig = Figure(figsize=(5.5, 0.5 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([PARAM_LABELS.get(n, n) for n in names], [importances[n] for n in names],
            color=BAR_COLOR)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_xlabel("fANOVA importance (share of the variance of mR@50)")
    ax.set_title(f"Parameter importance over {n_trials} trials")
    return fig


def color_scale(runs: pd.DataFrame) -> tuple[Normalize, object]:
    values = 100 * runs[COLOR_METRIC].to_numpy(dtype=float)
    low, high = np.nanmin(values), np.nanmax(values)
    return Normalize(low, high if high > low else low + 1e-6), colormaps[CMAP]


def aligned_runs(runs: pd.DataFrame) -> pd.DataFrame:
    rows = runs[runs["align"] & runs["p"].notna() & runs["lambda"].notna()]
    rows = rows[rows[COLOR_METRIC].notna()]
    if rows.empty:
        raise UserError("no finished aligned run with p, λ and mR@100 to plot")
    return rows


def scatter_figure(runs: pd.DataFrame) -> Figure:
    """p against λ (log axis), one point per finished aligned run, coloured by mR@100."""
    rows = aligned_runs(runs)
    norm, cmap = color_scale(rows)
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    points = ax.scatter(rows["p"], rows["lambda"], c=100 * rows[COLOR_METRIC], cmap=cmap,
                        norm=norm, s=60, edgecolors="black", linewidths=0.5)  # fmt: skip
    best = rows.loc[rows[COLOR_METRIC].idxmax()]
    ax.scatter([best["p"]], [best["lambda"]], marker="*", s=260, facecolors="none",
               edgecolors="red", linewidths=1.2, label="best mR@100")  # fmt: skip
    if (rows["lambda"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("masking ratio p")
    ax.set_ylabel("loss weight λ")
    ax.set_title(f"p × λ of {len(rows)} runs, coloured by {display_name(COLOR_METRIC)}")
    ax.legend(fontsize=8, loc="best")
    fig.colorbar(points, ax=ax, label=f"{display_name(COLOR_METRIC)} (%)")
    return fig


def parallel_figure(runs: pd.DataFrame) -> Figure:
    """Parallel coordinates: p, log10 λ, mR@50 and mR@100, each axis scaled to its own range
    (its ends labelled), one line per finished aligned run coloured by mR@100."""
    rows = aligned_runs(runs)
    axes = [("p", rows["p"].to_numpy(float), "{:.3g}"),
            ("λ", rows["lambda"].to_numpy(float), "{:.3g}"),
            ("mR@50 (%)", 100 * rows["mR_50"].to_numpy(float), "{:.1f}"),
            ("mR@100 (%)", 100 * rows["mR_100"].to_numpy(float), "{:.1f}")]  # fmt: skip
    scaled = []
    for name, values, _ in axes:
        shown = np.log10(values) if name == "λ" and (values > 0).all() else values
        low, high = np.nanmin(shown), np.nanmax(shown)
        scaled.append((shown - low) / (high - low) if high > low else np.full_like(shown, 0.5))
    norm, cmap = color_scale(rows)
    colors = cmap(norm(100 * rows[COLOR_METRIC].to_numpy(float)))
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(axes))
    for i in np.argsort(rows[COLOR_METRIC].to_numpy(float)):  # best drawn last, on top
        ax.plot(x, [column[i] for column in scaled], color=colors[i], linewidth=1.5, alpha=0.9)
    for j, (_, values, fmt) in enumerate(axes):
        ax.axvline(j, color="black", linewidth=0.8)
        ax.text(j, -0.06, fmt.format(np.nanmin(values)), ha="center", va="top", fontsize=8)
        ax.text(j, 1.04, fmt.format(np.nanmax(values)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [name for name, _, _ in axes])
    ax.set_ylim(-0.15, 1.15)
    ax.set_yticks([])
    ax.set_title(f"Parallel coordinates of {len(rows)} runs (λ on a log scale)", pad=14)
    mappable = ax.scatter([], [], c=[], cmap=cmap, norm=norm)
    fig.colorbar(mappable, ax=ax, label=f"{display_name(COLOR_METRIC)} (%)")
    return fig


def history_figure(values: list[float]) -> Figure:
    """Each trial's searched value (mR@50, %) in trial order and the best so far."""
    if not values:
        raise UserError("no complete Optuna trial to draw the optimisation history of")
    trial = np.arange(1, len(values) + 1)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(trial, 100 * np.asarray(values), color=BAR_COLOR, label="trial", zorder=3)
    ax.step(trial, 100 * np.asarray(best_so_far(values)), where="post", color="red",
            label="best so far")  # fmt: skip
    ax.set_xlabel("trial number")
    ax.set_ylabel("mR@50 (%)")
    ax.set_title("Optimisation history")
    ax.set_xticks(trial if len(trial) <= 25 else np.linspace(1, len(trial), 10, dtype=int))
    ax.legend(fontsize=8)
    return fig
