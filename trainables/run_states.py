"""The driver's side of a trial's MLflow run state: every run ends FINISHED, FAILED or KILLED.

A trial ends its own run when it can (``trainables.trial.TrialTracker``). A trial whose
worker process dies (killed, out of memory, a lost node) cannot: Tune sees the death, and
``RunStateCallback`` ends the run FAILED with the reason and traceback Tune recorded, once
the trial has no retries left. ``settle_runs`` then ends whatever a stopped launch left
RUNNING (KILLED when the launch was interrupted, to be continued by ``--resume``).

Its own module because it subclasses Ray Tune's ``Callback`` at import time.
"""

from __future__ import annotations

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
    from pathlib import Path

    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    error = trial.get_pickled_error()
    cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the trial's own
    if cause is None:
        return "the trial failed (no error recorded)", text
    return f"{type(cause).__name__}: {tracking.one_line(str(cause))}", text or repr(cause)


def end_failed_run(study_run: tracking.StudyRun, trial_id: str, reason: str, text: str) -> None:
    client = tracking.make_client(study_run.tracking_uri)
    run_id = tracking.find_trial_run(client, study_run, trial_id)
    if run_id is not None and client.get_run(run_id).info.status != tracking.FAILED:
        tracking.record_failure(client, run_id, reason, text)


def settle_runs(study_run: tracking.StudyRun, errored: dict[str, tuple[str, str]]) -> None:
    """Ends every child run the launch left RUNNING: FAILED (with the reason) for the
    trials in ``errored`` (trial id -> reason, traceback), KILLED for the others."""
    client = tracking.make_client(study_run.tracking_uri)
    for run in tracking.trial_runs(client, study_run, status=tracking.RUNNING):
        trial_id = run.data.tags.get(TRIAL_ID_TAG, "")
        if trial_id in errored:
            tracking.record_failure(client, run.info.run_id, *errored[trial_id])
        else:
            tracking.end_run(client, run.info.run_id, tracking.KILLED)
