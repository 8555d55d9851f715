"""Search analysis of a study: which hyperparameters mattered, read from its Optuna storage.

A study gets it when it is a search (``align-motifs-tpe``) or has at least ``MIN_TRIALS``
finished trial runs. Each launch's parent run names its Optuna storage (param
``optuna_storage``); the launch's Optuna study there is named ``<launch>-<YYYYmmdd-HHMMSS>``
(``trainables.study.build_searcher``), and the newest such study of each launch is read. Its
COMPLETE trials carry the searched params (p and λ for TPE; variant and seed for a grid) and
the value the search maximised (``PRIMARY_METRIC``, mR@50 at the trial's last epoch).

- ``param_importances``: Optuna's ``FanovaImportanceEvaluator`` (a random forest fitted to
  value ~ params, variance decomposed per param; needs scikit-learn), fixed seed, over the
  COMPLETE trials of every launch together. The importances sum to 1.
- ``top_configurations``: the best ``TOP_K`` finished runs of MLflow by mR@50, with p, λ, seed
  and their recalls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from reports.results import StudyResults, make_client
from sgstudy.metric_names import PRIMARY_METRIC, display_name

SEARCH_STUDIES = ("align-motifs-tpe",)
MIN_TRIALS = 10
# fANOVA's forest needs a few points to split on; fewer trials get no importances.
MIN_IMPORTANCE_TRIALS = 5
TOP_K = 5
IMPORTANCE_SEED = 0
OPTUNA_STORAGE_PARAM = "optuna_storage"
LAUNCH_PARAM = "launch"
TOP_COLUMNS = ("mR_50", "mR_100", "R_50", "R_100")
PARAM_LABELS = {"mask_ratio": "p", "align_weight": "λ", "variant": "variant", "seed": "seed"}


@dataclass(frozen=True)
class SearchTrials:
    """The COMPLETE Optuna trials of a study's launches, in launch then trial order.

    studies: ``(storage URL, Optuna study name)`` of each launch read
    """

    trials: tuple[Any, ...]
    studies: tuple[tuple[str, str], ...]

    @property
    def values(self) -> list[float]:
        return [float(trial.value) for trial in self.trials]


def wants_search_analysis(results: StudyResults) -> bool:
    return results.study in SEARCH_STUDIES or len(results.runs) >= MIN_TRIALS


def load_search_trials(results: StudyResults) -> SearchTrials:
    """The Optuna trials behind ``results``' launches (empty when no storage names them)."""
    import optuna

    client = make_client(results.tracking_uri)
    found: dict[tuple[str, str], None] = {}
    for run_id in results.parent_run_ids:
        params = client.get_run(run_id).data.params
        storage, launch = params.get(OPTUNA_STORAGE_PARAM), params.get(LAUNCH_PARAM)
        if storage and launch:
            name = newest_launch_study(storage, launch)
            if name is not None:
                found[(storage, name)] = None
    trials = []
    for storage, name in found:
        study = optuna.load_study(study_name=name, storage=storage)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        trials += sorted(complete, key=lambda trial: trial.number)
    return SearchTrials(tuple(trials), tuple(found))


def newest_launch_study(storage: str, launch: str) -> str | None:
    import optuna

    pattern = re.compile(rf"{re.escape(launch)}-\d{{8}}-\d{{6}}")
    try:
        names = optuna.get_all_study_names(storage)
    except Exception:  # a storage that is gone or unreadable: no search analysis, not a failure
        return None
    matching = sorted(name for name in names if pattern.fullmatch(name))
    return matching[-1] if matching else None


def param_importances(search: SearchTrials) -> dict[str, float]:
    """fANOVA importance of each searched param for the searched value, largest first."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
        study.add_trials(search.trials)
        return get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED), normalize=True
        )
    finally:
        optuna.logging.set_verbosity(verbosity)


def best_so_far(values: list[float]) -> list[float]:
    best, out = float("-inf"), []
    for value in values:
        best = max(best, value)
        out.append(best)
    return out


def top_configurations(runs: pd.DataFrame, k: int = TOP_K) -> pd.DataFrame:
    """The ``k`` finished runs with the highest final mR@50 (ties by mR@100)."""
    ranked = runs.sort_values([PRIMARY_METRIC, "mR_100"], ascending=False, kind="stable")
    return ranked.head(k)


def top_table(runs: pd.DataFrame, k: int = TOP_K) -> str:
    """Markdown: rank, run, p, λ, seed and the recalls in percent."""
    header = ["#", "Run", "p", "λ", "seed", *(display_name(key) for key in TOP_COLUMNS)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---:", ":---"] + ["---:"] * 7) + "|",
    ]
    for rank, (_, row) in enumerate(top_configurations(runs, k).iterrows(), start=1):
        cells = [str(rank), str(row["run_name"]), number(row["p"], "{:.3g}"),
                 number(row["lambda"], "{:.3g}"),
                 "" if pd.isna(row["seed"]) else str(int(row["seed"]))]  # fmt: skip
        cells += [number(100 * row[key], "{:.1f}") for key in TOP_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def number(value: float, fmt: str) -> str:
    return "–" if pd.isna(value) else fmt.format(value)


def importance_table(importances: dict[str, float]) -> str:
    lines = ["| Parameter | fANOVA importance |", "|:---|---:|"]
    for name, value in importances.items():
        lines.append(f"| {PARAM_LABELS.get(name, name)} (`{name}`) | {value:.3f} |")
    return "\n".join(lines) + "\n"
