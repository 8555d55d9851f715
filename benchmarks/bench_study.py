"""Platform overhead of a study: ``sgstudy run`` on a local Ray against its trials run back to back.

The six trials of ``align-motifs-p`` (Motifs baseline and Align-Motifs with p in 0.05, 0.1,
0.2, 0.4, 0.6 at λ = 10; preset tiny, one seed, ``--epochs`` epochs) run twice on this
machine in the same run:

1. sequentially, one after the other in this process, without Ray, Optuna or MLflow, through
   ``sgstudy.training.TrainingSession`` (the code the trainable drives), their run configs
   built by the study's own search space (``search_spaces.studies``) and the trainable's own
   ``split_config``, so both sides train exactly the same runs;
2. as a study, by the real ``sgstudy run`` in a subprocess whose working directory is a
   temporary folder (``mlflow.db``, ``optuna.db``, ``ray_results`` land there), on a fresh
   local Ray.

The ideal study time is the sequential time divided by the parallelism the study can use,
min(trials, trials at once), where "at once" is the study's own max concurrency on this
machine (CPUs // ``--cpus-per-trial``, read from the study's output). The platform overhead
is the study's wall time (process start to exit: imports, Ray start, MLflow and Optuna
set-up, Tune, per-epoch checkpoints and logging, shutdown) over that ideal. Both sides must
end with the same validation metrics, which checks that they did the same work.

The study's fixed costs are read from what the trials recorded in its MLflow store
(``trainables.trial``): each trial's setup (its function's entry to its first epoch) and
teardown (its last epoch's end to its run's end), its worker process, and, for a trial that
reused the worker of an earlier one, the hand-over (that trial's run end to this trial's
entry: Tune's bookkeeping and the worker's reset). The fixed cost of a trial after warm-up is
setup + teardown + hand-over of the trials in a reused worker; the start-up is the command's
start to the first trial's entry.

    python benchmarks/bench_study.py [--data DIR] [--epochs 2] [--cpus-per-trial 1] [--seed 0]
                                     [--study-log FILE] [--demo] [--no-reuse-actors]

Without ``--data`` a small synthetic dataset (200 images of 64 px) is generated into a
temporary folder with ``sgstudy data synth`` (the micro study). ``--demo`` measures the
demo's study instead: the embedded default dataset (``data/synthetic``, 2,000 images) and 4
epochs. ``--no-reuse-actors`` gives every trial a fresh worker process. Trials see no GPU
(the study reserves none, so Ray hides them), and the sequential runs use the CPU as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from search_spaces.studies import get_study
from sgstudy.config import RunConfig
from sgstudy.data.synthetic import EARLIER_VAL_FRACTION
from sgstudy.metric_names import TRIAL_SETUP_S, TRIAL_TEARDOWN_S
from sgstudy.tracking import VARIANT_TAG
from sgstudy.tracking_layout import (
    ROLE_TAG,
    ROLE_TRIAL,
    TRIAL_ENTERED_TAG,
    WORKER_PID_TAG,
    WORKER_TRIAL_TAG,
)
from sgstudy.training import TrainingSession
from trainables.study import TABLE_METRICS, TrialRow, format_table
from trainables.trial import VARIANT_KEY, split_config

STUDY = "align-motifs-p"
PRESET = "tiny"
SYNTH_IMAGES = 200
SYNTH_IMAGE_SIZE = 64
LOG_TAIL_LINES = 40
DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "synthetic"  # what `make demo` uses
DEMO_EPOCHS = 4
# Issue targets: start-up and fixed cost per trial in seconds, overhead ratio per study size.
STARTUP_TARGET_S = 8.0
FIXED_COST_TARGET_S = 1.5
RATIO_TARGET = {"micro": 2.0, "demo": 1.1}
# What `sgstudy run` prints once Ray is up and the launch is sized (trainables/study.py).
STUDY_LINE = re.compile(r"^study \S+: (\d+) trials, up to (\d+) at once")
TRIAL_STARTED = re.compile(r"^Trial (\S+) started with configuration")
TRIAL_COMPLETED = re.compile(r"^Trial (\S+) completed after (\d+) iterations")
CONFIG_VARIANT = re.compile(rf"^│ {VARIANT_KEY}\s+(.+?)\s*│$")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def sgstudy_command() -> list[str]:
    """The ``sgstudy`` console script of this interpreter's environment (what users type)."""
    script = Path(sys.executable).parent / "sgstudy"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "sgstudy.cli"]  # the same ``main`` as the script


def trial_threads(cpus_per_trial: float) -> int:
    """The torch threads of a trial: Ray sets OMP_NUM_THREADS = max(1, floor(CPUs reserved))
    in the trial's worker (``ray._private.utils.set_omp_num_threads_if_unset``), and torch
    takes its intra-op thread count from it."""
    return max(1, math.floor(cpus_per_trial))


def synth_dataset(out: Path) -> Path:
    command = sgstudy_command() + ["data", "synth", "--out", str(out)]
    command += ["--num-images", str(SYNTH_IMAGES), "--image-size", str(SYNTH_IMAGE_SIZE)]
    # The split the README's measurements used (before the embedded default's val grew).
    command += ["--val-fraction", str(EARLIER_VAL_FRACTION)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def trial_configs(data_root: str, seed: int, epochs: int) -> list[tuple[str, RunConfig]]:
    """(variant, run config) of every trial of the study, as a trial would build it.

    The study's define-by-run space is evaluated on a ``FixedTrial`` holding the (variant,
    seed) the grid sampler would suggest; the launch's keys are those ``plan_study`` puts in
    Tune's param space; ``split_config`` is the trainable's own translation.
    """
    seeds = (seed,)
    spec = get_study(STUDY)
    space = spec.space_fn(seeds)
    configs = []
    for variant in spec.grid or {}:
        constants = space(optuna.trial.FixedTrial({VARIANT_KEY: variant, "seed": seed}))
        tune_config = {
            **constants,
            VARIANT_KEY: variant,
            "seed": seed,
            "data_root": data_root,
            "preset": PRESET,
            "epochs": epochs,
        }
        run_config, _ = split_config(tune_config)
        configs.append((variant, run_config))
    return configs


# ------------------------------------------------------------------ sequential
def run_sequential(
    configs: Sequence[tuple[str, RunConfig]], threads: int, started: float
) -> tuple[float, list[TrialRow]]:
    """Seconds for all trials one after the other, and their final validation metrics.

    Each trial is timed from ``TrainingSession.start`` (data, statistics, model) to its last
    epoch's evaluation, as a trial spends them; checkpoints and logging are the platform's.
    """
    # A fair baseline: a trial with 1 CPU trains on 1 torch thread, so this path does too
    # (with more threads it would use cores the ideal time already credits to parallelism).
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")  # Ray hides GPUs from trials that reserve none; "auto" is CPU
    rows = []
    begin = time.perf_counter()
    for variant, config in configs:
        trial_begin = time.perf_counter()
        session = TrainingSession.start(config, device=cpu)
        result = None
        while not session.done:
            result = session.run_epoch()
        assert result is not None
        rows.append(
            TrialRow(
                method=get_study(STUDY).label(variant),
                variant=variant,
                seed=config.seed,
                epochs_done=result.epoch,
                failed=False,
                metrics={k: result.metrics[k] for k in TABLE_METRICS},
            )
        )
        print(f"[{time.perf_counter() - started:6.1f} s] sequential: {variant} done in "
              f"{time.perf_counter() - trial_begin:.1f} s", flush=True)  # fmt: skip
    return time.perf_counter() - begin, rows


# ------------------------------------------------------------------ the study
def study_environment() -> dict[str, str]:
    env = dict(os.environ)
    # An inherited OMP_NUM_THREADS would override Ray's per-trial thread count and break the
    # 1 CPU = 1 thread match with the sequential path; RAY_ADDRESS would send the study to
    # another cluster instead of this machine's.
    env.pop("OMP_NUM_THREADS", None)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive when printed, for the progress times
    return env


@dataclass(frozen=True)
class TrialCost:
    """One trial's fixed cost as it recorded it in MLflow; times in seconds.

    entered, ended: Unix times of its function's entry and of its run's end
    handover:       the previous trial's run end to this entry in the same worker (None:
                    the worker's first trial)
    """

    variant: str
    pid: int
    worker_trial: int
    entered: float
    ended: float
    setup: float
    teardown: float
    handover: float | None = None

    @property
    def fixed(self) -> float | None:
        """setup + teardown + hand-over of a trial in a reused worker (None: a fresh one)."""
        return None if self.handover is None else self.setup + self.teardown + self.handover


@dataclass(frozen=True)
class StudyRun:
    """What one ``sgstudy run`` took: wall seconds, phases, concurrency, output, trial costs."""

    seconds: float
    phases: dict[str, float]
    concurrency: int | None
    lines: list[str]
    startup: float | None  # the command's start to the first trial's entry
    costs: list[TrialCost]


def trial_costs(workdir: Path) -> list[TrialCost]:
    """The costs every trial of the launch in ``workdir`` recorded, with their hand-overs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'")
    costs = sorted(
        (
            TrialCost(
                variant=run.data.tags.get(VARIANT_TAG, "?"),
                pid=int(run.data.tags[WORKER_PID_TAG]),
                worker_trial=int(run.data.tags[WORKER_TRIAL_TAG]),
                entered=float(run.data.tags[TRIAL_ENTERED_TAG]),
                ended=run.info.end_time / 1000,
                setup=run.data.metrics[TRIAL_SETUP_S],
                teardown=run.data.metrics[TRIAL_TEARDOWN_S],
            )
            for run in runs
        ),
        key=lambda cost: cost.entered,
    )
    last_end: dict[int, float] = {}
    with_handover = []
    for cost in costs:
        previous = last_end.get(cost.pid)
        handover = None if previous is None else cost.entered - previous
        with_handover.append(dataclasses.replace(cost, handover=handover))
        last_end[cost.pid] = cost.ended
    return with_handover


def run_study(
    data_root: str,
    seed: int,
    epochs: int,
    cpus_per_trial: float,
    started: float,
    reuse_actors: bool = True,
) -> StudyRun:
    """Runs ``sgstudy run`` in a temporary working directory and reads what it took."""
    command = sgstudy_command() + [
        "run", STUDY, "--data", data_root, "--preset", PRESET, "--seeds", str(seed),
        "--epochs", str(epochs), "--cpus-per-trial", f"{cpus_per_trial:g}",
        # "local" always starts a fresh Ray here; no address would join a `ray start` cluster.
        "--address", "local",
        # The overhead of running trials; the plan's calibration run is a separate, opt-out cost.
        "--no-calibration",
        "--ray-table",  # the trial start and end lines below are Ray's
    ]  # fmt: skip
    if not reuse_actors:
        command.append("--no-reuse-actors")
    lines: list[str] = []
    marks: dict[str, float] = {}
    concurrency = None
    pending_trial = None
    with tempfile.TemporaryDirectory(prefix="bench-study-") as workdir:
        launched_at = time.time()
        begin = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=workdir, env=study_environment(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        for raw in process.stdout:
            line = ANSI_ESCAPE.sub("", raw.rstrip("\n"))
            lines.append(line)
            now = time.perf_counter()
            progress = None
            if match := STUDY_LINE.match(line):
                marks.setdefault("ready", now)
                concurrency = int(match.group(2))
                progress = f"Ray up, {match.group(1)} trials, up to {concurrency} at once"
            elif match := TRIAL_STARTED.match(line):
                pending_trial = match.group(1)
            elif pending_trial and (match := CONFIG_VARIANT.match(line)):
                progress = f"trial {pending_trial} started ({match.group(1)})"
                pending_trial = None
            elif match := TRIAL_COMPLETED.match(line):
                progress = f"trial {match.group(1)} completed ({match.group(2)} epochs)"
            elif line.endswith(": validation results"):
                marks.setdefault("results", now)
                progress = "all trials done, shutting down"
            if progress:
                print(f"[{now - started:6.1f} s] study: {progress}", flush=True)
        returncode = process.wait()
        seconds = time.perf_counter() - begin
        if returncode != 0:
            print("\n".join(lines[-LOG_TAIL_LINES:]))
            raise SystemExit(f"sgstudy run failed with exit status {returncode}")
        costs = trial_costs(Path(workdir))
    phases = {}
    if "ready" in marks and "results" in marks:
        phases = {
            "start-up (imports, plan, Ray, MLflow, Optuna)": marks["ready"] - begin,
            "trials (Tune)": marks["results"] - marks["ready"],
            "shutdown": begin + seconds - marks["results"],
        }
    startup = min(cost.entered for cost in costs) - launched_at if costs else None
    return StudyRun(seconds, phases, concurrency, lines, startup, costs)


def print_costs(study: StudyRun) -> None:
    """The trials' fixed costs, the start-up, and each against its target."""
    print("\nfixed cost per trial, measured inside the trials (seconds; # = trials the worker "
          "process ran before)")  # fmt: skip
    print(f"{'trial':<10} {'worker pid':>10} {'#':>2} {'setup':>7} {'teardown':>9} "
          f"{'hand-over':>9} {'fixed':>7}")  # fmt: skip
    for cost in study.costs:
        handover = "-" if cost.handover is None else f"{cost.handover:.2f}"
        fixed = "-" if cost.fixed is None else f"{cost.fixed:.2f}"
        print(f"{cost.variant:<10} {cost.pid:>10} {cost.worker_trial:>2} {cost.setup:>7.2f} "
              f"{cost.teardown:>9.2f} {handover:>9} {fixed:>7}")  # fmt: skip
    if study.startup is not None:
        print(f"sgstudy run start-up (command start to the first trial's entry): "
              f"{study.startup:.1f} s; target <= {STARTUP_TARGET_S:g} s")  # fmt: skip
    reused = [cost.fixed for cost in study.costs if cost.fixed is not None]
    if reused:
        mean = sum(reused) / len(reused)
        print(f"fixed cost per trial after warm-up (reused worker): mean {mean:.2f} s, max "
              f"{max(reused):.2f} s over {len(reused)} trials; target <= "
              f"{FIXED_COST_TARGET_S:g} s")  # fmt: skip
    fresh = [cost.setup + cost.teardown for cost in study.costs if cost.fixed is None]
    print(f"setup + teardown of a trial in a fresh worker: mean {sum(fresh) / len(fresh):.2f} s "
          f"over {len(fresh)} trials (process start and Tune's actor creation not included)")  # fmt: skip


def check_same_results(sequential: list[TrialRow], study_lines: list[str], epochs: int) -> None:
    """Each trial's row of the study's table, formatted by the study's own ``format_table``
    from the sequential run's metrics, must appear in the study's output."""
    expected = format_table(STUDY, sequential, epochs).splitlines()[4:]  # the trial rows
    printed = set(study_lines)
    missing = [row for row in expected if row not in printed]
    if missing:
        # Same configs and seed on the same CPU code give the same numbers, so a difference
        # means different work (e.g. the code was edited between the two halves of the run).
        print(f"validation metrics DIFFER: {len(missing)} of {len(expected)} trial rows of the "
              "sequential runs are not in the study's table (--study-log FILE keeps it); "
              "the sequential runs' table:")  # fmt: skip
        print(format_table(STUDY, sequential, epochs))
        return
    print(f"validation metrics agree: all {len(expected)} trial rows of the study's table")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset root (default: synthesise a small one)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study-log", help="also write the output of sgstudy run to this file")
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"the demo's study: {DEMO_DATA} and {DEMO_EPOCHS} epochs (overrides --data, --epochs)",
    )
    parser.add_argument(
        "--no-reuse-actors", action="store_true", help="a fresh worker process for every trial"
    )
    args = parser.parse_args()
    if args.demo:
        if not (DEMO_DATA / "VG-SGG-with-attri.h5").is_file():
            raise SystemExit(f"error: {DEMO_DATA} has no dataset: run `make demo` once")
        args.data, args.epochs = str(DEMO_DATA), DEMO_EPOCHS
    size = "demo" if args.demo else "micro" if args.data is None else None
    started = time.perf_counter()
    threads = trial_threads(args.cpus_per_trial)
    with tempfile.TemporaryDirectory(prefix="bench-study-data-") as tmp:
        if args.data is None:
            data = synth_dataset(Path(tmp) / "synthetic")
            print(f"[{time.perf_counter() - started:6.1f} s] synthetic dataset: "
                  f"{SYNTH_IMAGES} images of {SYNTH_IMAGE_SIZE} px in {data}")  # fmt: skip
        else:
            data = Path(args.data)
        # Absolute, as plan_study makes it: trials run in other working directories.
        data_root = str(data.expanduser().absolute())
        configs = trial_configs(data_root, args.seed, args.epochs)
        print(f"{STUDY}: {len(configs)} trials ({', '.join(v for v, _ in configs)}), preset "
              f"{PRESET}, seed {args.seed}, {args.epochs} epochs; {os.cpu_count()} CPUs, "
              f"{args.cpus_per_trial:g} CPU and {threads} torch thread(s) per trial; "
              f"actor reuse {'off' if args.no_reuse_actors else 'on'}")  # fmt: skip
        sequential_seconds, rows = run_sequential(configs, threads, started)
        study = run_study(
            data_root, args.seed, args.epochs, args.cpus_per_trial, started,
            reuse_actors=not args.no_reuse_actors,
        )  # fmt: skip
    if args.study_log:
        Path(args.study_log).write_text("\n".join(study.lines) + "\n")
    check_same_results(rows, study.lines, args.epochs)
    concurrency = study.concurrency
    if concurrency is None:  # the study line changed: size it as the study does, by CPUs
        concurrency = max(1, math.floor((os.cpu_count() or 1) / args.cpus_per_trial + 1e-9))
    parallel = min(len(configs), concurrency)
    ideal = sequential_seconds / parallel
    print(f"\n{'run':<48} {'at once':>7} {'seconds':>9}")
    print(f"{'sequential, one process (no Ray/MLflow/Optuna)':<48} {1:>7} "
          f"{sequential_seconds:>9.1f}")  # fmt: skip
    print(f"{'ideal study (sequential / at once)':<48} {parallel:>7} {ideal:>9.1f}")
    print(f"{'sgstudy run (local Ray, MLflow, Optuna)':<48} {parallel:>7} {study.seconds:>9.1f}")
    for phase, seconds in study.phases.items():
        print(f"{'  ' + phase:<48} {'':>7} {seconds:>9.1f}")
    print_costs(study)
    target = f"; target <= {RATIO_TARGET[size]:g}x for the {size} study" if size else ""
    print(f"platform overhead (study / ideal): {study.seconds / ideal:.2f}x{target}")


if __name__ == "__main__":
    main()
