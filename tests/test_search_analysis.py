"""Search analysis in the report, on a real MLflow SQLite store and a real Optuna storage that
hold a hand-made 12-trial TPE launch: mR@50 rises steeply with p and barely with λ, so fANOVA
must rank p first."""

from __future__ import annotations

import importlib.util
import math
import re

import optuna
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from reports.dashboard import INSTALL_HINT, dashboard_command, study_storage
from reports.report import write_report
from reports.results import load_study_results
from reports.search_analysis import (
    best_so_far,
    load_search_trials,
    top_configurations,
    wants_search_analysis,
)
from sgstudy.cli import main
from sgstudy.tracking_layout import PARENT_TAG, ROLE_STUDY, ROLE_TAG, ROLE_TRIAL

STUDY = "align-motifs-tpe"
LAUNCH = "align-motifs-tpe"
# (p, λ) of the 12 trials, p up to 0.6; mR@50 = 0.1 + 0.5 p + 0.001 log10 λ (a test input, not a result).
POINTS = [(round(0.05 * (i + 1), 2), 10 ** (-1 + (i * 7) % 12 / 4)) for i in range(12)]


def mr50(p: float, lam: float) -> float:
    return 0.1 + 0.5 * p + 0.001 * math.log10(lam)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    optuna_url = f"sqlite:///{root}/optuna.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{LAUNCH}-20260101-120000", storage=optuna_url, direction="maximize"
    )
    distributions = {
        "mask_ratio": optuna.distributions.FloatDistribution(0.0, 0.6),
        "align_weight": optuna.distributions.FloatDistribution(0.1, 100.0, log=True),
    }
    for p, lam in POINTS:
        study.add_trial(
            optuna.trial.create_trial(
                params={"mask_ratio": p, "align_weight": lam},
                distributions=distributions,
                value=mr50(p, lam),
            )
        )
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(STUDY, artifact_location=(root / "art").as_uri())
    parent = client.create_run(experiment, run_name=LAUNCH, tags={ROLE_TAG: ROLE_STUDY})
    parent_id = parent.info.run_id
    client.log_batch(
        parent_id, params=[Param("optuna_storage", optuna_url), Param("launch", LAUNCH)]
    )
    for i, (p, lam) in enumerate(POINTS):
        run = client.create_run(
            experiment, run_name=f"trial {i}", tags={ROLE_TAG: ROLE_TRIAL, PARENT_TAG: parent_id}
        )
        params = {"model": "motifs", "protocol": "predcls", "align": "True", "mask_ratio": str(p),
                  "align_weight": str(lam), "seed": "0", "epochs": "1"}  # fmt: skip
        value = mr50(p, lam)
        metrics = {"mR_50": value, "mR_100": value + 0.01, "R_50": 0.3, "R_100": 0.31, "epoch": 1}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), 0, 1) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in params.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent_id, "FINISHED")
    return uri


def test_trials_are_read_from_the_launchs_optuna_study(store):
    results = load_study_results(STUDY, store)
    assert wants_search_analysis(results)
    search = load_search_trials(results)
    assert len(search.trials) == 12
    assert [name for _, name in search.studies] == [f"{LAUNCH}-20260101-120000"]
    assert best_so_far([0.1, 0.3, 0.2, 0.4]) == [0.1, 0.3, 0.3, 0.4]


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(STUDY, store, out, formats=("md",), log_to_mlflow=False)


def test_fanova_ranks_the_parameter_that_drives_the_metric_first(report):
    """The report's importance table: fANOVA over the 12 trials, p first, shares summing to 1."""
    index = report.index.read_text()
    assert "fANOVA over the 12 complete trials" in index
    rows = re.findall(r"^\| (p|λ) \(`(\w+)`\) \| ([0-9.]+) \|$", index, re.M)
    assert [name for name, _, _ in rows] == ["p", "λ"]
    shares = {key: float(value) for _, key, value in rows}
    assert sum(shares.values()) == pytest.approx(1.0, abs=2e-3)
    assert shares["mask_ratio"] > 0.9


def test_report_of_a_search_has_its_figures_and_top_five(store, report):
    names = {path.name for path in report.files}
    for stem in ("search_importance", "search_parallel", "search_p_lambda", "search_history"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    index = report.index.read_text()
    section = index[index.index("## Search analysis") :]
    top = top_configurations(load_study_results(STUDY, store).runs)
    assert list(top["p"]) == sorted((p for p, _ in POINTS), reverse=True)[:5]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "trial" in line]
    assert [row.split(" | ")[1] for row in rows] == list(top["run_name"])


def test_a_grid_gets_a_search_analysis_from_ten_finished_trials(store):
    results = load_study_results(STUDY, store)
    small_grid = results.__class__(**{**results.__dict__, "study": "align-motifs-p"})
    assert wants_search_analysis(small_grid)  # 12 finished trials: >= 10
    fewer = small_grid.__class__(**{**small_grid.__dict__, "runs": results.runs.head(9)})
    assert not wants_search_analysis(fewer)


def test_dashboard_finds_the_launchs_storage_and_needs_its_extra(store, tmp_path, capsys):
    """``sgstudy dashboard`` serves the storage the latest launch logged; without the optional
    optuna-dashboard package it is one error line naming how to install it, exit 2."""
    storage, name = study_storage(STUDY, store)
    assert storage.endswith("/optuna.db") and name == f"{LAUNCH}-20260101-120000"
    assert dashboard_command(storage, 8080)[-2:] == [storage, "8080"]
    if importlib.util.find_spec("optuna_dashboard") is not None:
        pytest.skip("optuna-dashboard is installed: the missing-extra message cannot show")
    assert main(["dashboard", STUDY, "--tracking-uri", store]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: optuna-dashboard is not installed; install it with {INSTALL_HINT}"
    ]
