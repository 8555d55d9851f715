"""``write_report``: a study's tables and figures in one folder, indexed and logged to MLflow.

Files in ``out_dir`` (tables in each requested format of md, tex, csv):

- ``table_main.*``: the ablation table (default columns mR@50, mR@100; for a study of
  referring relationships (DSG) subject IoU, object IoU and their mean);
- ``table_groups.*``: head/body/tail mR@50 and mR@100 (scene-graph studies only);
- ``difference_R100.png/.svg``: per-predicate R@100 of A minus B (``compare``; by default A is
  the aligned method with the best mean mR@100 and B the baseline of its family);
- ``per_predicate_R100_<method>.png/.svg``: per-predicate R@100 of A and of B;
- ``sensitivity_p.png/.svg``, ``sensitivity_lambda.png/.svg``: for each swept parameter;
- ``complexity.md``: for a referring-relationship study, the DSG supplement's Table 1 as the
  study driver measured it at launch;

- for a search study (``reports.search_analysis``): ``search_importance``, ``search_parallel``,
  ``search_p_lambda`` and ``search_history`` (``.png/.svg``) and a top-5 table in ``index.md``;
- ``runs.csv`` (every finished run and its final metrics), ``excluded.csv`` (with reasons);
- ``index.md``, which embeds the tables and links the figures by relative path.

The folder's files are then logged under ``report/`` of the study's latest parent run.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reports import methods, plots, search_analysis, search_plots, tables
from reports.results import (
    StudyResults,
    load_study_results,
    make_client,
    quiet_fast_mlflow,
    tracking_errors,
)
from sgstudy import metric_names
from sgstudy.errors import ConfigError, UserError
from sgstudy.tasks import REFERRING, task_of
from sgstudy.tracking_layout import COMPLEXITY_ARTIFACT, REPORT_ARTIFACT_DIR

TABLE_FORMATS = ("md", "tex", "csv")
DIFFERENCE_K = 100
SENSITIVITY_METRICS = ("mR_50", "mR_100")
FORMAT_NAMES = {"md": "Markdown", "tex": "LaTeX", "csv": "CSV"}


@dataclass(frozen=True)
class ReportOutputs:
    """What ``write_report`` wrote.

    main_table: the main table as Markdown (what the CLI prints).
    files:      every file written, ``index`` included.
    compared:   the (A, B) of the difference plot, if one was drawn.
    logged_to:  the parent run id the files were logged to, if any.
    convergence: one line per method without alignment (the baselines): how far its runs'
                selection metric moved over their last epochs (``tables.convergence_line``).
    """

    out_dir: Path
    index: Path
    main_table: str
    files: tuple[Path, ...]
    compared: tuple[str, str] | None
    logged_to: str | None
    convergence: tuple[str, ...] = ()


@dataclass
class Section:
    """A part of ``index.md``: a heading and its Markdown body."""

    title: str
    body: str


def write_report(
    study: str,
    tracking_uri: str,
    out_dir: Path,
    compare: tuple[str, str] | None = None,
    formats: tuple[str, ...] = TABLE_FORMATS,
    metrics: list[str] | None = None,
    log_to_mlflow: bool = True,
) -> ReportOutputs:
    """Renders the report of ``study`` into ``out_dir`` and logs it to the latest parent run.

    compare: two methods for the difference plot, as labels (``Align-Motifs (p = 0.1)``, any
             case) or short forms: ``baseline``, ``align`` (the only aligned method),
             ``p=0.1``, ``lambda=10`` (or ``λ=10``), ``p=0.1,lambda=10``.
    metrics: main-table columns, ``mR@50`` or ``mR_50`` style; default mR@50, mR@100
             (align-sgtr: R@50, R@100, mR@50, mR@100), or for a referring-relationship study
             subject IoU, object IoU, mean IoU.
    Raises ``UserError`` for an unknown study or method, bad formats or metrics, a
    tracking store that cannot be reached, or an ``out_dir`` that cannot be written.
    """
    formats = check_formats(formats)
    requested = tables.table_metrics(metrics, study) if metrics is not None else None
    with quiet_fast_mlflow():
        results = load_study_results(study, tracking_uri)
        referring = is_referring_study(results)
        default = metric_names.REFERRING_METRICS if referring else tables.table_metrics(None, study)
        keys = requested or list(default)
        pair = choose_pair(results, compare)
        out_dir = prepare_folder(out_dir)
        written: list[Path] = []
        sections, main_table = table_sections(
            results, keys, formats, out_dir, written, groups=not referring
        )
        sections += difference_sections(results, pair, compare is not None, out_dir, written)
        sections += sensitivity_sections(results, out_dir, written)
        if referring:
            sections += complexity_sections(results, out_dir, written)
        sections += search_sections(results, out_dir, written)
        sections += info_sections(results)
        written += write_run_lists(results, out_dir)
        parent = results.latest_parent_run_id if log_to_mlflow else None
        index = out_dir / "index.md"
        index.write_text(index_text(results, sections, parent))
        written.append(index)
        if parent is not None:
            log_files(results.tracking_uri, parent, written)
    return ReportOutputs(
        out_dir=out_dir,
        index=index,
        main_table=main_table,
        files=tuple(written),
        compared=pair,
        logged_to=parent,
        convergence=baseline_convergence(results),
    )


def selection_name(results: StudyResults) -> str:
    """Display name of the metric the study's runs were selected on."""
    return metric_names.display_name(task_of(results.runs["model"].iloc[0]).primary_metric)


def baseline_convergence(results: StudyResults) -> tuple[str, ...]:
    runs = results.runs
    baselines = [m for m in results.methods if not runs.loc[runs["method"] == m, "align"].any()]
    return tuple(tables.convergence_line(runs, m, selection_name(results)) for m in baselines)


def is_referring_study(results: StudyResults) -> bool:
    """Every run of the study is of a referring-relationship model (DSG)."""
    return all(task_of(model).name == REFERRING for model in results.runs["model"])


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in formats if f not in TABLE_FORMATS]
    if unknown or not formats:
        shown = ", ".join(unknown) if unknown else "none"
        raise ConfigError(
            f"unknown table format(s) {shown}; choose from {', '.join(TABLE_FORMATS)}"
        )
    return formats


def prepare_folder(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create report folder {out_dir} ({exc.strerror})") from exc
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"report folder {out_dir} is not writable")
    return out_dir


def choose_pair(results: StudyResults, compare: tuple[str, str] | None) -> tuple[str, str] | None:
    """The (A, B) of the difference plot: ``compare`` resolved, or the default (module doc);
    ``None`` when the study has no aligned method with a baseline of its family."""
    runs = results.runs
    if compare is not None:
        if len(compare) != 2:
            raise ConfigError(f"--compare takes two methods, got {len(compare)}")
        a, b = (methods.resolve_method(name, runs) for name in compare)
        if a == b:
            raise UserError(f"--compare names the same method twice ({a})")
        return a, b
    summary = tables.summarize(runs, list(results.methods), ["mR_100"])
    aligned = summary[summary["align"] & summary["mR_100_mean"].notna()]
    if aligned.empty:
        return None
    best = aligned.loc[aligned["mR_100_mean"].idxmax()]
    baselines = summary[
        ~summary["align"]
        & (summary["family"] == best["family"])
        & (summary["protocol"] == best["protocol"])
    ]
    return (best["method"], baselines["method"].iloc[0]) if len(baselines) else None


def table_sections(
    results: StudyResults, keys: list[str], formats: tuple[str, ...], out_dir: Path,
    written: list[Path], groups: bool = True,
) -> tuple[list[Section], str]:  # fmt: skip
    """Writes the main table and (``groups``) the head/body/tail table; returns their sections
    and the main Markdown."""
    order = list(results.methods)
    main = tables.summarize(results.runs, order, keys)
    tables_to_write = [("table_main", main, keys)]
    if groups:
        group_keys = tables.group_metrics()
        group_summary = tables.summarize(results.runs, order, group_keys)
        tables_to_write.append(("table_groups", group_summary, group_keys))
    for stem, summary, columns in tables_to_write:
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            path.write_text(tables.render(summary, columns, fmt))
            written.append(path)
    main_md = tables.markdown_table(main, keys)
    shown = ", ".join(metric_names.display_name(key) for key in keys)
    sections = [Section(f"Results ({shown})", main_md + "\n" + file_links("table_main", formats))]
    sections.append(
        Section(
            "Convergence", tables.convergence_table(results.runs, order, selection_name(results))
        )
    )
    if groups:
        sections.append(
            Section(
                "Head / body / tail mean recall",
                tables.markdown_table(group_summary, group_keys)
                + "\n"
                + file_links("table_groups", formats),
            )
        )
        diagnostics = tables.summarize(results.runs, order, list(metric_names.DIAGNOSTICS))
        sections.append(
            Section("Collapse and balance diagnostics", tables.diagnostics_table(diagnostics))
        )
    return sections, main_md


def difference_sections(
    results: StudyResults, pair: tuple[str, str] | None, explicit: bool, out_dir: Path,
    written: list[Path],
) -> list[Section]:  # fmt: skip
    """The difference figure of ``pair`` and the per-predicate bars of both methods.

    Without per-predicate artifacts for both, an asked-for comparison (``explicit``) is an
    error; the default one becomes a note.
    """
    if pair is None:
        return []
    k = DIFFERENCE_K
    title = f"Per-predicate R@{k}: {pair[0]} − {pair[1]}"
    missing = [m for m in pair if m not in set(results.per_predicate["method"])]
    if missing:
        message = f"no per-predicate recall artifact logged for {', '.join(missing)}"
        if explicit:
            raise UserError(f"--compare: {message}")
        return [Section(title, message[0].upper() + message[1:] + ".")]
    fig = plots.difference_figure(results.per_predicate, pair[0], pair[1], k)
    body = figure_markdown(fig, out_dir / f"difference_R{k}", written, title)
    for method in pair:
        fig = plots.per_predicate_figure(results.per_predicate, method, k)
        stem = f"per_predicate_R{k}_{slug(method)}"
        body += figure_markdown(fig, out_dir / stem, written, f"R@{k}: {method}")
    return [Section(title, body)]


def sensitivity_sections(
    results: StudyResults, out_dir: Path, written: list[Path]
) -> list[Section]:
    """One sensitivity figure per swept parameter (p, λ), none when nothing is swept."""
    swept = methods.swept_params(results.runs)
    if not swept:
        return []
    summary = tables.summarize(results.runs, list(results.methods), list(SENSITIVITY_METRICS))
    body = ""
    for param in swept:
        fig = plots.sensitivity_figure(summary, param, SENSITIVITY_METRICS)
        alt = f"mR@50 and mR@100 against {'p' if param == 'p' else 'λ'}"
        body += figure_markdown(fig, out_dir / f"sensitivity_{param}", written, alt)
    return [Section("Sensitivity", body)]


def complexity_sections(results: StudyResults, out_dir: Path, written: list[Path]) -> list[Section]:
    """The DSG supplement's Table 1 as the study driver measured it (its parent run's
    ``COMPLEXITY_ARTIFACT``), copied into ``out_dir``; a note when no launch logged it."""
    title = "Complexity (DSG supplement Table 1)"
    text = parent_artifact_text(results, COMPLEXITY_ARTIFACT)
    if text is None:
        return [Section(title, "No launch of this study logged the complexity table.")]
    path = out_dir / COMPLEXITY_ARTIFACT
    path.write_text(text)
    written.append(path)
    return [Section(title, text)]


def parent_artifact_text(results: StudyResults, name: str) -> str | None:
    """The text artifact ``name`` of the study's latest parent run, or None."""
    from mlflow.exceptions import MlflowException

    if results.latest_parent_run_id is None:
        return None
    with tracking_errors(results.tracking_uri), tempfile.TemporaryDirectory() as tmp:
        client = make_client(results.tracking_uri)
        try:
            path = client.download_artifacts(results.latest_parent_run_id, name, tmp)
        except (MlflowException, OSError):
            return None
        return Path(path).read_text()


def search_sections(results: StudyResults, out_dir: Path, written: list[Path]) -> list[Section]:
    """Importances, parallel coordinates, p × λ, history and the top 5 of a search study."""
    if not search_analysis.wants_search_analysis(results):
        return []
    body = "Finished runs, best first by mR@50:\n\n" + search_analysis.top_table(results.runs)
    body += "\n"
    search = search_analysis.load_search_trials(results)
    enough = search_analysis.MIN_IMPORTANCE_TRIALS
    if len(search.trials) >= enough:
        importances = search_analysis.param_importances(search)
        stores = ", ".join(f"`{name}` in `{storage}`" for storage, name in search.studies)
        body += f"fANOVA over the {len(search.trials)} complete trials of Optuna study {stores}:"
        body += "\n\n" + search_analysis.importance_table(importances) + "\n"
        fig = search_plots.importance_figure(importances, len(search.trials))
        body += figure_markdown(fig, out_dir / "search_importance", written, "importance")
    else:
        body += f"Fewer than {enough} complete Optuna trials: no parameter importances.\n\n"
    if search.trials:
        fig = search_plots.history_figure(search.values)
        body += figure_markdown(fig, out_dir / "search_history", written, "history")
    if results.runs["align"].any():
        fig = search_plots.parallel_figure(results.runs)
        body += figure_markdown(fig, out_dir / "search_parallel", written, "parallel coordinates")
        fig = search_plots.scatter_figure(results.runs)
        body += figure_markdown(fig, out_dir / "search_p_lambda", written, "p × λ")
    return [Section("Search analysis", body)]


def figure_markdown(fig: object, stem: Path, written: list[Path], alt: str) -> str:
    png, svg = plots.save_figure(fig, stem)
    written += [png, svg]
    return f"![{alt}]({png.name})\n\n[SVG]({svg.name})\n\n"


def write_run_lists(results: StudyResults, out_dir: Path) -> list[Path]:
    """``runs.csv`` (finished runs, final metrics at full precision) and ``excluded.csv``."""
    paths = [out_dir / "runs.csv", out_dir / "excluded.csv"]
    results.runs.drop(columns="method_tex").to_csv(paths[0], index=False)
    results.excluded.drop(columns="method_tex").to_csv(paths[1], index=False)
    return paths


def info_sections(results: StudyResults) -> list[Section]:
    sections = []
    if len(results.excluded):
        sections.append(
            Section("Excluded runs (not averaged in)", excluded_table(results.excluded))
        )
    if results.notes:
        sections.append(Section("Notes", "".join(f"- {note}\n" for note in results.notes)))
    return sections


def excluded_table(excluded: pd.DataFrame) -> str:
    lines = ["| Run | Name | Method | Seed | Status | Reason |", "|:---|:---|:---|---:|:---|:---|"]
    for _, row in excluded.iterrows():
        seed = "" if pd.isna(row["seed"]) else str(int(row["seed"]))
        lines.append(
            f"| `{row['run_id']}` | {row['run_name']} | {row['method']} | {seed} "
            f"| {row['status']} | {row['reason']} |"
        )
    return "\n".join(lines) + "\n"


def index_text(results: StudyResults, sections: list[Section], parent: str | None) -> str:
    launches = len(results.parent_run_ids)
    lines = [
        f"# Study `{results.study}`",
        "",
        f"Tracking store `{results.tracking_uri}`, experiment {results.experiment_id}: "
        f"{len(results.runs)} finished trial runs of {len(results.methods)} methods "
        f"from {launches} launch(es); {len(results.excluded)} excluded.",
        "Values are percent; with several runs, mean ± sample std over runs (n = runs).",
    ]
    if parent is not None:
        lines.append(f"Logged to parent run `{parent}` under `{REPORT_ARTIFACT_DIR}/`.")
    text = "\n".join(lines) + "\n"
    for section in sections:
        text += f"\n## {section.title}\n\n{section.body.rstrip()}\n"
    return text


def file_links(stem: str, formats: tuple[str, ...]) -> str:
    return " · ".join(f"[{FORMAT_NAMES[f]}]({stem}.{f})" for f in formats) + "\n"


def slug(label: str) -> str:
    """A file-name form of a method label: ``Align-Motifs (λ = 10)`` -> ``Align-Motifs_lambda_10``."""
    text = label.replace("λ", "lambda")
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_")


def log_files(tracking_uri: str, run_id: str, paths: list[Path]) -> None:
    """Each written file under ``report/`` of the run (only these, not the folder's leftovers)."""
    with tracking_errors(tracking_uri):
        client = make_client(tracking_uri)
        for path in paths:
            client.log_artifact(run_id, str(path), REPORT_ARTIFACT_DIR)
