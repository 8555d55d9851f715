"""Ablation tables in the shape of the Align supplement's Tables 1 and 2.

One row per method (``reports.methods`` order), one column per metric. Cells are percent with
one decimal; with several runs a cell is ``mean ± std`` (sample std, ddof = 1; a single run
shows no ±) and a column ``n`` counts the runs of each row (shown only when some row has more
than one run, so single-seed studies print exactly the paper's shape). The best value of
each column is bold; the comparison is on the rounded mean as printed, so every row that
prints the maximum is bold (ties included). All table metrics (recalls, referring-relationship
IoUs) are higher-is-better.
Markdown, LaTeX (booktabs) and CSV (raw fractions, full precision) render the same summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from reports.methods import latex_escape
from sgstudy import metric_names
from sgstudy.errors import ConfigError

DEFAULT_METRICS: tuple[str, ...] = ("mR_50", "mR_100")
GROUP_TABLE_KS: tuple[int, ...] = (50, 100)
METHOD_HEADER = "Method"


@dataclass(frozen=True)
class Markup:
    """How one output format writes the pieces of a cell."""

    bold_open: str
    bold_close: str
    plus_minus: str
    missing: str
    latex: bool


MARKDOWN = Markup("**", "**", " ± ", "–", latex=False)
LATEX = Markup(r"\textbf{", "}", r" $\pm$ ", "--", latex=True)


def table_metrics(names: list[str] | None) -> list[str]:
    """Stored keys of the requested columns; accepts ``mR@50`` or ``mR_50``.

    Raises ``ConfigError`` naming an unknown metric and listing the valid ones.
    """
    if names is None:
        return list(DEFAULT_METRICS)
    valid = [
        *metric_names.all_recall_keys(),
        *metric_names.all_group_keys(),
        *metric_names.REFERRING_METRICS,
    ]
    keys = [metric_names.stored_name(name.strip()) for name in names if name.strip()]
    if not keys:
        raise ConfigError("--metrics names no metric; e.g. mR@50,mR@100")
    for name, key in zip(names, keys):
        if key not in valid:
            shown = ", ".join(metric_names.display_name(v) for v in valid)
            raise ConfigError(f"unknown metric {name!r} in --metrics; choose from {shown}")
    return keys


def group_metrics(ks: tuple[int, ...] = GROUP_TABLE_KS) -> list[str]:
    """Columns of the head/body/tail table: every group at each K, K-major."""
    return [metric_names.group_key(g, k) for k in ks for g in metric_names.PREDICATE_GROUPS]


def summarize(runs: pd.DataFrame, order: list[str], keys: list[str]) -> pd.DataFrame:
    """Per method, in ``order``: ``method``, ``method_tex``, ``family``, ``protocol``,
    ``align``, ``p``, ``lambda``, ``n`` and ``<key>_mean``/``<key>_std`` (fractions; the std
    is NaN for a single run)."""
    grouped = runs.groupby("method", sort=False)
    summary = grouped[["method_tex", "family", "protocol", "align", "p", "lambda"]].first()
    summary["n"] = grouped.size()
    for key in keys:
        summary[f"{key}_mean"] = grouped[key].mean()
        summary[f"{key}_std"] = grouped[key].std(ddof=1)
    summary = summary.reindex([m for m in order if m in summary.index])
    return summary.reset_index()


def percent(value: float) -> str:
    return f"{100.0 * value:.1f}"


def cells(summary: pd.DataFrame, keys: list[str], markup: Markup) -> list[list[str]]:
    """Body cells: method label, one formatted cell per key, then ``n`` when shown."""
    show_n = bool((summary["n"] > 1).any())
    columns = []
    for key in keys:
        means = [percent(v) if not math.isnan(v) else None for v in summary[f"{key}_mean"]]
        shown = [float(m) for m in means if m is not None]
        best = max(shown) if shown else None
        column = []
        for mean, std in zip(means, summary[f"{key}_std"]):
            if mean is None:
                column.append(markup.missing)
                continue
            cell = mean
            if best is not None and float(mean) == best:
                cell = f"{markup.bold_open}{mean}{markup.bold_close}"
            if not math.isnan(std):
                cell += f"{markup.plus_minus}{percent(std)}"
            column.append(cell)
        columns.append(column)
    labels = summary["method_tex" if markup.latex else "method"]
    rows = [[label, *(column[i] for column in columns)] for i, label in enumerate(labels)]
    if show_n:
        for row, n in zip(rows, summary["n"]):
            row.append(str(int(n)))
    return rows


def header(summary: pd.DataFrame, keys: list[str], latex: bool) -> list[str]:
    names = [metric_names.display_name(key) for key in keys]
    if latex:
        names = [latex_escape(name) for name in names]
    n = ["n"] if bool((summary["n"] > 1).any()) else []
    return [METHOD_HEADER, *names, *n]


def markdown_table(summary: pd.DataFrame, keys: list[str]) -> str:
    """A pipe table: method column left-aligned, numbers right-aligned."""
    head = header(summary, keys, latex=False)
    lines = [
        "| " + " | ".join(head) + " |",
        "|:---|" + "---:|" * (len(head) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells(summary, keys, MARKDOWN)]
    return "\n".join(lines) + "\n"


def latex_table(summary: pd.DataFrame, keys: list[str]) -> str:
    """A booktabs ``tabular`` (``l`` then ``r`` columns), ready for ``\\input``."""
    head = header(summary, keys, latex=True)
    lines = [
        rf"\begin{{tabular}}{{l{'r' * (len(head) - 1)}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
        *(" & ".join(row) + r" \\" for row in cells(summary, keys, LATEX)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def csv_table(summary: pd.DataFrame, keys: list[str]) -> str:
    """Raw fractions at full precision: method, settings, ``n``, then mean and std per key."""
    columns = ["method", "family", "protocol", "align", "p", "lambda", "n"]
    for key in keys:
        columns += [f"{key}_mean", f"{key}_std"]
    return summary[columns].to_csv(index=False)


def render(summary: pd.DataFrame, keys: list[str], fmt: str) -> str:
    """``fmt`` is ``md``, ``tex`` or ``csv``."""
    if fmt == "md":
        return markdown_table(summary, keys)
    if fmt == "tex":
        return latex_table(summary, keys)
    if fmt == "csv":
        return csv_table(summary, keys)
    raise ConfigError(f"unknown table format {fmt!r}; choose from md, tex, csv")
