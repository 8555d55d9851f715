"""MLflow runs of a study, written with ``MlflowClient`` in the layout of ``tracking_layout``.

The study driver resolves the tracking URI (refusing an unreachable server before anything
is written), creates the study's experiment and one parent run per launch; each trial
starts, or resumes, its own child run from inside the trial process. A trial finds its run
again by the run id kept in its checkpoint or, failing that, by its trial id tag within the
parent, so a retried or resumed trial continues the run it started instead of opening a
second one (which is why nothing here uses Ray's MLflow callback: it keeps that map in the
driver's memory only).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sgstudy import tracking_ui
from sgstudy.errors import UserError
from sgstudy.paths import check_writable_folder, file_lock
from sgstudy.tracking_layout import (
    NODE_ID_TAG,
    PARENT_TAG,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
    STUDY_TAG,
    TRIAL_ID_TAG,
    default_tracking_uri,
)

# Extra tags of this module (the reports do not need them): which launch a parent run
# belongs to (the Tune experiment name, so --resume finds it), and a trial's grid variant.
LAUNCH_TAG = "sgstudy.launch"
VARIANT_TAG = "sgstudy.variant"
GPU_IDS_TAG = "sgstudy.gpu_ids"
# How many processes trained the trial (torch.distributed's world size; 1 without DDP).
WORLD_SIZE_TAG = "sgstudy.world_size"
RESUMED_FROM_TAG = "sgstudy.resumed_from_epoch"
# Why a trial's run ended FAILED (one line), with the traceback as FAILURE_ARTIFACT; and what
# happened to a launch, on its parent run ("12 of 12 trials finished", "2 of 4 trials failed").
FAILURE_TAG = "sgstudy.failure"
FAILURE_ARTIFACT = "traceback.txt"
OUTCOME_TAG = "sgstudy.outcome"
# MLflow's limit on a tag value is 8,000 characters; a reason line needs far fewer.
MAX_REASON_LENGTH = 1000

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
# MLflow's limit on a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_LENGTH = 6000
SERVER_TIMEOUT_S = 15.0  # a busy server answers its first API call slowly


@dataclass(frozen=True)
class StudyRun:
    """Where a study's trials log: picklable, handed to every trial by the driver."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study: str


# ---------------------------------------------------------------- the store
def resolve_tracking_uri(uri: str | None, timeout_s: float = SERVER_TIMEOUT_S) -> str:
    """A validated, absolute tracking URI; writes nothing.

    ``None`` is ``sqlite:///<cwd>/mlflow.db``. A relative SQLite path is made absolute
    because trials run in other working directories. An http(s) server must answer
    within ``timeout_s``. MLflow >= 3.13 refuses the plain file store, so it is refused here.
    """
    if uri is None:
        return default_tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        check_server_reachable(uri, timeout_s)
        return uri.rstrip("/")
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if not path.parent.is_dir():
            raise UserError(f"tracking URI {uri}: folder {path.parent} does not exist")
        check_writable_folder(path.parent, f"tracking URI {uri}: folder")
        return f"sqlite:///{path}"
    if scheme in ("", "file"):
        raise UserError(
            f"tracking URI {uri!r} is a file store, which MLflow no longer accepts; "
            "use sqlite:///PATH/mlflow.db or http://HOST:5000"
        )
    return uri


def sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI, absolute."""
    if not uri.startswith("sqlite:///"):
        raise UserError(f"tracking URI {uri!r} is not of the form sqlite:///PATH")
    return Path(uri[len("sqlite:///") :]).expanduser().absolute()


def check_server_reachable(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """Raises ``UserError`` unless the MLflow REST API at ``uri`` answers a real request.

    ``/health`` is not enough: a server started without ``--allowed-hosts`` for the address
    it is reached by answers ``/health`` but refuses every API call (403, "Invalid Host
    header"). The check lists one experiment, which writes nothing.
    """
    request = urllib.request.Request(f"{uri.rstrip('/')}{PROBE_ENDPOINT}")
    for key, value in auth_headers().items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode(errors="replace")
        raise UserError(
            f"tracking server {uri} refused an API call (HTTP {exc.code}: "
            f"{one_line(body) if body.strip() else exc.reason}); "
            + SERVER_HINTS.get(exc.code, "is it an MLflow server?")
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"tracking server {uri} is unreachable ({reason})") from exc


# A read-only REST call every MLflow server serves, and what its refusals usually mean.
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search?max_results=1"
SERVER_HINTS = {
    401: "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
    403: "start the server with --allowed-hosts naming the address you reach it by "
    "(see docs/cluster.md)",
}


def auth_headers() -> dict[str, str]:
    """The Authorization header MLflow's client would send, from its environment variables."""
    import base64

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def make_client(tracking_uri: str) -> Any:
    """An ``MlflowClient``; a SQLite store gets its schema created (or upgraded) under a file
    lock first, since two processes migrating one new database at once make one of them fail
    (alembic's ``CommandError``)."""
    from mlflow.tracking import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking_uri)
    path = sqlite_path(tracking_uri)
    with file_lock(path.with_name(path.name + ".lock")):
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # the store is built by its first use
    return client


def recorded_launch(tracking_uri: str, study: str, launch: str) -> Any:
    """The parent run of ``launch`` of ``study`` (``None`` if the store has none); creates
    nothing, not even the store."""
    if tracking_uri.startswith("sqlite:///") and not sqlite_path(tracking_uri).is_file():
        return None
    client = make_client(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return None
    run_id = find_study_run(client, experiment.experiment_id, launch)
    return client.get_run(run_id) if run_id else None


def git_commit(path: Path | None = None) -> str:
    """The commit checked out where sgstudy lives (``"unknown"`` outside a git checkout)."""
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


# ---------------------------------------------------------------- experiment and parent run
def get_or_create_experiment(client: Any, study: str, tracking_uri: str) -> str:
    """The id of the experiment named after ``study``; created on first use."""
    experiment = client.get_experiment_by_name(study)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment {study!r} is deleted; restore it or purge it "
                f"(mlflow gc --backend-store-uri {tracking_uri})"
            )
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        # Next to the database, not in whatever directory the driver happens to run from.
        location = (sqlite_path(tracking_uri).parent / "mlartifacts" / study).as_uri()
    try:
        experiment_id = client.create_experiment(study, artifact_location=location)
    except Exception:  # another driver created it in the meantime
        experiment = client.get_experiment_by_name(study)
        if experiment is None:
            raise
        return experiment.experiment_id
    tracking_ui.mark_experiment(client, experiment_id)
    return experiment_id


def start_study_run(
    client: Any, experiment_id: str, study: str, launch: str, params: dict[str, Any]
) -> str:
    """A new parent run for one launch of ``study``; returns its run id."""
    run = client.create_run(
        experiment_id,
        run_name=launch,
        tags={
            ROLE_TAG: ROLE_STUDY,
            STUDY_TAG: study,
            LAUNCH_TAG: launch,
            tracking_ui.NOTE_TAG: tracking_ui.launch_description(params),
        },
    )
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def find_study_run(client: Any, experiment_id: str, launch: str) -> str | None:
    """The newest parent run of ``launch`` (how ``--resume`` continues the same parent)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_STUDY}' and tags.`{LAUNCH_TAG}` = '{launch}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


# ---------------------------------------------------------------- trial runs
def find_trial_run(client: Any, study_run: StudyRun, trial_id: str) -> str | None:
    runs = client.search_runs(
        [study_run.experiment_id],
        filter_string=(
            f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' "
            f"and tags.`{PARENT_TAG}` = '{study_run.parent_run_id}'"
        ),
        order_by=["attributes.start_time ASC"],
    )
    return runs[0].info.run_id if runs else None


def trial_runs(client: Any, study_run: StudyRun, status: str | None = None) -> list[Any]:
    """The child runs of the launch's parent run (only those in ``status``, if given)."""
    query = f"tags.`{PARENT_TAG}` = '{study_run.parent_run_id}'"
    if status is not None:
        query += f" and attributes.status = '{status}'"
    return client.search_runs([study_run.experiment_id], filter_string=query, max_results=5000)


def start_trial_run(
    client: Any,
    study_run: StudyRun,
    trial_id: str,
    run_name: str,
    known_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """Starts the trial's child run, or resumes the one it already has.

    Returns ``(run_id, resumed)``. ``known_run_id`` comes from the trial's checkpoint;
    without it the run is looked up by ``trial_id`` within the parent. ``tags`` (the node
    id, say) are set on every start, so they describe the latest attempt.
    """
    run_id = known_run_id or find_trial_run(client, study_run, trial_id)
    resumed = run_id is not None
    if run_id is None:
        run = client.create_run(
            study_run.experiment_id,
            run_name=run_name,
            tags={
                ROLE_TAG: ROLE_TRIAL,
                STUDY_TAG: study_run.study,
                PARENT_TAG: study_run.parent_run_id,
                TRIAL_ID_TAG: trial_id,
            },
        )
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status=RUNNING)
        # An earlier attempt's failure no longer describes a run that runs again.
        if FAILURE_TAG in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, FAILURE_TAG)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value))
    return run_id, resumed


def node_tags(node_id: str, gpu_ids: list[Any]) -> dict[str, str]:
    return {NODE_ID_TAG: node_id, GPU_IDS_TAG: ",".join(str(g) for g in gpu_ids)}


# ---------------------------------------------------------------- logging
def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Logs the params the run does not have yet, long values truncated to MLflow's limit.

    A resumed run already holds them; MLflow refuses to change a logged param.
    """
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    fresh = [
        Param(key, str(value)[:MAX_PARAM_LENGTH])
        for key, value in params.items()
        if key not in existing
    ]
    for start in range(0, len(fresh), 100):  # MLflow's batch limit on params
        client.log_batch(run_id, params=fresh[start : start + 100])


def log_epoch(
    client: Any,
    run_id: str,
    epoch: int,
    values: dict[str, float],
    logged: set[int] | None = None,
) -> None:
    """Every value as a metric at ``step = epoch`` (1-based), unless the run has that step.

    ``logged`` holds the steps the run already has (``None``: ask MLflow) and gains ``epoch``:
    an epoch trained again after a kill that came between logging it and Tune recording its
    checkpoint is not logged a second time.
    """
    from mlflow.entities import Metric

    if logged is None:
        logged = logged_steps(client, run_id, next(iter(values)))
    if epoch in logged:
        return
    logged.add(epoch)
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, epoch) for key, value in values.items()]
    client.log_batch(run_id, metrics=metrics)


def logged_steps(client: Any, run_id: str, key: str) -> set[int]:
    """The steps at which ``key`` was logged (a resumed trial fills in the ones it missed)."""
    return {metric.step for metric in client.get_metric_history(run_id, key)}


def log_json(client: Any, run_id: str, artifact_file: str, payload: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / artifact_file
        path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        client.log_artifact(run_id, str(path))


def log_file(client: Any, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    client.log_artifact(run_id, os.fspath(path), artifact_path)


def end_run(client: Any, run_id: str, status: str) -> None:
    """Ends a run as FINISHED, FAILED or KILLED."""
    if status not in (FINISHED, FAILED, KILLED):
        raise ValueError(f"unknown end status {status!r}")
    client.set_terminated(run_id, status=status)


def record_failure(client: Any, run_id: str, reason: str, traceback_text: str) -> None:
    """Ends the run FAILED with ``reason`` (one line) as a tag and the traceback as artifact."""
    client.set_tag(run_id, FAILURE_TAG, one_line(reason))
    client.log_text(run_id, traceback_text, FAILURE_ARTIFACT)
    end_run(client, run_id, FAILED)


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else "unknown error"
    return line if len(line) <= MAX_REASON_LENGTH else line[: MAX_REASON_LENGTH - 3] + "..."


def status_for(exc: BaseException | None) -> str:
    """The end status of a run that stopped with ``exc`` (``None``: it completed)."""
    if exc is None:
        return FINISHED
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return KILLED
    return FAILED
