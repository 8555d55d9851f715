"""``sgstudy dashboard STUDY``: optuna-dashboard on the Optuna storage of a study's launches.

optuna-dashboard is an optional extra (``pip install 'sgstudy[dashboard]'``); without it the
command is one clear error. The storage is the one the study's latest launch logged (parent-run
param ``optuna_storage``), unless ``--optuna-storage`` names another. The server binds to
127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import sys

from reports.results import find_experiment, make_client, quiet_fast_mlflow, tracking_errors
from reports.search_analysis import LAUNCH_PARAM, OPTUNA_STORAGE_PARAM, newest_launch_study
from sgstudy.errors import UserError
from sgstudy.tracking_layout import ROLE_STUDY, ROLE_TAG

INSTALL_HINT = "pip install 'sgstudy[dashboard]' (or: pip install optuna-dashboard)"


def require_dashboard() -> None:
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise UserError(f"optuna-dashboard is not installed; install it with {INSTALL_HINT}")


def study_storage(study: str, tracking_uri: str) -> tuple[str, str | None]:
    """``(storage URL, Optuna study name)`` of the study's latest launch."""
    with quiet_fast_mlflow(), tracking_errors(tracking_uri):
        client = make_client(tracking_uri)
        experiment_id = find_experiment(client, study, tracking_uri)
        parents = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_STUDY}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not parents or OPTUNA_STORAGE_PARAM not in parents[0].data.params:
        raise UserError(f"study {study!r} has no launch that names its Optuna storage")
    params = parents[0].data.params
    storage = params[OPTUNA_STORAGE_PARAM]
    return storage, newest_launch_study(storage, params.get(LAUNCH_PARAM, study))


def dashboard_command(storage: str, port: int) -> list[str]:
    """The optuna-dashboard server on ``storage`` (its public ``run_server``), 127.0.0.1 only."""
    serve = (
        "import sys, optuna_dashboard; "
        "optuna_dashboard.run_server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))"
    )
    return [sys.executable, "-c", serve, storage, str(port)]
