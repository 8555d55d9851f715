"""Figures: per-predicate R@K difference (Align supplement Figure 2), per-predicate R@K of one
method, and sensitivity curves of mean recall against p or λ.

Every function returns a ``matplotlib.figure.Figure`` (made without pyplot, so nothing is
shown or kept alive); ``save_figure`` writes PNG and SVG. In the bar figures the bars are the
axes' ``BarContainer`` (``ax.containers``), heights in percent or percentage points, one per
predicate, left to right in plot order; the head/body/tail regions are extra ``ax.patches``.

Plot order of predicates: by head/body/tail group (predicates of no group last), and within a
group by training frequency descending (the artifact's ``train_counts``; ties by predicate
id). When the partition follows training frequency, as for the synthetic dataset, this is
plain frequency order; for VG150's published partition it keeps each region contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sgstudy import metric_names
from sgstudy.errors import UserError

# Figures are built without pyplot; the backend is still pinned so that nothing a report
# does can try to open a window on a server without a display.
matplotlib.use("Agg")

POSITIVE_COLOR = "#1b7837"
NEGATIVE_COLOR = "#b2182b"
ZERO_COLOR = "#999999"
BAR_COLOR = "#4575b4"
GROUP_SHADES = {"head": "#d1e5f0", "body": "#f0f0f0", "tail": "#fddbc7"}
GROUP_LETTERS = {"head": "H", "body": "B", "tail": "T"}
# A difference smaller than this (in recall fraction) counts as a tie, not an improvement:
# means of identical values in another order can differ in the last bits.
TIE_TOLERANCE = 1e-9
PARAM_AXES = {"p": ("masking ratio p", "linear"), "lambda": ("loss weight λ", "log")}


@dataclass(frozen=True)
class PredicateRecall:
    """Recall@K of one method per predicate, in plot order.

    mean, std: (P,) fractions over the method's runs (std NaN with a single run).
    """

    method: str
    k: int
    names: list[str]
    groups: list[str]
    train_counts: list[int]
    mean: np.ndarray
    std: np.ndarray
    n_runs: int


def predicate_recall(per_predicate: pd.DataFrame, method: str, k: int) -> PredicateRecall:
    """Mean and std over the runs of ``method`` of each predicate's R@K."""
    rows = per_predicate[(per_predicate["method"] == method) & (per_predicate["k"] == k)]
    if rows.empty:
        raise UserError(f"method {method!r} has no per-predicate R@{k} (no recall artifact)")
    table = rows.pivot_table(index="predicate", columns="run_id", values="recall")
    info = rows.drop_duplicates("predicate").set_index("predicate")
    group_rank = {group: i for i, group in enumerate(metric_names.PREDICATE_GROUPS)}
    info = info.assign(
        group_rank=[group_rank.get(g, len(group_rank)) for g in info["group"]],
        neg_count=-info["train_count"],
    ).sort_values(["group_rank", "neg_count", "predicate_id"])
    table = table.reindex(info.index)
    return PredicateRecall(
        method=method,
        k=k,
        names=list(info.index),
        groups=list(info["group"]),
        train_counts=[int(c) for c in info["train_count"]],
        mean=table.mean(axis=1).to_numpy(),
        std=table.std(axis=1, ddof=1).to_numpy(),
        n_runs=table.shape[1],
    )


def difference_figure(per_predicate: pd.DataFrame, a: str, b: str, k: int = 100) -> Figure:
    """Bars of R@K(a) − R@K(b) per predicate, in percentage points.

    Means over each method's runs; with several runs the error bar is the std of the
    difference of two independent runs, sqrt(std_a² + std_b²). Positive bars are green,
    negative red, exact ties grey; the title counts the predicates where ``a`` is better.
    """
    rec_a, rec_b = predicate_recall(per_predicate, a, k), predicate_recall(per_predicate, b, k)
    if sorted(rec_a.names) != sorted(rec_b.names):
        raise UserError(f"{a!r} and {b!r} were evaluated on different predicate sets")
    mean_b = pd.Series(rec_b.mean, index=rec_b.names).reindex(rec_a.names).to_numpy()
    std_b = pd.Series(rec_b.std, index=rec_b.names).reindex(rec_a.names).to_numpy()
    diff = rec_a.mean - mean_b
    colors = [difference_color(d) for d in diff]
    errors = None
    if rec_a.n_runs > 1 or rec_b.n_runs > 1:
        errors = 100.0 * np.sqrt(np.nan_to_num(rec_a.std) ** 2 + np.nan_to_num(std_b) ** 2)
    better = int((diff > TIE_TOLERANCE).sum())
    fig, ax = bar_axes(len(rec_a.names))
    ax.bar(range(len(diff)), 100.0 * diff, color=colors, yerr=errors, capsize=2, zorder=2)
    ax.axhline(0.0, color="black", linewidth=0.8, zorder=3)
    finish_predicate_axes(ax, rec_a)
    ax.set_ylabel(f"R@{k} difference (points)")
    runs = f"mean of {rec_a.n_runs} vs {rec_b.n_runs} runs"
    title = f"Per-predicate R@{k}: {a} − {b}\n"
    ax.set_title(title + f"better on {better} of {len(diff)} predicates ({runs})", pad=18)
    return fig


def difference_color(difference: float) -> str:
    if difference > TIE_TOLERANCE:
        return POSITIVE_COLOR
    return NEGATIVE_COLOR if difference < -TIE_TOLERANCE else ZERO_COLOR


def per_predicate_figure(per_predicate: pd.DataFrame, method: str, k: int = 100) -> Figure:
    """Bars of one method's R@K per predicate in percent, std error bars with several runs."""
    rec = predicate_recall(per_predicate, method, k)
    errors = 100.0 * np.nan_to_num(rec.std) if rec.n_runs > 1 else None
    fig, ax = bar_axes(len(rec.names))
    ax.bar(range(len(rec.names)), 100.0 * rec.mean, color=BAR_COLOR, yerr=errors, capsize=2,
           zorder=2)  # fmt: skip
    finish_predicate_axes(ax, rec)
    ax.set_ylabel(f"R@{k} (%)")
    mean_recall = 100.0 * float(np.mean(rec.mean))
    title = f"Per-predicate R@{k}: {method}\n"
    ax.set_title(title + f"mR@{k} = {mean_recall:.1f} (mean of {rec.n_runs} runs)", pad=18)
    return fig


def bar_axes(num_bars: int) -> tuple[Figure, object]:
    fig = Figure(figsize=(max(6.0, 0.22 * num_bars + 1.5), 4.2), layout="constrained")
    return fig, fig.add_subplot()


def finish_predicate_axes(ax: object, rec: PredicateRecall) -> None:
    """Predicate tick labels and the shaded, lettered head/body/tail regions."""
    ax.set_xticks(range(len(rec.names)), rec.names, rotation=90, fontsize=7)
    ax.set_xlim(-0.5, len(rec.names) - 0.5)
    start = 0
    for end in range(1, len(rec.groups) + 1):
        if end < len(rec.groups) and rec.groups[end] == rec.groups[start]:
            continue
        group = rec.groups[start]
        if group in GROUP_SHADES:
            ax.axvspan(start - 0.5, end - 0.5, color=GROUP_SHADES[group], zorder=0, linewidth=0)
            # Just above the frame, where no bar or error bar can hide the letter.
            ax.text(
                (start + end - 1) / 2, 1.01, GROUP_LETTERS[group], transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontweight="bold",
            )  # fmt: skip
        start = end


def sensitivity_figure(
    summary: pd.DataFrame, param: str, keys: tuple[str, ...] = ("mR_50", "mR_100")
) -> Figure:
    """Mean recall (percent) of the aligned methods against ``param`` (``p``: linear axis,
    ``lambda``: log axis, symlog if a λ is 0), one line per metric and family, with each
    family's baseline as a dashed horizontal line in the same colour.

    ``summary`` comes from ``reports.tables.summarize`` with ``keys`` among its metrics.
    When the other parameter varies too (a search, not a grid) the points are not joined.
    """
    if param not in PARAM_AXES:
        raise ValueError(f"param must be one of {sorted(PARAM_AXES)}, got {param!r}")
    aligned = summary[summary["align"]].sort_values(param)
    if aligned.empty:
        raise UserError(f"no aligned runs to plot against {param}")
    other = "lambda" if param == "p" else "p"
    joined = aligned[other].nunique(dropna=True) <= 1
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    families = list(dict.fromkeys(aligned["family"]))
    for family in families:
        rows = aligned[aligned["family"] == family]
        baseline = summary[(summary["family"] == family) & ~summary["align"]]
        for key in keys:
            name = metric_names.display_name(key)
            label = name if len(families) == 1 else f"{family} {name}"
            std = rows[f"{key}_std"].fillna(0.0) if (rows["n"] > 1).any() else None
            line = ax.errorbar(
                rows[param], 100.0 * rows[f"{key}_mean"], yerr=None if std is None else 100 * std,
                marker="o", capsize=3, linestyle="-" if joined else "none", label=f"Align {label}",
            )  # fmt: skip
            for _, base in baseline.iterrows():
                ax.axhline(100.0 * base[f"{key}_mean"], linestyle="--", linewidth=1.2,
                           color=line.lines[0].get_color(), label=f"{base['method']} {name}")  # fmt: skip
    set_param_axis(ax, param, aligned[param].to_numpy())
    ax.set_ylabel("recall (%)")
    ax.set_title(f"Sensitivity to {PARAM_AXES[param][0]}")
    ax.legend(fontsize=8)
    return fig


def set_param_axis(ax: object, param: str, values: np.ndarray) -> None:
    label, scale = PARAM_AXES[param]
    ax.set_xlabel(label)
    if scale == "log" and (values <= 0).any():
        positive = values[values > 0]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
    else:
        ax.set_xscale(scale)
    ticks = np.unique(values)
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.minorticks_off()


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Writes ``stem.png`` and ``stem.svg``; returns their paths."""
    # Not with_suffix: a stem like ``..._p_0.1`` has a dot that is no suffix.
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1], metadata={"Date": None})  # a report rerun yields the same SVG
    return paths
