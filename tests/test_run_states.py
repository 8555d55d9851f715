"""What a launch leaves in its stores after faults, on real SQLite MLflow and Optuna stores.

No Ray here: the functions the driver and the trials call, fed the states a fault leaves
(a run left RUNNING by a killed worker, an epoch trained twice, an Optuna trial FAIL that
finishes on --resume, four launches creating one new store at once, a --resume with other
settings than its launch). The end-to-end versions are in tests/test_study_faults.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from sgstudy import tracking
from sgstudy.errors import UserError
from sgstudy.metric_names import PRIMARY_METRIC, TOTAL_LOSS
from sgstudy.tracking_layout import TRIAL_ID_TAG
from trainables.plan import StudyOptions, plan_study
from trainables.run_states import settle_runs
from trainables.trial import TrialSettings, TrialTracker

STUDY = "align-motifs-p"
DATASET = (40, 64, 0)


@pytest.fixture
def store(tmp_path):
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracking.make_client(uri)
    experiment_id = tracking.get_or_create_experiment(client, STUDY, uri)
    parent = tracking.start_study_run(client, experiment_id, STUDY, "launch", {"seeds": "0"})
    return client, tracking.StudyRun(uri, experiment_id, parent, STUDY)


def tracker_for(client, study_run, trial_id: str) -> TrialTracker:
    run_id, _ = tracking.start_trial_run(client, study_run, trial_id, f"{trial_id} seed 0")
    return TrialTracker(client, run_id, TrialSettings(study_run=study_run, git_commit="x"))


def test_an_epoch_trained_again_is_logged_once(store):
    """A kill between logging epoch 2 and Tune recording its checkpoint makes the retried
    trial train epoch 2 again (from the epoch-1 checkpoint): MLflow keeps one point per step,
    the first one, in a new tracker of the same run too."""
    client, study_run = store
    tracker = tracker_for(client, study_run, "t1")
    for epoch in (1, 2):
        tracker.log_epoch(
            {TOTAL_LOSS: 2.0 / epoch, PRIMARY_METRIC: 0.1 * epoch, "epoch": epoch}, {}
        )
    retried = tracker_for(client, study_run, "t1")  # the next attempt, in a new process
    retried.log_epoch({TOTAL_LOSS: 0.9, PRIMARY_METRIC: 0.5, "epoch": 2}, {})
    retried.log_epoch({TOTAL_LOSS: 0.8, PRIMARY_METRIC: 0.6, "epoch": 3}, {})
    history = client.get_metric_history(tracker.run_id, TOTAL_LOSS)
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0), (3, 0.8)]
    tracking.log_epoch(client, tracker.run_id, 3, {TOTAL_LOSS: 0.1})  # without a tracker
    assert len(client.get_metric_history(tracker.run_id, TOTAL_LOSS)) == 3
    # A fresh attempt (no history) and one that fills in what its checkpoint holds.
    tracker_for(client, study_run, "t1").backfill([])
    tracker_for(client, study_run, "t1").backfill(
        [{TOTAL_LOSS: 5.0, "epoch": 3}, {TOTAL_LOSS: 0.7, PRIMARY_METRIC: 0.7, "epoch": 4}]
    )
    history = client.get_metric_history(tracker.run_id, TOTAL_LOSS)
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0), (3, 0.8), (4, 0.7)]


def test_a_failing_trial_ends_failed_with_its_reason_and_traceback(store):
    client, study_run = store
    tracker = tracker_for(client, study_run, "t2")
    try:
        raise FloatingPointError("loss became inf at step 3\nmore detail")
    except FloatingPointError as exc:
        tracker.stop(exc)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.info.end_time
    assert run.data.tags[tracking.FAILURE_TAG] == "FloatingPointError: loss became inf at step 3"
    text = Path(client.download_artifacts(tracker.run_id, tracking.FAILURE_ARTIFACT)).read_text()
    assert "Traceback" in text and "raise FloatingPointError" in text
    # Run again on --resume, it no longer claims the old failure.
    tracking.start_trial_run(client, study_run, "t2", "t2 seed 0")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "RUNNING" and tracking.FAILURE_TAG not in run.data.tags


def test_an_interrupted_trial_ends_killed(store):
    client, study_run = store
    tracker = tracker_for(client, study_run, "t3")
    tracker.stop(KeyboardInterrupt())
    assert client.get_run(tracker.run_id).info.status == "KILLED"


def test_settle_ends_every_run_a_stopped_launch_left_running(store):
    """Runs whose worker died cannot end themselves: the driver ends the errored trial's
    run FAILED with Tune's reason and traceback, a trial Tune holds every epoch of (stopped on
    its last one, its worker ended first) FINISHED, and the others KILLED; finished runs stay."""
    client, study_run = store
    trials = ("t4", "t5", "t6", "t7")
    died, waiting, done, _ = (tracker_for(client, study_run, t) for t in trials)
    tracking.end_run(client, done.run_id, tracking.FINISHED)
    reason = "RayActorError: The actor died unexpectedly before finishing this task."
    settle_runs(study_run, {"t4": (reason, "Failure # 1\nTraceback ...")}, frozenset({"t7"}))
    statuses = {
        run.data.tags[TRIAL_ID_TAG]: run.info.status
        for run in tracking.trial_runs(client, study_run)
    }
    assert statuses == {"t4": "FAILED", "t5": "KILLED", "t6": "FINISHED", "t7": "FINISHED"}
    assert client.get_run(died.run_id).data.tags[tracking.FAILURE_TAG] == reason
    assert waiting.run_id and not tracking.trial_runs(client, study_run, status="RUNNING")


# ---------------------------------------------------------------- Optuna after --resume
@pytest.fixture
def plan(tmp_path, synthetic_root_factory):
    return plan_study(
        StudyOptions(
            study=STUDY,
            data_root=str(synthetic_root_factory(*DATASET)),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage_path=str(tmp_path / "ray_results"),
            values=(0.1,),
        )
    )


def test_a_trial_failed_in_optuna_that_finishes_on_resume_completes_there(plan):
    """Trial a used up its retries (Optuna: FAIL); --resume runs it again and it finishes,
    but Tune's concurrency limiter does not pass that result to the searcher. The driver's
    reconciliation then gives Optuna a COMPLETE record of it with the run's value (it used
    to stay FAIL while MLflow said FINISHED), once, however often it runs."""
    import optuna

    from trainables.run_states import reconcile_optuna
    from trainables.searcher import RETRY_OF_ATTR, TUNE_TRIAL_ATTR
    from trainables.study import build_searcher

    searcher = build_searcher(plan)
    config = searcher.suggest("trial-a")
    searcher.suggest("trial-b")
    searcher.on_trial_complete("trial-a", error=True)
    searcher.on_trial_complete("trial-b", {PRIMARY_METRIC: 0.5, "training_iteration": 2})

    class Finished:  # the two fields of a Tune ``Result`` that reconciliation reads
        def __init__(self, trial_id: str, value: float) -> None:
            self.metrics = {"trial_id": trial_id, PRIMARY_METRIC: value}
            self.error = None

    results = [Finished("trial-a", 0.25), Finished("trial-b", 0.5)]
    assert reconcile_optuna(plan.optuna_url, plan.launch, results, PRIMARY_METRIC) == 1
    assert reconcile_optuna(plan.optuna_url, plan.launch, results, PRIMARY_METRIC) == 0

    (name,) = optuna.get_all_study_names(plan.optuna_url)
    trials = optuna.load_study(study_name=name, storage=plan.optuna_url).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    failed, other, completed = trials
    assert completed.params == failed.params == {"variant": config["variant"], "seed": 0}
    assert completed.value == 0.25 and completed.user_attrs[RETRY_OF_ATTR] == failed.number
    assert completed.user_attrs[TUNE_TRIAL_ATTR] == "trial-a" and other.value == 0.5


# ---------------------------------------------------------------- a new store, four launches
OPEN_STORE = """
import sys, time
from sgstudy import tracking
from trainables.study import open_optuna_storage

folder, start_at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))  # all four at the same moment
uri = f"sqlite:///{folder}/mlflow.db"
client = tracking.make_client(uri)
experiment_id = tracking.get_or_create_experiment(client, "align-motifs-p", uri)
tracking.start_study_run(client, experiment_id, "align-motifs-p", "launch", {"n": 1})
open_optuna_storage(f"sqlite:///{folder}/optuna.db").create_new_study([])
"""


def test_four_launches_create_one_new_store_together(tmp_path):
    """Four drivers open stores that do not exist yet at the same moment, as four launches
    started together do (MLflow's schema, the experiment, a parent run; Optuna's schema and
    a study), through the driver's own functions: all four succeed (one used to die in
    alembic's migration of the new MLflow database)."""
    import time

    import optuna
    from mlflow.tracking import MlflowClient

    start_at = time.time() + 10  # past every process's imports, even on a loaded machine
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, str(tmp_path), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err[-3000:] for _, err in outputs]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    assert len(client.search_runs([experiment.experiment_id])) == 4
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")) == 4


# ---------------------------------------------------------------- --resume's settings
def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def record_launch(plan, statuses: list[str]) -> tracking.StudyRun:
    from trainables.study import launch_params

    client = tracking.make_client(plan.tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, STUDY, plan.tracking_uri)
    parent = tracking.start_study_run(
        client, experiment_id, STUDY, plan.launch, launch_params(plan)
    )
    study_run = tracking.StudyRun(plan.tracking_uri, experiment_id, parent, STUDY)
    for i, status in enumerate(statuses):
        run_id, _ = tracking.start_trial_run(client, study_run, f"t{i}", f"v{i}")
        client.set_tag(run_id, tracking.VARIANT_TAG, ["baseline", "p=0.1"][i])
        client.log_param(run_id, "seed", 0)
        tracking.log_epoch(client, run_id, 4, {PRIMARY_METRIC: [0.2, 0.3][i], "epoch": 4})
        tracking.end_run(client, run_id, status)
    tracking.end_run(client, parent, "FINISHED")
    return study_run


def test_resume_with_other_settings_is_refused_naming_them(plan, tmp_path):
    """--resume --epochs 8 of a 4-epoch launch: one error naming the setting, nothing changed
    (it used to train nothing, call every trial stopped at 4/8 and turn the parent KILLED)."""
    import dataclasses

    from trainables.study import check_resume

    record_launch(plan, ["FINISHED", "FINISHED"])
    before = digest(tmp_path)
    other = dataclasses.replace(plan, epochs=8)
    with pytest.raises(UserError) as refused:
        check_resume(other)
    message = str(refused.value)
    assert f"epochs {plan.epochs} (now 8)" in message and "\n" not in message
    assert digest(tmp_path) == before
    # Tune would restore the launch's schedule and actor reuse whatever the flags say.
    schedule = dataclasses.replace(
        plan,
        param_space={**plan.param_space, "lr": 0.05, "lr_steps": "3"},
        options=dataclasses.replace(plan.options, reuse_actors=False),
    )
    with pytest.raises(UserError) as refused:
        check_resume(schedule)
    message = str(refused.value)
    for setting in ("lr_steps None (now 3)", "lr None (now 0.05)", "reuse_actors True (now False)"):
        assert setting in message
    assert digest(tmp_path) == before


def test_resuming_a_finished_launch_prints_its_table_and_changes_nothing(plan, tmp_path, capsys):
    from trainables.study import check_resume

    record_launch(plan, ["FINISHED", "FINISHED"])
    before = digest(tmp_path)
    outcome = check_resume(plan)
    assert outcome is not None and outcome.complete
    assert [(r.variant, r.metrics[PRIMARY_METRIC]) for r in outcome.rows] == [
        ("baseline", 0.2),
        ("p=0.1", 0.3),
    ]
    out = capsys.readouterr().out
    assert "nothing to resume" in out and "stopped at epoch" not in out
    assert digest(tmp_path) == before


def test_run_help_documents_the_exit_codes(capsys):
    from sgstudy.cli import main

    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for line in ("0    every trial finished", "2    bad input", "3    the launch ended but", "130"):
        assert line in text
