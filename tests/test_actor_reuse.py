"""Tune's actor reuse on the real stack: a trial run by a reused worker process starts from the
state the same trial has in a fresh process.

One launch of two trials (Motifs and Align-Motifs p = 0.1, seed 0, one epoch, one trial at a
time) runs ``run_study`` in a process of its own on a local Ray, with every trial tagging its
run with digests of the state its session starts from (``START_STATE_TAGS``). The second
trial runs in the first one's worker process; beside the launch, a fresh Python process
starts the second trial's session from the config Tune gave it and trains its epoch. The reused trial must
start from the same parameters and RNG states, with an empty optimiser, and reach the same
loss and validation metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_study import read_study, run_to_end

from sgstudy.metric_names import PRIMARY_METRIC, TOTAL_LOSS, TRIAL_SETUP_S, TRIAL_TEARDOWN_S
from sgstudy.tracking_layout import TRIAL_ID_TAG, WORKER_PID_TAG, WORKER_TRIAL_TAG
from trainables.worker import START_STATE_TAGS

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to clean up Ray processes"
)

STUDY = "align-motifs-p"
DATASET = (40, 64, 0)

LAUNCH_SCRIPT = """
import sys
from trainables.plan import StudyOptions
from trainables.study import run_study

outcome = run_study(StudyOptions(
    study=sys.argv[1], data_root=sys.argv[2], epochs=1, values=(0.1,), max_concurrent=1,
    log_start_state=True, verbose=0,
))
sys.exit(0 if outcome.complete else 1)
"""

# The second trial's session in a process that ran no session before, on one torch thread and
# the CPU, as the trial had them (Ray gives a 1-CPU trial OMP_NUM_THREADS=1 and hides GPUs).
# It starts with the launch and imports meanwhile, then waits for the config Tune gives the
# second trial (its params.json) and trains that trial's epoch.
FRESH_SCRIPT = """
import json, re, sys, time
from pathlib import Path
import torch
from sgstudy.training import TrainingSession
from trainables.trial import split_config
from trainables.worker import start_state

torch.set_num_threads(1)
experiment, deadline = Path(sys.argv[1]), time.monotonic() + 400
trial_dir = re.compile(r"_([0-9a-f]{8})_2_")
while not (found := [
    (match.group(1), path) for path in experiment.glob("*/params.json")
    if (match := trial_dir.search(path.parent.name)) and path.stat().st_size
]):
    assert time.monotonic() < deadline, "the second trial never started"
    time.sleep(0.2)
((trial_id, params),) = found
time.sleep(0.2)  # written in one go, but give the writer a moment to close it
run_config, _ = split_config(json.loads(params.read_text()))
session = TrainingSession.start(run_config, device=torch.device("cpu"))
state = start_state(session)
result = session.run_epoch()
print(json.dumps({"trial_id": trial_id, "state": state,
                  "values": {**result.metrics, **result.losses}}))
"""


@pytest.fixture(scope="module")
def launch(synthetic_root_factory, tmp_path_factory) -> tuple[dict, list]:
    """The launch's two runs, first trial first, and the fresh process's view of the second."""
    data_root = synthetic_root_factory(*DATASET)
    workdir = tmp_path_factory.mktemp("reuse")
    experiment = workdir / "ray_results" / STUDY
    fresh = subprocess.Popen(
        [sys.executable, "-c", FRESH_SCRIPT, str(experiment)],
        cwd=tmp_path_factory.mktemp("fresh"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = err = ""
    try:
        driver = run_to_end(
            [sys.executable, "-c", LAUNCH_SCRIPT, STUDY, data_root],
            workdir,
            tmp_path_factory.mktemp("reuse_logs"),
        )
        if driver.proc.returncode == 0:  # the second trial ran: its config is there
            out, err = fresh.communicate(timeout=120)
    finally:
        fresh.kill()
        fresh.wait()
    assert driver.proc.returncode == 0, driver.tail()
    assert fresh.returncode == 0, err
    runs = read_study(workdir).children
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    runs = sorted(runs, key=lambda run: int(run.data.tags[WORKER_TRIAL_TAG]))
    return json.loads(out.splitlines()[-1]), runs


def test_the_second_trial_runs_in_the_first_trials_worker_process(launch):
    _, (first, second) = launch
    assert first.data.tags[WORKER_PID_TAG] == second.data.tags[WORKER_PID_TAG]
    assert (first.data.tags[WORKER_TRIAL_TAG], second.data.tags[WORKER_TRIAL_TAG]) == ("0", "1")
    for run in (first, second):  # the fixed cost, measured inside each trial
        assert run.data.metrics[TRIAL_SETUP_S] > 0
        assert run.data.metrics[TRIAL_TEARDOWN_S] >= 0


def test_a_reused_trial_starts_as_in_a_fresh_process(launch):
    expected, (_, reused) = launch
    tags = reused.data.tags
    assert tags[TRIAL_ID_TAG] == expected["trial_id"]
    assert {key: tags[key] for key in START_STATE_TAGS} == expected["state"]
    assert tags["sgstudy.start.optimizer_state_entries"] == "0"
    for key in (TOTAL_LOSS, PRIMARY_METRIC, "R_50"):
        # Same parameters, RNG draws and data on the same CPU code: the same numbers.
        assert reused.data.metrics[key] == expected["values"][key], key


def test_a_process_parses_a_dataset_once_and_again_after_an_edit(synthetic_root_factory, tmp_path):
    """Sessions of one process share the parsed splits and the statistics of an unchanged
    dataset; another seed, or an edited annotation file, gives freshly loaded ones."""
    import shutil

    import torch

    from sgstudy.config import RunConfig
    from sgstudy.training import TrainingSession

    root = tmp_path / "data"
    shutil.copytree(synthetic_root_factory(*DATASET), root)
    flat = {"data_root": str(root), "preset": "tiny", "epochs": 1, "model": "motifs"}
    cpu = torch.device("cpu")
    first = TrainingSession.start(RunConfig.from_flat(flat), device=cpu)
    again = TrainingSession.start(RunConfig.from_flat(flat), device=cpu)
    assert again.train_loader.dataset is first.train_loader.dataset
    assert again.val_loader.dataset is first.val_loader.dataset
    assert again.statistics is first.statistics
    # Each session still has its own model and optimiser.
    assert again.model is not first.model and again.optimizer is not first.optimizer

    other_seed = TrainingSession.start(RunConfig.from_flat({**flat, "seed": 1}), device=cpu)
    assert other_seed.train_loader.dataset is not first.train_loader.dataset

    meta = root / "sgstudy_meta.json"
    meta.write_text(meta.read_text() + "\n")  # same content to a reader, another file state
    edited = TrainingSession.start(RunConfig.from_flat(flat), device=cpu)
    assert edited.train_loader.dataset is not first.train_loader.dataset
    assert edited.statistics is not first.statistics
    assert edited.statistics.fingerprint == first.statistics.fingerprint
