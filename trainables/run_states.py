"""The driver's side of a trial's MLflow run state: every run ends FINISHED, FAILED or KILLED.

A trial ends its own run when it can (``trainables.trial.TrialTracker``). A trial whose
worker process dies (killed, out of memory, a lost node) cannot: Tune sees the death, and
``RunStateCallback`` ends the run FAILED with the reason and traceback Tune recorded, once
the trial has no retries left. ``settle_runs`` then ends whatever a stopped launch left
RUNNING (KILLED when the launch was interrupted, to be continued by ``--resume``).

Its own module because it subclasses Ray Tune's ``Callback`` at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from sgstudy import tracking
from sgstudy.tracking_layout import TRIAL_ID_TAG


class RunStateCallback(Callback):
    """Ends the MLflow run of a trial that Tune gave up on as FAILED, with its reason."""

    def __init__(self, study_run: tracking.StudyRun) -> None:
        self.study_run = study_run

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        try:
            end_failed_run(self.study_run, trial.trial_id, *failure_of(trial))
        except Exception as exc:  # the launch goes on; settle_runs ends the run later
            print(f"could not end the MLflow run of trial {trial.trial_id}: {exc}", flush=True)


def failure_of(trial: Any) -> tuple[str, str]:
    """``(one-line reason, traceback text)`` of a trial Tune recorded as errored."""
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    error = latest_error(trial)
    cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the trial's own
    if cause is None:
        return "the trial failed (no error recorded)", text
    return f"{type(cause).__name__}: {tracking.one_line(str(cause))}", text or repr(cause)


def latest_error(trial: Any) -> BaseException | None:
    """The trial's last exception, as Tune pickled it in the trial's local folder a moment ago
    (``get_pickled_error`` reads the storage copy, which is only synced later)."""
    import cloudpickle

    name = trial.run_metadata.pickled_error_filename
    local = Path(trial.local_path, name) if trial.local_path and name else None
    if local is not None and local.is_file():
        return cloudpickle.loads(local.read_bytes())  # written by this driver's own Tune
    return trial.get_pickled_error()


def end_failed_run(study_run: tracking.StudyRun, trial_id: str, reason: str, text: str) -> None:
    client = tracking.make_client(study_run.tracking_uri)
    run_id = tracking.find_trial_run(client, study_run, trial_id)
    if run_id is not None and client.get_run(run_id).info.status != tracking.FAILED:
        tracking.record_failure(client, run_id, reason, text)


def settle_runs(
    study_run: tracking.StudyRun,
    errored: dict[str, tuple[str, str]],
    completed: frozenset[str] = frozenset(),
) -> None:
    """Ends every child run the launch left RUNNING: FAILED (with the reason) for the
    trials in ``errored`` (trial id -> reason, traceback), FINISHED for the trials in
    ``completed`` (Tune has their last epoch: a scheduler stopped them there, and their
    worker was ended before they could end their run), KILLED for the others."""
    client = tracking.make_client(study_run.tracking_uri)
    for run in tracking.trial_runs(client, study_run, status=tracking.RUNNING):
        trial_id = run.data.tags.get(TRIAL_ID_TAG, "")
        if trial_id in errored:
            tracking.record_failure(client, run.info.run_id, *errored[trial_id])
        elif trial_id in completed:
            tracking.end_run(client, run.info.run_id, tracking.FINISHED)
        else:
            tracking.end_run(client, run.info.run_id, tracking.KILLED)


def reconcile_optuna(optuna_url: str, launch: str, results: Any, metric: str) -> int:
    """Records in Optuna the trials that failed there but finished on ``--resume``.

    Optuna never changes a finished trial, so each gets a COMPLETE record with the same
    parameters and the trial's final ``metric``, marked ``RETRY_OF_ATTR``: Optuna's last
    record of every Tune trial then says what MLflow says. Returns how many were added.
    """
    import optuna
    from optuna.trial import TrialState

    from trainables.searcher import RETRY_OF_ATTR, TUNE_TRIAL_ATTR

    finished = {
        str(result.metrics.get("trial_id")): float(result.metrics[metric])
        for result in results
        if result.error is None and metric in (result.metrics or {})
    }
    storage = optuna.storages.RDBStorage(optuna_url)
    added = 0
    for name in optuna.get_all_study_names(storage):
        if not name.startswith(f"{launch}-"):
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        last: dict[str, Any] = {}
        for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            last[trial.user_attrs.get(TUNE_TRIAL_ATTR, "")] = trial
        for trial_id, trial in last.items():
            if trial_id in finished and trial.state == TrialState.FAIL:
                study.add_trial(
                    optuna.trial.create_trial(
                        params=trial.params,
                        distributions=trial.distributions,
                        value=finished[trial_id],
                        user_attrs={**trial.user_attrs, RETRY_OF_ATTR: trial.number},
                    )
                )
                added += 1
    return added
