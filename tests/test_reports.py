"""Reports against a real MLflow SQLite store holding two small hand-made studies.

``align-motifs-p``: a Motifs baseline (seeds 0 and 1), Align-Motifs with p = 0.05, 0.1, 0.2
(seed 0; p = 0.2 ties p = 0.1 on the printed mR@50), a FAILED p = 0.1 run with an absurd
mR@50 and an unfinished one; every finished run logs a per-predicate artifact.
``align-motifs-lambda``: the supplement's Table 2 numbers, one seed, no artifacts.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from reports import methods, plots, tables
from reports.report import write_report
from reports.results import (
    change_over_last_epochs,
    exclusion_reason,
    load_artifacts,
    load_study_results,
)
from sgstudy.errors import ConfigError, UserError
from sgstudy.tracking_layout import (
    PARENT_TAG,
    PER_PREDICATE_ARTIFACT,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
)

P_STUDY, LAMBDA_STUDY = "align-motifs-p", "align-motifs-lambda"
# Predicates in id order; training frequency order is has, on, near, riding, under.
PREDICATES = ["on", "has", "near", "under", "riding"]
TRAIN_COUNTS = [50, 200, 30, 5, 10]
GROUPS = {"head": ["has", "on"], "body": ["near"], "tail": ["riding", "under"]}
# (name, align, p, λ, seed, final mR@50, final mR@100, R@100 per predicate in id order, status)
P_RUNS = [
    ("baseline seed=0", False, 0.1, 10.0, 0, 0.20, 0.24, [0.5, 0.6, 0.2, 0.0, 0.1], "FINISHED"),
    ("baseline seed=1", False, 0.1, 10.0, 1, 0.22, 0.26, [0.5, 0.8, 0.2, 0.0, 0.3], "FINISHED"),
    ("p=0.05 seed=0", True, 0.05, 10.0, 0, 0.237, 0.259, [0.5, 0.7, 0.2, 0.0, 0.2], "FINISHED"),
    ("p=0.1 seed=0", True, 0.1, 10.0, 0, 0.239, 0.262, [0.6, 0.65, 0.2, 0.1, 0.4], "FINISHED"),
    ("p=0.2 seed=0", True, 0.2, 10.0, 0, 0.2386, 0.258, [0.5, 0.7, 0.2, 0.0, 0.2], "FINISHED"),
    ("p=0.1 seed=1", True, 0.1, 10.0, 1, 0.9, 0.9, [1.0] * 5, "FAILED"),
    ("p=0.2 seed=1", True, 0.2, 10.0, 1, 0.5, 0.5, None, "RUNNING"),
]
LAMBDA_RUNS = [
    ("baseline", False, 0.1, 10.0, 0, 0.221, 0.242, None, "FINISHED"),
    ("λ=0.1", True, 0.1, 0.1, 0, 0.220, 0.235, None, "FINISHED"),
    ("λ=1", True, 0.1, 1.0, 0, 0.238, 0.259, None, "FINISHED"),
    ("λ=10", True, 0.1, 10.0, 0, 0.239, 0.262, None, "FINISHED"),
]


def log_trial(client, experiment_id, parent_id, spec, folder: Path) -> str:
    name, align, p, lam, seed, mr50, mr100, recall100, status = spec
    run = client.create_run(
        experiment_id, run_name=name, tags={ROLE_TAG: ROLE_TRIAL, PARENT_TAG: parent_id}
    )
    run_id = run.info.run_id
    params = {"model": "motifs", "protocol": "predcls", "align": str(align), "mask_ratio": str(p),
              "align_weight": str(lam), "seed": str(seed), "epochs": "3", "lr": "0.02"}  # fmt: skip
    finals = {"mR_50": mr50, "mR_100": mr100, "R_100": 0.6, "tail_mR_100": 0.05, "epoch": 3}
    finals["pair_rank"] = 40.0 + seed
    if align:
        finals["align_grad_ratio"] = 0.5
    # Epochs 1 and 2 log other values: the report must read the last epoch's. mR@50 moves by
    # 0.4 points over the last 2 epochs with seed 0 and by 1.2 with seed 1 (convergence table).
    metrics = [Metric(key, 0.01, 0, 1) for key in finals if key != "mR_50"]
    metrics.append(Metric("mR_50", mr50 - 0.004 * (1 + 2 * seed), 0, 1))
    metrics += [Metric(key, 0.01, 0, 2) for key in finals]
    metrics += [Metric(key, float(value), 0, 3) for key, value in finals.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    if recall100 is not None:
        record = {
            "predicates": PREDICATES, "train_counts": TRAIN_COUNTS, "eval_counts": [9] * 5,
            "groups": GROUPS,
            "recall": {"20": [0.0] * 5, "50": [0.0] * 5, "100": recall100},
            "ng_recall": {"20": [0.0] * 5, "50": [0.0] * 5, "100": recall100},
        }  # fmt: skip
        path = folder / "staging" / run_id / PER_PREDICATE_ARTIFACT
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))
        client.log_artifact(run_id, str(path))
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def log_study(client, study: str, specs, folder: Path) -> tuple[str, dict[str, str]]:
    location = (folder / "store" / study).as_uri()  # not ./mlruns of the working directory
    experiment_id = client.create_experiment(study, artifact_location=location)
    parent = client.create_run(experiment_id, run_name="launch", tags={ROLE_TAG: ROLE_STUDY})
    parent_id = parent.info.run_id
    ids = {spec[0]: log_trial(client, experiment_id, parent_id, spec, folder) for spec in specs}
    return parent_id, ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    p_parent, p_ids = log_study(client, P_STUDY, P_RUNS, root / "artifacts")
    lambda_parent, _ = log_study(client, LAMBDA_STUDY, LAMBDA_RUNS, root / "artifacts")
    log_study(client, "all-failed", P_RUNS[5:6], root / "artifacts")
    return {"uri": uri, "client": client, "p_parent": p_parent, "p_ids": p_ids,
            "lambda_parent": lambda_parent}  # fmt: skip


@pytest.fixture(scope="module")
def p_results(store):
    return load_study_results(P_STUDY, store["uri"])


@pytest.fixture(scope="module")
def lambda_results(store):
    return load_study_results(LAMBDA_STUDY, store["uri"])


def main_summary(results, keys=("mR_50", "mR_100")):
    return tables.summarize(results.runs, list(results.methods), list(keys))


# ---------------------------------------------------------------- results frame
def test_results_keep_finished_runs_and_list_the_others(store, p_results):
    runs, excluded = p_results.runs, p_results.excluded
    assert len(runs) == 5 and set(runs["status"]) == {"FINISHED"}
    assert p_results.parent_run_ids == (store["p_parent"],)
    assert set(runs["launch"]) == {store["p_parent"]}
    reasons = dict(zip(excluded["run_name"], excluded["reason"]))
    assert reasons == {"p=0.1 seed=1": "run FAILED", "p=0.2 seed=1": "unfinished (status RUNNING)"}
    assert store["p_ids"]["p=0.1 seed=1"] not in set(runs["run_id"])
    baseline = runs[runs["run_name"] == "baseline seed=0"].iloc[0]
    assert not baseline["align"] and math.isnan(baseline["p"]) and math.isnan(baseline["lambda"])
    aligned = runs[runs["run_name"] == "p=0.05 seed=0"].iloc[0]
    assert aligned["p"] == 0.05 and aligned["lambda"] == 10.0 and aligned["seed"] == 0
    # Final value = the last epoch's, not the first one's.
    assert aligned["mR_50"] == 0.237 and aligned["tail_mR_100"] == 0.05
    assert math.isnan(aligned["zR_20"])
    # The change of mR@50 over the last 2 epochs, from the metric's history.
    assert aligned["last_change"] == pytest.approx(0.004)
    assert baseline["last_change"] == pytest.approx(0.004)
    assert runs.loc[runs["run_name"] == "baseline seed=1", "last_change"].item() == (
        pytest.approx(0.012)
    )


def test_convergence_line_of_runs_too_short_to_judge():
    runs = pd.DataFrame({"method": ["Motifs", "Motifs"], "last_change": [math.nan, math.nan]})
    assert tables.convergence_line(runs, "Motifs", "mR@50") == (
        "convergence: Motifs: runs shorter than 3 epochs, not judged"
    )


def test_change_over_the_last_epochs():
    assert change_over_last_epochs({1: 0.1, 2: 0.2, 3: 0.25}, 2) == pytest.approx(0.15)
    assert change_over_last_epochs({1: 0.1, 2: 0.2, 3: 0.25}, 1) == pytest.approx(0.05)
    # Too short, a gap at the earlier epoch, or nothing logged: no change can be given.
    assert math.isnan(change_over_last_epochs({1: 0.1, 2: 0.2}, 2))
    assert math.isnan(change_over_last_epochs({1: 0.1, 3: 0.3, 4: 0.35}, 2))
    assert math.isnan(change_over_last_epochs({}, 2))


def test_per_predicate_frame_is_long_and_complete(p_results):
    frame = p_results.per_predicate
    assert len(frame) == 5 * len(PREDICATES) * 3  # runs × predicates × K
    row = frame[(frame["method"] == "Align-Motifs (p = 0.1)") & (frame["k"] == 100)]
    assert dict(zip(row["predicate"], row["recall"])) == dict(
        zip(PREDICATES, [0.6, 0.65, 0.2, 0.1, 0.4])
    )
    assert dict(zip(row["predicate"], row["group"]))["riding"] == "tail"
    assert list(row["train_count"]) == TRAIN_COUNTS


def test_labels_and_order(p_results, lambda_results):
    assert p_results.methods == (
        "Motifs", "Align-Motifs (p = 0.05)", "Align-Motifs (p = 0.1)", "Align-Motifs (p = 0.2)",
    )  # fmt: skip
    assert lambda_results.methods == (
        "Motifs", "Align-Motifs (λ = 0.1)", "Align-Motifs (λ = 1)", "Align-Motifs (λ = 10)",
    )  # fmt: skip
    both = methods.method_label("sgtr", True, {"p": 0.1, "lambda": 10.0}, ("p", "lambda"))
    assert both == "Align-SGTR (p = 0.1, λ = 10)"
    tex = methods.method_label("my_net", True, {"p": 0.1, "lambda": 0.5}, ("lambda",), latex=True)
    assert tex == r"Align-my\_net ($\lambda = 0.5$)"
    assert methods.method_label("dsg", True, {"p": 0.1, "lambda": 10.0}, ()) == "Align-DSG"


def test_compare_names_resolve_and_unknown_lists_known(p_results):
    runs = p_results.runs
    assert methods.resolve_method("baseline", runs) == "Motifs"
    assert methods.resolve_method("p=0.1", runs) == "Align-Motifs (p = 0.1)"
    assert methods.resolve_method("align-motifs (P = 0.2)", runs) == "Align-Motifs (p = 0.2)"
    with pytest.raises(UserError, match=r"'p=0\.3'.*Motifs; Align-Motifs \(p = 0\.05\)"):
        methods.resolve_method("p=0.3", runs)
    with pytest.raises(UserError, match="matches several methods"):
        methods.resolve_method("align", runs)


def test_unknown_study_and_missing_database(store, tmp_path):
    with pytest.raises(UserError, match=r"study 'nope' does not exist.*align-motifs-lambda"):
        load_study_results("nope", store["uri"])
    with pytest.raises(UserError, match="no MLflow database"):
        load_study_results(P_STUDY, f"sqlite:///{tmp_path}/absent.db")
    with pytest.raises(
        UserError, match=r"'all-failed' has no finished .*\(1 trial run: 1 × run FAILED\)"
    ):
        load_study_results("all-failed", store["uri"])


def test_unreachable_server_is_a_user_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    start = time.perf_counter()
    with pytest.raises(UserError, match=f"server http://127.0.0.1:{port} is unreachable"):
        load_study_results(P_STUDY, f"http://127.0.0.1:{port}")
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------- tables
def test_markdown_table_with_seeds_and_tied_bold(p_results):
    expected = (
        "| Method | mR@50 | mR@100 | Δ mR@50 [95%] | Δ mR@100 [95%] | n |\n"
        "|:---|---:|---:|---:|---:|---:|\n"
        "| Motifs | 21.0 ± 1.4 | 25.0 ± 1.4 | – | – | 2 |\n"
        "| Align-Motifs (p = 0.05) | 23.7 | 25.9 | – | – | 1 |\n"
        "| Align-Motifs (p = 0.1) | **23.9** | **26.2** | – | – | 1 |\n"
        "| Align-Motifs (p = 0.2) | **23.9** | 25.8 | – | – | 1 |\n"
        "\n"
        "Cells: mean ± sample std over n runs (seeds), percent. Δ: Align minus the baseline of its "
        "family in percentage points, with Welch's 95% interval; * marks an interval that "
        "excludes 0. Some method has a single run: it has no interval, so bold marks the best "
        "value as printed and no significance can be given for it.\n"
    )
    assert tables.markdown_table(main_summary(p_results), ["mR_50", "mR_100"]) == expected


def test_latex_table(p_results):
    expected = (
        "\\begin{tabular}{lrrrrr}\n"
        "\\toprule\n"
        "Method & mR@50 & mR@100 & $\\Delta$ mR@50 [95\\%] & $\\Delta$ mR@100 [95\\%] & n \\\\\n"
        "\\midrule\n"
        "Motifs & 21.0 $\\pm$ 1.4 & 25.0 $\\pm$ 1.4 & -- & -- & 2 \\\\\n"
        "Align-Motifs ($p = 0.05$) & 23.7 & 25.9 & -- & -- & 1 \\\\\n"
        "Align-Motifs ($p = 0.1$) & \\textbf{23.9} & \\textbf{26.2} & -- & -- & 1 \\\\\n"
        "Align-Motifs ($p = 0.2$) & \\textbf{23.9} & 25.8 & -- & -- & 1 \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
    )
    text = tables.latex_table(main_summary(p_results), ["mR_50", "mR_100"])
    assert text.startswith(expected) and text[len(expected) :].startswith("% Cells: mean")


def test_single_seed_table_has_the_papers_shape(lambda_results):
    expected = (
        "| Method | mR@50 | mR@100 |\n"
        "|:---|---:|---:|\n"
        "| Motifs | 22.1 | 24.2 |\n"
        "| Align-Motifs (λ = 0.1) | 22.0 | 23.5 |\n"
        "| Align-Motifs (λ = 1) | 23.8 | 25.9 |\n"
        "| Align-Motifs (λ = 10) | **23.9** | **26.2** |\n"
        "\n"
        "One run per method: no interval, so no significance can be given; bold marks the best "
        "value as printed.\n"
    )
    assert tables.markdown_table(main_summary(lambda_results), ["mR_50", "mR_100"]) == expected


def test_seed_mean_and_std_and_csv(p_results):
    summary = main_summary(p_results)
    baseline = summary.iloc[0]
    assert baseline["n"] == 2
    assert baseline["mR_50_mean"] == pytest.approx(0.21)
    assert baseline["mR_50_std"] == pytest.approx(np.std([0.20, 0.22], ddof=1))
    assert math.isnan(summary.iloc[1]["mR_50_std"])
    lines = tables.csv_table(summary, ["mR_50"]).splitlines()
    stats = "mR_50_low,mR_50_high,mR_50_diff,mR_50_diff_low,mR_50_diff_high,mR_50_p"
    assert lines[0] == "method,family,protocol,align,p,lambda,n,mR_50_mean,mR_50_std," + stats
    assert lines[3] == "Align-Motifs (p = 0.1),Motifs,predcls,True,0.1,10.0,1,0.239,,,,,,,"


def test_group_table_marks_unlogged_groups(p_results):
    keys = tables.group_metrics((100,))
    text = tables.markdown_table(main_summary(p_results, keys), keys)
    assert text.splitlines()[0].startswith("| Method | head mR@100 | body mR@100 | tail mR@100 |")
    # Only tail was logged; the tied maxima are every row.
    assert text.splitlines()[2] == "| Motifs | – | – | **5.0** ± 0.0 | – | – | – | 2 |"


def test_exclusion_reasons_and_mixed_config_notes(p_results):
    finished = {"model": "motifs", "epochs": "4"}
    assert exclusion_reason("FINISHED", finished, {"mR_50": 0.2, "epoch": 4.0}) is None
    assert exclusion_reason("FINISHED", finished, {"mR_50": 0.2, "epoch": 2.0}) == (
        "stopped at epoch 2 of 4"
    )
    assert exclusion_reason("FINISHED", finished, {"loss": 1.0}) == (
        "finished without any recall metric"
    )
    assert exclusion_reason("KILLED", finished, {}) == "run KILLED"
    runs = p_results.runs
    params_of = {run_id: {"lr": "0.02"} for run_id in runs["run_id"]}
    assert methods.mixed_config_notes(runs, params_of) == []
    params_of[runs.loc[runs["run_name"] == "baseline seed=1", "run_id"].item()] = {"lr": "0.1"}
    assert methods.mixed_config_notes(runs, params_of) == [
        "Motifs: its runs differ in param lr (0.02, 0.1)"
    ]


def test_metric_names_accept_both_spellings():
    assert tables.table_metrics(["R@50", "mR_100", "tail mR@100"]) == [
        "R_50", "mR_100", "tail_mR_100",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="unknown metric 'mR@7'"):
        tables.table_metrics(["mR@7"])


# ---------------------------------------------------------------- figures
def bars_of(ax) -> BarContainer:
    return next(c for c in ax.containers if isinstance(c, BarContainer))


def test_difference_plot_order_signs_colours_and_title(p_results):
    fig = plots.difference_figure(p_results.per_predicate, "Align-Motifs (p = 0.1)", "Motifs")
    ax = fig.axes[0]
    bars = bars_of(ax)
    assert [tick.get_text() for tick in ax.get_xticklabels()] == [
        "has", "on", "near", "riding", "under",
    ]  # fmt: skip
    heights = [bar.get_height() for bar in bars]
    assert heights == pytest.approx([-5.0, 10.0, 0.0, 20.0, 10.0])
    colours = [bar.get_facecolor() for bar in bars]
    pos, neg, zero = (to_rgba(c) for c in (plots.POSITIVE_COLOR, plots.NEGATIVE_COLOR,
                                           plots.ZERO_COLOR))  # fmt: skip
    assert colours == [neg, pos, zero, pos, pos]
    assert "better on 3 of 5 predicates" in ax.get_title()
    # Two baseline seeds: error bars = the baseline's std (the aligned method has one run).
    assert bars.errorbar is not None
    segments = bars.errorbar.lines[2][0].get_segments()
    half = [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    assert half == pytest.approx([100 * np.std([0.6, 0.8], ddof=1), 0, 0, 100 * 0.1414214, 0],
                                 abs=1e-4)  # fmt: skip
    letters = [text.get_text() for text in ax.texts]
    assert letters == ["H", "B", "T"]


def test_per_predicate_bars_of_one_method(p_results):
    fig = plots.per_predicate_figure(p_results.per_predicate, "Motifs")
    heights = [bar.get_height() for bar in bars_of(fig.axes[0])]
    assert heights == pytest.approx([70.0, 50.0, 20.0, 20.0, 0.0])


def test_sensitivity_axes(p_results, lambda_results):
    fig = plots.sensitivity_figure(main_summary(lambda_results), "lambda")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    mr50 = ax.lines[0]
    assert list(mr50.get_xdata()) == [0.1, 1.0, 10.0]
    assert list(mr50.get_ydata()) == pytest.approx([22.0, 23.8, 23.9])
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in dashed] == pytest.approx([22.1, 24.2])
    assert plots.sensitivity_figure(main_summary(p_results), "p").axes[0].get_xscale() == "linear"


# ---------------------------------------------------------------- the report
def test_write_report_files_index_and_logged_artifacts(store, tmp_path):
    out = tmp_path / "report"
    outputs = write_report(P_STUDY, store["uri"], out, compare=("p=0.05", "baseline"))
    assert outputs.compared == ("Align-Motifs (p = 0.05)", "Motifs")
    assert outputs.main_table == (out / "table_main.md").read_text()
    names = {path.name for path in outputs.files}
    for name in ("index.md", "table_main.tex", "table_main.csv", "table_groups.md",
                 "difference_R100.png", "difference_R100.svg", "sensitivity_p.svg",
                 "per_predicate_R100_Motifs.png", "runs.csv", "excluded.csv"):  # fmt: skip
        assert name in names, name
    index = outputs.index.read_text()
    assert "![Per-predicate R@100: Align-Motifs (p = 0.05) − Motifs](difference_R100.png)" in index
    assert "| **23.9** |" in index and "run FAILED" in index
    # Diagnostics per method; the baseline has no alignment gradient.
    assert "| Motifs | 40.50 ± 0.71 | – | 2 |" in index
    assert "| Align-Motifs (p = 0.05) | 40.00 | 0.50 | 1 |" in index
    # Convergence per method: seed 0 moved 0.4 points over its last 2 epochs, seed 1 1.2.
    assert "| Method | Δ mR@50, last 2 epochs | largest absolute Δ | converged | n |" in index
    assert "| Motifs | +0.8 ± 0.6 | 1.2 | 1 of 2 | 2 |" in index
    assert "| Align-Motifs (p = 0.05) | +0.4 | 0.4 | 1 of 1 | 1 |" in index
    assert outputs.convergence == (
        "convergence: Motifs: val mR@50 moved +0.8 ± 0.6 points over the last 2 epochs; "
        "1 of 2 runs moved less than 1 point",
    )
    logged = store["client"].list_artifacts(store["p_parent"], "report")
    assert {Path(item.path).name for item in logged} == names
    assert outputs.logged_to == store["p_parent"]


def test_write_report_without_artifacts_or_logging(store, tmp_path):
    outputs = write_report(
        LAMBDA_STUDY, store["uri"], tmp_path, formats=("md",), metrics=["R@100", "mR@100"],
        log_to_mlflow=False,
    )  # fmt: skip
    assert outputs.main_table.splitlines()[0] == "| Method | R@100 | mR@100 |"
    assert "No per-predicate recall artifact logged" in outputs.index.read_text()
    assert (tmp_path / "sensitivity_lambda.png").is_file()
    assert not (tmp_path / "table_main.tex").exists()
    assert store["client"].list_artifacts(store["lambda_parent"]) == []
    with pytest.raises(UserError, match="--compare: no per-predicate"):
        write_report(LAMBDA_STUDY, store["uri"], tmp_path, compare=("baseline", "λ=1"),
                     log_to_mlflow=False)  # fmt: skip
    with pytest.raises(ConfigError, match="unknown table format"):
        write_report(LAMBDA_STUDY, store["uri"], tmp_path, formats=("html",))


def test_report_never_imports_torch(store, tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import reports\n"
        "from reports.report import write_report\n"
        f"write_report({P_STUDY!r}, {store['uri']!r}, Path({str(tmp_path)!r}), "
        "log_to_mlflow=False)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "index.md").is_file()


def test_artifacts_of_a_remote_store_are_downloaded(store, p_results):
    run_id = store["p_ids"]["p=0.1 seed=0"]
    # A non-local URI takes the download path (through the client, which knows the real one).
    records = load_artifacts(store["client"], {run_id: "s3://elsewhere/artifacts"})
    assert records[run_id]["recall"]["100"] == [0.6, 0.65, 0.2, 0.1, 0.4]
    no_artifact = store["p_ids"]["p=0.2 seed=1"]
    assert load_artifacts(store["client"], {no_artifact: "s3://elsewhere/artifacts"}) == {}
