"""Chaos study: a study whose trial workers and driver are killed, checked store by store.

A tiny ``align-motifs-p`` launch (6 variants x 2 seeds = 12 trials by default) runs through
the real ``sgstudy run`` in a subprocess of its own session. Every ``--kill-every`` seconds
one of its running trial workers is SIGKILLed by process id; ``--max-failures`` gives each
trial enough retries to finish. Once a third of the trials have finished (or
``--kill-driver-after`` seconds have passed), the driver is killed once with its whole
process tree (its local Ray included), and the same command with ``--resume`` finishes the
launch while the workers keep being killed. Then it reads what the stores hold:

- kills of trial workers and of the driver, and the retries Tune recorded for them;
- trials finished: FINISHED MLflow child runs against the launch's trial count;
- MLflow runs per trial (one run per Tune trial id is the target);
- missing and duplicate metric steps (every run holds the loss and mR@50 once per epoch);
- Optuna/MLflow disagreements: a run whose grid point's last Optuna trial is not COMPLETE
  with the run's final mR@50, or a FINISHED run Optuna does not hold;
- the wall time against an unkilled run of the same launch (``--no-baseline`` skips it).

Only processes this script started are ever killed: trial workers are found as descendants
of the driver it spawned (its local Ray's raylet runs under it), never by a name match
across the machine, where other people's Ray clusters may be running.

    python benchmarks/chaos_study.py [--data DIR] [--seeds 0,1] [--epochs 12] [--kill-every 30]
                                     [--values 0.05,0.1,...] [--max-failures 30] [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.processes import command_line, group_tree

STUDY = "align-motifs-p"
SYNTH_IMAGES = 40
SYNTH_IMAGE_SIZE = 64
# What a Ray worker running a function trainable calls itself in the process table.
TRIAL_WORKER_TITLE = "ray::ImplicitFunc"
TIMEOUT_S = 3600
MAX_RESUMES = 3


def sgstudy_command() -> list[str]:
    script = Path(sys.executable).parent / "sgstudy"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sgstudy.cli"]


# ---------------------------------------------------------------- processes (/proc)
def trial_workers(driver: int) -> list[int]:
    """The driver's trial workers that are running a trial now."""
    return sorted(p for p in group_tree({driver}) if command_line(p).startswith(TRIAL_WORKER_TITLE))


def kill_tree(root: int) -> None:
    for pid in group_tree({root}):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- one driver
@dataclass
class Launch:
    """One ``sgstudy run`` in ``workdir``, output in ``logs``."""

    args: list[str]
    workdir: Path
    logs: Path
    worker_kills: int = 0
    driver_kills: int = 0
    exit_codes: list[int] = field(default_factory=list)

    def start(self, resume: bool) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        name = f"resume{len(self.exit_codes) + self.driver_kills}" if resume else "first"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        with (
            open(self.logs / f"{name}.out", "wb") as out,
            open(self.logs / f"{name}.err", "wb") as err,
        ):
            return subprocess.Popen(
                [*sgstudy_command(), "run", *self.args, *(["--resume"] if resume else [])],
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def drive(
        self,
        proc: subprocess.Popen,
        kill_every: float,
        max_kills: int | None,
        kill_driver: Any = None,
    ) -> bool:
        """Kills a random trial worker every ``kill_every`` s until the driver exits; returns
        True if ``kill_driver()`` said so and the driver was killed."""
        rng = random.Random(0)
        next_kill = time.monotonic() + kill_every
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
                if kill_driver is not None and kill_driver():
                    kill_tree(proc.pid)
                    proc.wait(timeout=60)
                    self.driver_kills += 1
                    return True
                if time.monotonic() < next_kill:
                    continue
                if max_kills is not None and self.worker_kills >= max_kills:
                    continue
                workers = trial_workers(proc.pid)
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    self.worker_kills += 1
                next_kill = time.monotonic() + kill_every
            if proc.poll() is None:
                raise SystemExit(f"the driver ran past {TIMEOUT_S} s; see {self.logs}")
            self.exit_codes.append(proc.returncode)
            return False
        finally:
            if proc.poll() is None or kill_driver is None:
                kill_tree(proc.pid)  # whatever the driver left (nothing, normally)
            proc.wait(timeout=60)


# ---------------------------------------------------------------- what the stores hold
@dataclass(frozen=True)
class Audit:
    trials: int
    finished: int
    runs: int
    runs_per_trial: Counter
    missing_steps: int
    duplicate_steps: int
    disagreements: list[str]
    retries: int


def finished_trials(workdir: Path) -> int:
    """FINISHED child runs so far (0 while the store does not exist yet)."""
    if not (workdir / "mlflow.db").is_file():
        return 0
    try:
        _, children = study_runs(workdir)
    except Exception:  # the driver is creating the store right now
        return 0
    return sum(run.info.status == "FINISHED" for run in children)


def study_runs(workdir: Path) -> tuple[Any, list[Any]]:
    from mlflow.tracking import MlflowClient

    from sgstudy.tracking_layout import ROLE_TAG, ROLE_TRIAL

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)
    if experiment is None:
        return client, []
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    return client, [run for run in runs if run.data.tags.get(ROLE_TAG) == ROLE_TRIAL]


def audit(workdir: Path, trials: int, epochs: int) -> Audit:
    """Reads MLflow, Optuna and Tune's trial folders of the launch in ``workdir``."""
    from sgstudy.metric_names import PRIMARY_METRIC, TOTAL_LOSS
    from sgstudy.tracking_layout import TRIAL_ID_TAG

    client, children = study_runs(workdir)
    per_trial = Counter(run.data.tags.get(TRIAL_ID_TAG) for run in children)
    missing = duplicate = 0
    for run in children:
        for key in (TOTAL_LOSS, PRIMARY_METRIC):
            steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
            if run.info.status == "FINISHED":  # a FAILED run stops short by definition
                missing += sum(1 for epoch in range(1, epochs + 1) if epoch not in steps)
            duplicate += sum(count - 1 for count in steps.values())
    return Audit(
        trials=trials,
        finished=sum(run.info.status == "FINISHED" for run in children),
        runs=len(children),
        runs_per_trial=per_trial,
        missing_steps=missing,
        duplicate_steps=duplicate,
        disagreements=optuna_disagreements(workdir, children),
        retries=sum(
            error.read_text(errors="replace").count("Failure # ")
            for error in (workdir / "ray_results").glob(f"{STUDY}/*/error.txt")
        ),
    )


def optuna_disagreements(workdir: Path, children: list[Any]) -> list[str]:
    """Runs whose grid point's last Optuna trial does not say what MLflow says."""
    import optuna

    from sgstudy.metric_names import PRIMARY_METRIC
    from sgstudy.tracking import VARIANT_TAG

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    trials: list[Any] = []
    for name in optuna.get_all_study_names(storage):
        trials += optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    last: dict[tuple[str, int], Any] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        last[(trial.params.get("variant"), int(trial.params.get("seed", -1)))] = trial
    expected = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "FAIL"}
    found = []
    for run in children:
        point = (run.data.tags.get(VARIANT_TAG), int(run.data.params.get("seed", -1)))
        trial = last.get(point)
        state = trial.state.name if trial else "missing"
        want = expected.get(run.info.status, "RUNNING")
        final = run.data.metrics.get(PRIMARY_METRIC)
        if state != want or (want == "COMPLETE" and trial.value != final):
            found.append(f"{point[0]} seed {point[1]}: MLflow {run.info.status}, Optuna {state}")
    return found


# ---------------------------------------------------------------- the benchmark
def run_chaos(
    data: Path,
    workdir: Path,
    seeds: str,
    epochs: int,
    values: str | None,
    kill_every: float,
    max_failures: int,
    max_kills: int | None = None,
    kill_driver_after: float | None = None,
) -> tuple[Launch, Audit, float]:
    """The killed launch, start to finish; returns it, its audit and its wall time."""
    from search_spaces.studies import get_study

    values_tuple = tuple(float(v) for v in values.split(",")) if values else None
    trials = (
        get_study(STUDY)
        .with_values(values_tuple)
        .num_samples(tuple(int(s) for s in seeds.split(",")))
    )
    args = [STUDY, "--data", str(data), "--seeds", seeds, "--epochs", str(epochs)]
    args += ["--max-failures", str(max_failures)] + (["--values", values] if values else [])
    launch = Launch(args, workdir, workdir / "logs")
    started = time.monotonic()

    def time_to_kill_driver() -> bool:
        if kill_driver_after is not None:
            return time.monotonic() - started > kill_driver_after
        return finished_trials(workdir) >= max(1, trials // 3)

    killed = launch.drive(launch.start(False), kill_every, max_kills, time_to_kill_driver)
    # Resume after the driver kill, and after a driver that Ray itself failed (exit 1, e.g.
    # Tune not handling a worker killed by Ray's memory monitor), as a user would.
    for _ in range(MAX_RESUMES):
        if not (killed or launch.exit_codes[-1] == 1):
            break
        killed = launch.drive(launch.start(True), kill_every, max_kills)
    wall = time.monotonic() - started
    return launch, audit(workdir, trials, epochs), wall


def run_baseline(data: Path, workdir: Path, seeds: str, epochs: int, values: str | None) -> float:
    args = [STUDY, "--data", str(data), "--seeds", seeds, "--epochs", str(epochs)]
    args += ["--values", values] if values else []
    launch = Launch(args, workdir, workdir / "logs")
    started = time.monotonic()
    launch.drive(launch.start(False), kill_every=1e9, max_kills=0)
    return time.monotonic() - started


def report(launch: Launch, result: Audit, wall: float, baseline: float | None) -> str:
    counts = sorted(Counter(result.runs_per_trial.values()).items())
    lines = [
        f"{'trial workers killed':34s} {launch.worker_kills}",
        f"{'driver kills (then --resume)':34s} {launch.driver_kills}",
        f"{'retries recorded by Tune':34s} {result.retries}",
        f"{'trials finished':34s} {result.finished}/{result.trials}",
        f"{'MLflow trial runs':34s} {result.runs}  (runs per trial: "
        + ", ".join(f"{n} run{'s' if n > 1 else ''} x {k}" for n, k in counts)
        + ")",
        f"{'missing metric steps (FINISHED)':34s} {result.missing_steps}",
        f"{'duplicate metric steps':34s} {result.duplicate_steps}",
        f"{'Optuna/MLflow disagreements':34s} {len(result.disagreements)}",
        f"{'driver exit codes':34s} {launch.exit_codes}",
        f"{'wall time, killed launch':34s} {wall:.0f} s",
    ]
    if baseline is not None:
        lines.append(f"{'wall time, unkilled launch':34s} {baseline:.0f} s")
        lines.append(f"{'ratio killed / unkilled':34s} {wall / baseline:.2f}")
    lines += [f"  disagreement: {line}" for line in result.disagreements]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset (default: a 40-image synthetic one, generated)")
    parser.add_argument("--seeds", default="0,1")
    # 12 epochs: with reused trial workers the 12 trials of 4 epochs finished in about 40 s, so a
    # kill every 30 s rarely found a worker; at 12 epochs the launch lasts a few minutes.
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--values", help="p values (default: the paper's five)")
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills")
    parser.add_argument("--max-failures", type=int, default=30, help="retries of a trial")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unkilled run")
    parser.add_argument("--workdir", help="keep the stores here (default: a temp folder)")
    args = parser.parse_args(argv)

    root = Path(args.workdir or tempfile.mkdtemp(prefix="sgstudy-chaos-"))
    data = Path(args.data) if args.data else root / "data"
    if not args.data:
        from sgstudy.data.synthetic import EARLIER_VAL_FRACTION, generate_synthetic_dataset

        # The split the README's measurements used (before the embedded default's val grew).
        generate_synthetic_dataset(
            data,
            SYNTH_IMAGES,
            SYNTH_IMAGE_SIZE,
            0,
            progress=False,
            val_fraction=EARLIER_VAL_FRACTION,
        )
    baseline = None
    if not args.no_baseline:
        (root / "unkilled").mkdir(parents=True, exist_ok=True)
        baseline = run_baseline(data, root / "unkilled", args.seeds, args.epochs, args.values)
    (root / "chaos").mkdir(parents=True, exist_ok=True)
    launch, result, wall = run_chaos(
        data, root / "chaos", args.seeds, args.epochs, args.values, args.kill_every,
        args.max_failures,
    )  # fmt: skip
    print(f"chaos study {STUDY}, seeds {args.seeds}, {args.epochs} epochs, stores in {root}")
    print(report(launch, result, wall, baseline))
    ok = (
        result.finished == result.trials == result.runs
        and not result.missing_steps
        and not result.duplicate_steps
        and not result.disagreements
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
