"""Ablation tables in the shape of the Align supplement's Tables 1 and 2.

One row per method (``reports.methods`` order), one column per metric. Cells are percent with
one decimal; with several runs a cell is ``mean ± std`` (sample std, ddof = 1; a single run
shows no ±) and a column ``n`` counts the runs of each row (shown only when some row has more
than one run, so single-seed studies print exactly the paper's shape).

Statistics (``reports.statistics``): when some row has n ≥ 2, every Align row gets, per metric,
its difference to the baseline of its family with Welch's 95% interval, marked ``*`` when the
interval excludes 0. Bold: in a column where every row has n ≥ 2, every method whose 95%
interval of the mean overlaps the best mean's interval (the methods the data cannot rank below
the best); otherwise every row that prints the maximum (ties included), and the legend says
that no significance can be given. All table metrics (recalls, referring-relationship IoUs)
are higher-is-better.
Markdown, LaTeX (booktabs) and CSV (raw fractions, full precision) render the same summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from reports.methods import latex_escape
from reports.statistics import CONFIDENCE, mean_interval, welch_difference
from sgstudy import metric_names
from sgstudy.errors import ConfigError

DEFAULT_METRICS: tuple[str, ...] = ("mR_50", "mR_100")
# Studies whose paper table has other columns than the supplement's Tables 1-2.
STUDY_METRICS: dict[str, tuple[str, ...]] = {"align-sgtr": ("R_50", "R_100", "mR_50", "mR_100")}
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
SIGNIFICANT = "*"


def table_metrics(names: list[str] | None, study: str | None = None) -> list[str]:
    """Stored keys of the requested columns; accepts ``mR@50`` or ``mR_50``. Without names, the
    study's default columns (``STUDY_METRICS``, else ``DEFAULT_METRICS``).

    Raises ``ConfigError`` naming an unknown metric and listing the valid ones.
    """
    if names is None:
        return list(STUDY_METRICS.get(study, DEFAULT_METRICS))
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
    ``align``, ``p``, ``lambda``, ``n`` and per key (fractions): ``<key>_mean``, ``<key>_std``
    (NaN for a single run), ``<key>_low``/``<key>_high`` (95% t interval of the mean) and, for
    an Align row whose family has a baseline, ``<key>_diff``, ``<key>_diff_low``,
    ``<key>_diff_high`` and ``<key>_p`` (Welch: Align − baseline). NaN where undefined."""
    grouped = runs.groupby("method", sort=False)
    summary = grouped[["method_tex", "family", "protocol", "align", "p", "lambda"]].first()
    summary["n"] = grouped.size()
    values = {method: frame for method, frame in grouped}
    baselines = summary.index[~summary["align"].astype(bool)]
    baseline_of = {summary.loc[m, "family"]: m for m in baselines}
    for key in keys:
        summary[f"{key}_mean"] = grouped[key].mean()
        summary[f"{key}_std"] = grouped[key].std(ddof=1)
        stats_rows = []
        for method in summary.index:
            interval = mean_interval(values[method][key])
            base = baseline_of.get(summary.loc[method, "family"])
            diff = None
            if summary.loc[method, "align"] and base is not None:
                diff = welch_difference(values[method][key], values[base][key])
            stats_rows.append(
                ((interval.low, interval.high) if interval else (math.nan,) * 2)
                + ((diff.estimate, diff.low, diff.high, diff.p_value) if diff else (math.nan,) * 4)
            )
        for i, column in enumerate(("low", "high", "diff", "diff_low", "diff_high", "p")):
            summary[f"{key}_{column}"] = [row[i] for row in stats_rows]
    summary = summary.reindex([m for m in order if m in summary.index])
    return summary.reset_index()


def percent(value: float) -> str:
    return f"{100.0 * value:.1f}"


def signed_percent(value: float) -> str:
    return f"{100.0 * value:+.1f}".replace("-", "−")


def shows_statistics(summary: pd.DataFrame) -> bool:
    """Intervals and differences are shown once some method has two runs or more."""
    return bool((summary["n"] > 1).any())


def shows_differences(summary: pd.DataFrame, keys: list[str]) -> bool:
    """Δ columns appear with statistics when some Align row has a baseline of its family to
    differ from (a study without Align rows, such as the DSG ablation, has none)."""
    aligned = summary["align"].astype(bool)
    baseline_families = set(summary.loc[~aligned, "family"])
    return shows_statistics(summary) and bool(
        summary.loc[aligned, "family"].isin(baseline_families).any()
    )


def intervals_decide_bold(summary: pd.DataFrame, key: str) -> bool:
    """Bold by interval overlap only when every row with a value has an interval."""
    has_value = ~summary[f"{key}_mean"].isna()
    return bool(has_value.any() and (~summary.loc[has_value, f"{key}_low"].isna()).all())


def bold_rows(summary: pd.DataFrame, key: str) -> list[bool]:
    """Which rows of ``key``'s column are bold (see the module docstring)."""
    means = summary[f"{key}_mean"]
    if means.isna().all():
        return [False] * len(summary)
    if intervals_decide_bold(summary, key):
        best = means.idxmax()
        low, high = summary.loc[best, f"{key}_low"], summary.loc[best, f"{key}_high"]
        return [
            bool(row[f"{key}_low"] <= high and low <= row[f"{key}_high"])
            for _, row in summary.iterrows()
        ]
    printed = [float(percent(v)) if not math.isnan(v) else None for v in means]
    best = max(v for v in printed if v is not None)
    return [v == best for v in printed]


def difference_cell(row: pd.Series, key: str, markup: Markup) -> str:
    """``+1.2 [−0.3, +2.7]`` (percentage points), ``*`` when the interval excludes 0."""
    if math.isnan(row[f"{key}_diff"]):
        return markup.missing
    low, high = row[f"{key}_diff_low"], row[f"{key}_diff_high"]
    cell = f"{signed_percent(row[f'{key}_diff'])} [{signed_percent(low)}, {signed_percent(high)}]"
    if low > 0 or high < 0:
        cell += SIGNIFICANT
    return cell.replace("−", "$-$") if markup.latex else cell


def cells(summary: pd.DataFrame, keys: list[str], markup: Markup) -> list[list[str]]:
    """Body cells: method label, one formatted cell per key, the differences when statistics
    are shown, then ``n`` when shown."""
    show_n = shows_statistics(summary)
    columns = []
    for key in keys:
        column = []
        bold = bold_rows(summary, key)
        for mean, std, is_bold in zip(summary[f"{key}_mean"], summary[f"{key}_std"], bold):
            if math.isnan(mean):
                column.append(markup.missing)
                continue
            cell = percent(mean)
            if is_bold:
                cell = f"{markup.bold_open}{cell}{markup.bold_close}"
            if not math.isnan(std):
                cell += f"{markup.plus_minus}{percent(std)}"
            column.append(cell)
        columns.append(column)
    if shows_differences(summary, keys):
        for key in keys:
            columns.append([difference_cell(row, key, markup) for _, row in summary.iterrows()])
    labels = summary["method_tex" if markup.latex else "method"]
    rows = [[label, *(column[i] for column in columns)] for i, label in enumerate(labels)]
    if show_n:
        for row, n in zip(rows, summary["n"]):
            row.append(str(int(n)))
    return rows


def legend(summary: pd.DataFrame, keys: list[str]) -> str:
    """One paragraph saying what the cells, the bold and the marks mean."""
    if not shows_statistics(summary):
        return (
            "One run per method: no interval, so no significance can be given; bold marks "
            "the best value as printed."
        )
    level = f"{CONFIDENCE:.0%}"
    text = "Cells: mean ± sample std over n runs (seeds), percent. "
    if shows_differences(summary, keys):
        text += (
            f"Δ: Align minus the baseline of its family in percentage points, with Welch's "
            f"{level} interval; {SIGNIFICANT} marks an interval that excludes 0. "
        )
    if all(intervals_decide_bold(summary, key) for key in keys):
        return text + f"Bold: every method whose {level} interval of the mean overlaps the best's."
    return text + (
        "Some method has a single run: it has no interval, so bold marks the best value as "
        "printed and no significance can be given for it."
    )


def header(summary: pd.DataFrame, keys: list[str], latex: bool) -> list[str]:
    names = [metric_names.display_name(key) for key in keys]
    if latex:
        names = [latex_escape(name) for name in names]
    if not shows_statistics(summary):
        return [METHOD_HEADER, *names]
    if not shows_differences(summary, keys):
        return [METHOD_HEADER, *names, "n"]
    delta = "$\\Delta$" if latex else "Δ"
    level = f"{CONFIDENCE:.0%}".replace("%", "\\%" if latex else "%")
    differences = [f"{delta} {name} [{level}]" for name in names]
    return [METHOD_HEADER, *names, *differences, "n"]


def markdown_table(summary: pd.DataFrame, keys: list[str]) -> str:
    """A pipe table: method column left-aligned, numbers right-aligned."""
    head = header(summary, keys, latex=False)
    lines = [
        "| " + " | ".join(head) + " |",
        "|:---|" + "---:|" * (len(head) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells(summary, keys, MARKDOWN)]
    return "\n".join(lines) + "\n\n" + legend(summary, keys) + "\n"


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
        f"% {legend(summary, keys)}",
    ]
    return "\n".join(lines) + "\n"


def csv_table(summary: pd.DataFrame, keys: list[str]) -> str:
    """Raw fractions at full precision: method, settings, ``n``, then mean and std per key."""
    columns = ["method", "family", "protocol", "align", "p", "lambda", "n"]
    for key in keys:
        columns += [f"{key}_mean", f"{key}_std"]
    for key in keys:
        columns += [f"{key}_{c}" for c in ("low", "high", "diff", "diff_low", "diff_high", "p")]
    return summary[columns].to_csv(index=False)


def diagnostics_table(summary: pd.DataFrame) -> str:
    """Markdown: per method, the final epoch's effective rank of the val pair representation
    and alignment/supervised gradient-norm ratio (``metric_names.DIAGNOSTICS``), mean ± std
    over runs; plain numbers, not percent; "–" where a method never logged one."""
    keys = list(metric_names.DIAGNOSTICS)
    names = ["pair rank (val)", "‖∇ λ·align‖ / ‖∇ sup‖"]
    lines = ["| " + " | ".join([METHOD_HEADER, *names, "n"]) + " |", "|:---|---:|---:|---:|"]
    for _, row in summary.iterrows():
        cells = []
        for key in keys:
            mean, std = row.get(f"{key}_mean", math.nan), row.get(f"{key}_std", math.nan)
            cell = MARKDOWN.missing if math.isnan(mean) else f"{mean:.2f}"
            if not math.isnan(mean) and not math.isnan(std):
                cell += f"{MARKDOWN.plus_minus}{std:.2f}"
            cells.append(cell)
        lines.append("| " + " | ".join([row["method"], *cells, str(int(row["n"]))]) + " |")
    legend_text = (
        "Final epoch. Pair rank: effective rank (exp of the entropy of the normalised singular "
        "values) of the centred pair representations the classifier reads on val; a collapse "
        "shows as a fall. Gradient ratio: on the shared encoder, mean of a few sampled training "
        "steps; far above 1 the alignment, not the task, drives the encoder."
    )
    return "\n".join(lines) + "\n\n" + legend_text + "\n"


def convergence_cells(changes: pd.Series) -> list[str]:
    """The non-NaN ``changes`` (fractions) as [mean ± std, largest absolute, "k of m"
    converged] in points; "–" each when there are none."""
    values = changes.dropna()
    if values.empty:
        return [MARKDOWN.missing] * 3
    mean = signed_percent(values.mean())
    if len(values) > 1:
        mean += f"{MARKDOWN.plus_minus}{100.0 * values.std(ddof=1):.1f}"
    converged = int((values.abs() < metric_names.CONVERGED_BELOW).sum())
    return [mean, percent(values.abs().max()), f"{converged} of {len(values)}"]


def convergence_table(runs: pd.DataFrame, order: list[str], metric: str) -> str:
    """Markdown: per method, the change of ``metric`` (a run's selection metric, display name)
    over each run's last ``CONVERGENCE_EPOCHS`` epochs (``metric_names.LAST_CHANGE``): mean ±
    std over runs, the largest in size, and how many runs count as converged."""
    window = metric_names.CONVERGENCE_EPOCHS
    change = f"Δ {metric}, last {window} epochs"
    header = [METHOD_HEADER, change, "largest absolute Δ", "converged", "n"]
    lines = ["| " + " | ".join(header) + " |", "|:---|---:|---:|---:|---:|"]
    changes = runs.groupby("method", sort=False)[metric_names.LAST_CHANGE]
    for method in order:
        values = changes.get_group(method)
        cells = convergence_cells(values)
        lines.append("| " + " | ".join([method, *cells, str(len(values))]) + " |")
    legend_text = (
        f"Δ: a run's val {metric} at its last epoch minus its value {window} epochs before, in "
        f"points (mean ± sample std over runs). Converged: runs with |Δ| < "
        f"{100 * metric_names.CONVERGED_BELOW:g} point. Where the baseline has not converged, "
        "the table above compares methods at this budget, not at convergence. – : runs "
        "shorter than the window."
    )
    return "\n".join(lines) + "\n\n" + legend_text + "\n"


def convergence_line(runs: pd.DataFrame, method: str, metric: str) -> str:
    """One line for the terminal: how far ``method``'s runs moved over their last epochs."""
    changes = runs.loc[runs["method"] == method, metric_names.LAST_CHANGE]
    window = metric_names.CONVERGENCE_EPOCHS
    if changes.isna().all():
        return f"convergence: {method}: runs shorter than {window + 1} epochs, not judged"
    mean, _, converged = convergence_cells(changes)
    return (
        f"convergence: {method}: val {metric} moved {mean} points over the last {window} epochs; "
        f"{converged} runs moved less than {100 * metric_names.CONVERGED_BELOW:g} point"
    )


def render(summary: pd.DataFrame, keys: list[str], fmt: str) -> str:
    """``fmt`` is ``md``, ``tex`` or ``csv``."""
    if fmt == "md":
        return markdown_table(summary, keys)
    if fmt == "tex":
        return latex_table(summary, keys)
    if fmt == "csv":
        return csv_table(summary, keys)
    raise ConfigError(f"unknown table format {fmt!r}; choose from md, tex, csv")
