"""Faults on the real stack: a trial worker killed with no retry left, then --resume; and the
chaos benchmark at CI size (workers killed at random, the driver killed once, resumed).

Both drive ``sgstudy run`` in processes of their own sessions, on a local Ray that each
driver starts, and kill only processes found under those drivers (never by name: other Ray
clusters may run on the machine). They train real trials, so both are slow; the fast
checks of the same states (settling runs, Optuna after --resume, metric steps, resume
settings) are in tests/test_run_states.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import signal
import sys
import time
from pathlib import Path

import pytest
from test_study import (
    read_study,
    run_to_end,
    sgstudy_run,
    start,
    subprocess_env,
    wait_until,
)

from sgstudy import tracking
from sgstudy.metric_names import PRIMARY_METRIC, TOTAL_LOSS

ROOT = Path(__file__).resolve().parents[1]
STUDY = "align-motifs-p"
DATASET = (40, 64, 0)
# Only the kills this test makes: Ray's memory monitor would also kill trial workers when
# other programs fill a shared machine's memory.
ENV = subprocess_env(RAY_memory_monitor_refresh_ms="0")


def load_chaos_module():
    spec = importlib.util.spec_from_file_location(
        "chaos_study", ROOT / "benchmarks" / "chaos_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chaos = load_chaos_module()


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_killed_worker_without_retries_fails_its_run_and_resume_mends_every_store(
    tmp_path, synthetic_root_factory
):
    """A trial whose worker is SIGKILLed with --max-failures 0 ends its MLflow run FAILED
    (reason tag, traceback artifact; it used to stay RUNNING forever), the launch exits 3
    with one line naming the run, and the parent says what happened. --resume finishes it:
    every run FINISHED once, each epoch once, and Optuna's last word on each grid point is
    COMPLETE with the run's value (it used to stay FAIL). A --resume with other settings is
    then refused, and one more --resume only prints the table; neither changes a byte."""
    data = synthetic_root_factory(*DATASET)
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = (STUDY, "--data", data, "--epochs", 3, "--values", "0.1", "--max-concurrent", 1)
    driver = start(sgstudy_run(*args, "--max-failures", 0), workdir, tmp_path / "first", ENV)
    try:

        def worker_logged_an_epoch() -> bool:
            if "parent run" not in driver.stdout():
                return False
            tracked = read_study(workdir)
            return any(tracked.steps(run, TOTAL_LOSS) for run in tracked.children)

        wait_until(worker_logged_an_epoch, driver, 600, "a trial's first epoch")
        workers = chaos.trial_workers(driver.proc.pid)
        assert len(workers) == 1, workers
        chaos.os.kill(workers[0], signal.SIGKILL)
        driver.proc.wait(timeout=900)
    finally:
        driver.stop()
    assert driver.proc.returncode == 3, driver.tail()
    tracked = read_study(workdir)
    statuses = sorted(run.info.status for run in tracked.children)
    assert statuses == ["FAILED", "FINISHED"], statuses
    (failed,) = [run for run in tracked.children if run.info.status == "FAILED"]
    assert "Actor" in failed.data.tags[tracking.FAILURE_TAG]
    artifacts = {a.path for a in tracked.client.list_artifacts(failed.info.run_id)}
    assert tracking.FAILURE_ARTIFACT in artifacts
    summary = [line for line in driver.stderr().splitlines() if "trials failed" in line]
    assert len(summary) == 1 and summary[0].startswith("1 of 2 trials failed: ")
    assert failed.info.run_id in summary[0] and failed.info.run_name in summary[0]
    parent = tracked.parents[0]
    assert parent.info.status == "FAILED"
    assert parent.data.tags[tracking.OUTCOME_TAG] == "1 of 2 trials failed"

    resumed = run_to_end(sgstudy_run(*args, "--resume"), workdir, tmp_path / "resumed", ENV)
    assert resumed.proc.returncode == 0, resumed.tail()
    audit = chaos.audit(workdir, trials=2, epochs=3)
    assert (audit.finished, audit.runs) == (2, 2)
    assert set(audit.runs_per_trial.values()) == {1}
    assert (audit.missing_steps, audit.duplicate_steps, audit.disagreements) == (0, 0, [])
    tracked = read_study(workdir)
    assert tracked.parents[0].info.status == "FINISHED"
    assert all(tracking.FAILURE_TAG not in run.data.tags for run in tracked.children)
    assert all(PRIMARY_METRIC in run.data.metrics for run in tracked.children)

    before = digest(workdir)
    changed = run_to_end(sgstudy_run(*args, "--resume", "--epochs", 8), workdir, tmp_path / "r2")
    lines = changed.stderr().strip().splitlines()
    assert changed.proc.returncode == 2 and len(lines) == 1, changed.tail()
    assert "epochs 3 (now 8)" in lines[0]
    again = run_to_end(sgstudy_run(*args, "--resume"), workdir, tmp_path / "r3")
    assert again.proc.returncode == 0, again.tail()
    assert "nothing to resume" in again.stdout() and "stopped at epoch" not in again.stdout()
    assert digest(workdir) == before


@pytest.mark.slow
def test_chaos_at_ci_size_finishes_every_trial_once(tmp_path, synthetic_root_factory, monkeypatch):
    """4 trials, 3 epochs; a trial worker killed every 10 s (at most 3 kills), the driver
    killed once a trial has finished, then --resume: 4/4 finished, 4 runs, no missing or
    duplicate metric step, Optuna and MLflow agree."""
    data = synthetic_root_factory(*DATASET)
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")  # only this test's kills
    started = time.monotonic()
    launch, audit, wall = chaos.run_chaos(
        data, tmp_path, "0", 3, "0.1,0.2,0.4", kill_every=10.0, max_failures=10, max_kills=3
    )
    print(chaos.report(launch, audit, wall, None))
    assert launch.driver_kills == 1 and launch.worker_kills >= 1
    assert launch.exit_codes == [0]
    assert (audit.finished, audit.trials, audit.runs) == (4, 4, 4)
    assert set(audit.runs_per_trial.values()) == {1}
    assert (audit.missing_steps, audit.duplicate_steps, audit.disagreements) == (0, 0, [])
    assert time.monotonic() - started < 3600
