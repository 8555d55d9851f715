"""The plan of a launch: a calibration run that really trains, the arithmetic from its times to
a launch's wall time, GPU-hours and cost, and ``sgstudy plan`` / ``run --dry-run`` end to end.

The tests that train (the calibration run; the end-to-end ones also start a Ray) are slow; run
them with
``.venv/bin/python -m pytest -m slow tests/test_launch_plan.py``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sgstudy.cli import main
from sgstudy.config import RunConfig
from trainables.calibration import Calibration, measure_trial
from trainables.launch_estimate import calibration_trial, estimate_launch, format_plan
from trainables.plan import StudyOptions, plan_study, resolve_max_concurrent

SGSTUDY = Path(sys.executable).parent / "sgstudy"
DATASET = (40, 64, 0)  # as in test_study.py: about 20 train, 4 val images


@pytest.fixture(scope="module")
def data_root(synthetic_root_factory) -> Path:
    return synthetic_root_factory(*DATASET)


@pytest.mark.slow
def test_calibration_times_real_training_steps(data_root, tmp_path):
    """Three timed steps of an Align-Motifs trial (after the warm-up) and its val batches:
    every time positive, and the epoch estimate is steps × mean step + batches × mean batch."""
    plan = plan_study(
        StudyOptions("align-motifs-p", str(data_root), seeds=(0,), storage_path=str(tmp_path))
    )
    variant, flat = calibration_trial(plan)
    assert variant == "p=0.05" and flat["align"] is True
    measured = measure_trial(flat, variant, steps=3, eval_batches=2)
    assert len(measured.step_s) == 3 and all(t > 0 for t in measured.step_s)
    assert 1 <= len(measured.eval_batch_s) <= 2 and all(t > 0 for t in measured.eval_batch_s)
    assert measured.steps_per_epoch >= 1 and measured.device == "cpu"
    epoch, half_width = measured.epoch_estimate()
    expected = measured.steps_per_epoch * sum(measured.step_s) / 3
    expected += (
        measured.eval_batches_per_epoch * sum(measured.eval_batch_s) / len(measured.eval_batch_s)
    )
    assert epoch == pytest.approx(expected)
    assert half_width > 0


def test_plan_turns_measured_times_into_wall_time_gpu_hours_and_cost(data_root, tmp_path):
    """12 trials of half a GPU on a 2-GPU, 8-CPU cluster run 4 at once in 3 waves; a trial of
    4 epochs × (10 steps of 1 s + 2 val batches of 0.5 s) + 2 s set-up takes 46 s, so the wall
    time is 138 s and the GPU-hours 12 × 0.5 × 46 / 3600, at $3 per GPU-hour."""
    # A cluster's address: the plan is not checked against this GPU-less machine.
    options = StudyOptions(
        "align-motifs-p", str(data_root), seeds=(0, 1), gpus_per_trial=0.5, epochs=4,
        address="10.0.0.1:6379", storage_path=str(tmp_path),
    )  # fmt: skip
    plan = plan_study(options)
    cluster = {"CPU": 8.0, "GPU": 2.0}
    measured = Calibration(
        setup_s=2.0, step_s=(0.9, 1.0, 1.1), eval_batch_s=(0.5, 0.5), steps_per_epoch=10,
        eval_batches_per_epoch=2, device="cuda:0", node="10.0.0.2", variant="p=0.05",
    )  # fmt: skip
    concurrent = resolve_max_concurrent(options, cluster)
    estimate = estimate_launch(plan, cluster, concurrent, measured, price_per_gpu_hour=3.0)
    assert (estimate.concurrent, estimate.waves) == (4, 3)
    assert estimate.trial_s == pytest.approx(46.0)
    # 95% interval of the mean step time (std 0.1 over 3 steps), over 40 steps.
    assert estimate.trial_pm == pytest.approx(40 * 1.96 * 0.1 / math.sqrt(3))
    assert estimate.wall_s[0] == pytest.approx(138.0)
    gpu_hours = 12 * 0.5 * 46.0 / 3600
    assert estimate.device_hours(0.5)[0] == pytest.approx(gpu_hours)
    text = format_plan(estimate)
    assert "12 = 6 variants × 2 seeds" in text
    assert "4 trials at once, 3 waves" in text
    assert f"GPU-hours    {gpu_hours:.3f}" in text
    assert f"cost         ${gpu_hours * 3:.2f}" in text


def test_plan_without_calibration_says_times_are_not_measured(data_root, tmp_path):
    plan = plan_study(
        StudyOptions("align-motifs-tpe", str(data_root), seeds=(0,), storage_path=str(tmp_path))
    )
    estimate = estimate_launch(plan, {"CPU": 2.0}, 2, None)
    text = format_plan(estimate)
    assert "12 = 12 search trials × 1 seeds" in text
    assert "not measured" in text and "GPU-hours" not in text
    # A search study's calibration trial: its own model keys, the paper's p and λ, a valid config.
    variant, flat = calibration_trial(plan)
    assert variant == "p=0.1, λ=10" and (flat["model"], flat["protocol"]) == ("motifs", "predcls")
    assert RunConfig.from_flat(flat).model.align.mask_ratio == 0.1


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--calibration-steps", "1"], "--calibration-steps must be >= 2"),
        (["--price-per-gpu-hour", "-1"], "--price-per-gpu-hour must be >= 0"),
    ],
)
def test_bad_plan_flags_are_one_error_line(data_root, capsys, flags, needle):
    assert main(["plan", "align-motifs-p", "--data", str(data_root), *flags]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {needle}, got {flags[1]}"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SGSTUDY), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        start_new_session=True,
    )  # fmt: skip


def plan_seconds(text: str, row: str) -> float:
    value, unit = re.search(rf"^  {row}\s+([0-9.]+) (s|min|h) ±", text, re.M).groups()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


@pytest.mark.slow
def test_sgstudy_plan_prints_times_measured_by_its_calibration_run(tmp_path, data_root):
    done = run_cli(
        ["plan", "align-motifs-p", "--data", str(data_root), "--preset", "tiny", "--seeds", "0,1"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "12 = 6 variants × 2 seeds" in out
    assert re.search(r"2 warm-up \+ 8 timed steps, [0-9.]+ s/step", out), out
    assert plan_seconds(out, "one trial") > 0 and plan_seconds(out, "wall time") > 0
    assert list(tmp_path.iterdir()) == []  # a plan writes nothing


@pytest.mark.slow
def test_run_dry_run_prints_the_plan_and_runs_nothing(tmp_path, data_root):
    done = run_cli(
        ["run", "align-motifs-p", "--data", str(data_root), "--dry-run",
         "--calibration-steps", "2", "--price-per-gpu-hour", "2.5"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plan: study align-motifs-p" in done.stdout and "cost" in done.stdout
    assert "validation results" not in done.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_epochs_lr_steps_lr_and_batch_size_reach_every_trial_config(data_root, tmp_path):
    """``run --epochs 10 --lr-steps 7 --lr 0.05 --batch-size 4`` is the schedule each trial's
    RunConfig is built with."""
    options = StudyOptions(
        "align-motifs-p", str(data_root), seeds=(0,), epochs=10, lr_steps=(7,), lr=0.05,
        batch_size=4, storage_path=str(tmp_path),
    )  # fmt: skip
    plan = plan_study(options)
    trial = RunConfig.from_flat({**plan.param_space, "seed": 0})
    assert plan.epochs == 10 and trial.optim.epochs == 10 and trial.optim.lr_steps == (7,)
    assert trial.optim.lr == 0.05 and trial.optim.batch_size == 4
