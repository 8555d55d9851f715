"""Studies end to end on the real stack: Ray, Optuna and MLflow stores on disk, the tiny preset.

Every study here runs ``sgstudy run`` (or ``run_study``) in a process of its own, from an
empty working directory, on a 40-image synthetic dataset, as a user would; the tests then
read back what MLflow, Optuna and Tune hold. Nothing is mocked; the one test that needs no
training gives the study's real searcher a stand-in trainable on a real Tuner instead.

Process hygiene: a driver runs in a session of its own, and whatever it leaves (its local
Ray, Ray's trial workers) is killed by process id when the test ends, so no test leaves Ray
running. A multi-node cluster lives in its own Ray temp dir with its own auth token, so it
neither joins nor disturbs any other Ray on the machine.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from search_spaces.studies import BASELINE, MODEL_KEYS, PAPER_P_VALUES, get_study
from sgstudy import __version__
from sgstudy.config import RunConfig
from sgstudy.metric_names import PRIMARY_METRIC, TOTAL_LOSS
from sgstudy.tracking import RESUMED_FROM_TAG, VARIANT_TAG
from sgstudy.tracking_layout import (
    DATASET_FINGERPRINT_PARAM,
    GIT_COMMIT_PARAM,
    NODE_ID_TAG,
    PARENT_TAG,
    PER_PREDICATE_ARTIFACT,
    RESOLVED_CONFIG_ARTIFACT,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
    STUDY_PARAM,
    TRIAL_ID_TAG,
    VERSION_PARAM,
)
from trainables.processes import group_tree, process_table

# Killing a driver's whole process tree reads /proc.
pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to clean up Ray processes"
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SGSTUDY = BIN / "sgstudy"
RAY = BIN / "ray"
# A small synthetic dataset (about 20 train, 4 val and 12 test images): a trial costs its
# start-up and about a second per epoch.
DATASET = (40, 64, 0)
STUDY = "align-motifs-p"
P_GRID = {BASELINE, *(f"p={p:g}" for p in PAPER_P_VALUES)}
STUDY_TIMEOUT_S = 480


# ---------------------------------------------------------------- processes
def kill_groups(pgids: set[int], timeout_s: float = 30.0) -> None:
    """SIGKILLs the groups and their descendants by pid, then waits until they are gone."""
    pids = group_tree(pgids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        table = process_table()
        alive = [pid for pid in pids if pid in table and table[pid][2] != "Z"]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {sorted(alive)} survived SIGKILL for {timeout_s:.0f} s")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # A driver without --address must start its own local Ray, whatever the caller's shell says.
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"  # the driver's lines reach its log file as they are printed
    env.update(extra)
    return env


@dataclass
class Spawned:
    """A process started in a session of its own (a study driver, `ray start`), output in files."""

    proc: subprocess.Popen
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        out = "\n".join(self.stdout().splitlines()[-lines:])
        err = "\n".join(self.stderr().splitlines()[-lines:])
        return f"--- stdout (tail)\n{out}\n--- stderr (tail)\n{err}"

    def stop(self) -> None:
        """Kills what is left of it (all of it, if it still runs) and reaps it."""
        kill_groups({self.proc.pid})
        self.proc.wait(timeout=30)


def start(command: list[str], cwd: Path, logs: Path, env: dict[str, str] | None = None) -> Spawned:
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    with open(out, "wb") as out_file, open(err, "wb") as err_file:
        proc = subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env=env or subprocess_env(),
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed as one, Ray included
        )
    return Spawned(proc, out, err)


def run_to_end(
    command: list[str],
    cwd: Path,
    logs: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = STUDY_TIMEOUT_S,
) -> Spawned:
    """Runs ``command`` to its end (failing the test past ``timeout_s``); leaves nothing behind."""
    spawned = start(command, cwd, logs, env)
    try:
        spawned.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command[:3])} ran past {timeout_s:.0f} s\n{spawned.tail()}")
    finally:
        spawned.stop()
    return spawned


def sgstudy_run(*args: object) -> list[str]:
    # No calibration run before the launch: its timing is tested once, in test_launch_plan.py.
    return [str(SGSTUDY), "run", "--no-calibration", *(str(a) for a in args)]


def wait_until(condition: Callable[[], bool], driver: Spawned, timeout_s: float, what: str) -> None:
    """Polls ``condition`` while ``driver`` runs; fails if it ends or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if driver.proc.poll() is not None:
            pytest.fail(
                f"the driver exited ({driver.proc.returncode}) before {what}\n{driver.tail()}"
            )
        try:
            if condition():
                return
        except Exception as exc:  # a store read racing the driver's writes: look again
            last_error = exc
        time.sleep(0.25)
    pytest.fail(f"no {what} within {timeout_s:.0f} s (last error: {last_error!r})\n{driver.tail()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- what the stores hold
@dataclass(frozen=True)
class TrackedStudy:
    """A study's runs in MLflow: the parent runs of its launches and the trials' child runs."""

    client: Any
    parents: list[Any]
    children: list[Any]

    def history(self, run: Any, key: str) -> list[tuple[int, float, int]]:
        """``(step, value, timestamp)`` of every logged point of ``key``, in step order."""
        points = self.client.get_metric_history(run.info.run_id, key)
        return sorted((m.step, m.value, m.timestamp) for m in points)

    def steps(self, run: Any, key: str) -> list[int]:
        return [step for step, _, _ in self.history(run, key)]

    def by_trial(self) -> dict[str, Any]:
        return {run.data.tags[TRIAL_ID_TAG]: run for run in self.children}


def read_study(workdir: Path, study: str = STUDY, client: Any = None) -> TrackedStudy:
    """The runs of ``study`` in the MLflow store a driver wrote in ``workdir``."""
    from mlflow.tracking import MlflowClient

    db = workdir / "mlflow.db"
    assert db.is_file(), f"no MLflow store at {db}"
    client = client or MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"no MLflow experiment {study!r} in {db}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_STUDY]
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL]
    assert len(parents) + len(children) == len(runs), "a run that is neither parent nor trial"
    return TrackedStudy(client, parents, children)


def optuna_trials(workdir: Path) -> list[Any]:
    """The trials of the one Optuna study a launch keeps in ``workdir/optuna.db``."""
    import optuna

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1, f"one Optuna study per launch, found {names}"
    return optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False)


def assert_one_finished_parent(tracked: TrackedStudy) -> Any:
    assert len(tracked.parents) == 1, [p.info.run_name for p in tracked.parents]
    parent = tracked.parents[0]
    assert parent.info.status == "FINISHED"
    for child in tracked.children:
        assert child.data.tags[PARENT_TAG] == parent.info.run_id
    return parent


def assert_finished_launch(tracked: TrackedStudy, trials: int) -> Any:
    """One FINISHED parent holding ``trials`` FINISHED child runs, one per Tune trial."""
    parent = assert_one_finished_parent(tracked)
    assert len(tracked.children) == trials
    assert all(run.info.status == "FINISHED" for run in tracked.children)
    assert_one_run_per_trial(tracked)
    return parent


def assert_one_run_per_trial(tracked: TrackedStudy) -> None:
    trial_ids = Counter(run.data.tags.get(TRIAL_ID_TAG) for run in tracked.children)
    assert None not in trial_ids
    assert all(count == 1 for count in trial_ids.values()), trial_ids


def assert_every_epoch_once(tracked: TrackedStudy, epochs: int, runs: list[Any] | None = None):
    """mR@50 and the loss hold one point per epoch, at steps 1..epochs, in every child run."""
    for run in tracked.children if runs is None else runs:
        for key in (PRIMARY_METRIC, TOTAL_LOSS):
            assert tracked.steps(run, key) == list(range(1, epochs + 1)), (
                run.info.run_name,
                key,
            )


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_root(synthetic_root_factory) -> Path:
    return synthetic_root_factory(*DATASET)


@pytest.fixture(scope="module")
def p_grid(tmp_path_factory, data_root) -> tuple[Path, TrackedStudy]:
    """One finished launch of the p-grid, seed 0, 2 epochs, shared by the tests that read it."""
    workdir = tmp_path_factory.mktemp("p_grid")
    driver = run_to_end(
        sgstudy_run(STUDY, "--data", data_root, "--preset", "tiny", "--epochs", 2),
        cwd=workdir,
        logs=tmp_path_factory.mktemp("p_grid_logs"),
    )
    assert driver.proc.returncode == 0, driver.tail()
    return workdir, read_study(workdir)


@pytest.fixture
def restore_environ() -> Iterator[None]:
    """``ray.init`` here edits ``os.environ`` (the auth mode); later tests must not see it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# ---------------------------------------------------------------- the grid
def test_p_grid_runs_every_variant_once_under_one_parent(p_grid):
    """The p-grid with one seed gives one FINISHED parent run and exactly 6 FINISHED child runs
    under it: baseline (no alignment) and p = 0.05, 0.1, 0.2, 0.4, 0.6, each exactly once, and
    the Optuna study behind the launch asked each grid point exactly once."""
    workdir, tracked = p_grid
    parent = assert_finished_launch(tracked, trials=6)
    assert parent.data.params["num_trials"] == "6"

    variants = Counter(run.data.tags[VARIANT_TAG] for run in tracked.children)
    assert variants == Counter(P_GRID)
    # The params say the same thing as the tags: what actually trained.
    by_variant = {run.data.tags[VARIANT_TAG]: run.data.params for run in tracked.children}
    assert by_variant[BASELINE]["align"] == "False"
    for p in PAPER_P_VALUES:
        params = by_variant[f"p={p:g}"]
        assert params["align"] == "True"
        assert float(params["mask_ratio"]) == p and float(params["align_weight"]) == 10.0
    assert {params["seed"] for params in by_variant.values()} == {"0"}

    trials = optuna_trials(workdir)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert Counter((t.params["variant"], t.params["seed"]) for t in trials) == Counter(
        (variant, 0) for variant in P_GRID
    )


def test_child_runs_hold_every_epoch_the_full_config_and_provenance(p_grid, data_root):
    """Each child run holds mR@50 and the loss at steps 1 and 2 (one point per epoch), the full
    resolved run config as params plus git commit, dataset fingerprint and sgstudy version,
    the per-predicate recall and config artifacts, and the Ray node it ran on."""
    _, tracked = p_grid
    spec = get_study(STUDY)
    expected_commit = git_head()
    fingerprint = re.search(r"fingerprint ([0-9a-f]+)", dataset_summary(data_root)).group(1)
    for run in tracked.children:
        variant = run.data.tags[VARIANT_TAG]
        assert_every_epoch_once(tracked, epochs=2, runs=[run])
        # The config the trial resolved from its grid point, with nothing left out.
        flat = {**spec.grid[variant], **MODEL_KEYS, "data_root": str(data_root)}
        flat.update(preset="tiny", epochs=2, seed=0)
        resolved = RunConfig.from_flat(flat).to_params()
        provenance = {
            GIT_COMMIT_PARAM: expected_commit,
            DATASET_FINGERPRINT_PARAM: fingerprint,
            VERSION_PARAM: __version__,
            STUDY_PARAM: STUDY,
        }
        expected = {key: str(value) for key, value in {**resolved, **provenance}.items()}
        # Included, not equal: the trial also logs what the model is made of.
        assert {key: run.data.params.get(key) for key in expected} == expected, variant

        artifacts = {a.path for a in tracked.client.list_artifacts(run.info.run_id)}
        assert {PER_PREDICATE_ARTIFACT, RESOLVED_CONFIG_ARTIFACT} <= artifacts
        per_predicate = load_artifact(tracked.client, run, PER_PREDICATE_ARTIFACT)
        predicates = per_predicate["predicates"]
        assert len(predicates) == 19  # the synthetic dataset's predicate classes
        for recalls in per_predicate["recall"].values():
            assert len(recalls) == len(predicates)
            assert all(0.0 <= r <= 1.0 for r in recalls)
        # The same config as JSON, with the trial's grid variant.
        config = load_artifact(tracked.client, run, RESOLVED_CONFIG_ARTIFACT)
        as_json = json.dumps({**resolved, **provenance, "variant": variant}, default=str)
        assert {key: config.get(key) for key in json.loads(as_json)} == json.loads(as_json)

        assert re.fullmatch(r"[0-9a-f]{56}", run.data.tags[NODE_ID_TAG]), run.data.tags
    # A local Ray is one node: every trial names the same one.
    assert len({run.data.tags[NODE_ID_TAG] for run in tracked.children}) == 1


def git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def dataset_summary(root: Path) -> str:
    """What ``sgstudy data check`` prints, fingerprint included."""
    from sgstudy.data.check import check_dataset

    return str(check_dataset(root))


def load_artifact(client: Any, run: Any, name: str) -> Any:
    with tempfile.TemporaryDirectory() as out:
        return json.loads(Path(client.download_artifacts(run.info.run_id, name, out)).read_text())


@pytest.mark.slow
def test_four_seeds_give_24_runs_each_variant_and_seed_once(tmp_path, data_root):
    """The p-grid over seeds 0,1,2,3 (1 epoch) runs exactly 24 trials under one parent:
    every (variant, seed) once, in MLflow and in Optuna alike."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    driver = run_to_end(
        sgstudy_run(STUDY, "--data", data_root, "--epochs", 1, "--seeds", "0,1,2,3"),
        cwd=workdir,
        logs=tmp_path / "logs",
        timeout_s=900,
    )
    assert driver.proc.returncode == 0, driver.tail()
    tracked = read_study(workdir)
    assert_finished_launch(tracked, trials=24)
    cells = Counter(
        (run.data.tags[VARIANT_TAG], run.data.params["seed"]) for run in tracked.children
    )
    assert cells == Counter(itertools.product(P_GRID, ("0", "1", "2", "3")))
    trials = optuna_trials(workdir)
    assert len(trials) == 24 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({(t.params["variant"], t.params["seed"]) for t in trials}) == 24


def test_grid_searcher_gives_a_real_tuner_24_distinct_configs(tmp_path, data_root, restore_environ):
    """The study's own OptunaSearch + GridSampler (``build_searcher``, Optuna in SQLite), driven
    by a real Tuner on a real local Ray, hands out the 6 variants x 4 seeds exactly once each,
    each config carrying its variant's keys. A stand-in trainable keeps this cheap: the 24 real
    trainings are the slow test above."""
    import ray
    from ray import tune

    from trainables.plan import StudyOptions, plan_study
    from trainables.study import build_searcher

    plan = plan_study(
        StudyOptions(
            study=STUDY,
            data_root=str(data_root),
            seeds=(0, 1, 2, 3),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage_path=str(tmp_path / "ray_results"),
        )
    )
    assert plan.num_samples == 24

    def stand_in(config: dict[str, Any]) -> None:
        # Defined here so that Ray ships it by value (tests/ is not importable on workers).
        tune.report({PRIMARY_METRIC: float(config["mask_ratio"]), "epoch": 1})

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tune.Tuner(
            stand_in,
            param_space=plan.param_space,
            tune_config=tune.TuneConfig(
                search_alg=build_searcher(plan),
                num_samples=plan.num_samples,
                reuse_actors=True,  # one worker process per CPU, not one per trial
            ),
            run_config=tune.RunConfig(
                name="grid", storage_path=str(tmp_path / "ray_results"), verbose=0
            ),
        ).fit()
    finally:
        ray.shutdown()

    assert results.num_errors == 0 and len(results) == 24
    configs = [result.config for result in results]
    assert Counter((c["variant"], c["seed"]) for c in configs) == Counter(
        itertools.product(P_GRID, (0, 1, 2, 3))
    )
    grid = get_study(STUDY).grid
    for config in configs:
        assert {key: config[key] for key in grid[config["variant"]]} == dict(
            grid[config["variant"]]
        )
        assert config["data_root"] == str(data_root) and config["preset"] == "tiny"
    trials = optuna_trials(tmp_path)
    assert len(trials) == 24 and all(t.state.name == "COMPLETE" for t in trials)


# ---------------------------------------------------------------- resume and retry
@dataclass(frozen=True)
class RunSnapshot:
    run_id: str
    status: str
    variant: str
    loss: list[tuple[int, float, int]]
    primary: list[tuple[int, float, int]]


def snapshot(tracked: TrackedStudy) -> dict[str, RunSnapshot]:
    """Each trial's run as it stands, keyed by trial id."""
    return {
        trial_id: RunSnapshot(
            run.info.run_id,
            run.info.status,
            run.data.tags.get(VARIANT_TAG, ""),
            tracked.history(run, TOTAL_LOSS),
            tracked.history(run, PRIMARY_METRIC),
        )
        for trial_id, run in tracked.by_trial().items()
    }


def kill_point(workdir: Path, driver: Spawned) -> Callable[[], bool]:
    """True once a trial has finished and the next one has opened its run but logged no epoch.

    That is the moment to kill the driver: finished work to keep, a started trial to resume,
    and a grid point not yet asked for. Killing before the next trial's first epoch keeps the
    test clear of the instant between an epoch reaching MLflow and Tune saving its state.
    """
    clients: list[Any] = []

    def reached() -> bool:
        # The store exists once the driver printed its parent run (reading it earlier could
        # race the driver creating the tables).
        if "parent run" not in driver.stdout():
            return False
        tracked = read_study(workdir, client=clients[0] if clients else None)
        clients[:] = [tracked.client]
        finished = [r for r in tracked.children if r.info.status == "FINISHED"]
        running = [r for r in tracked.children if r.info.status == "RUNNING"]
        return bool(finished) and any(not tracked.steps(r, TOTAL_LOSS) for r in running)

    return reached


@pytest.mark.parametrize(
    "sig",
    [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGKILL", "SIGINT"],
)
def test_killed_driver_resumes_without_running_a_trial_twice(tmp_path, data_root, sig):
    """A driver killed after one trial finished and while the next one was starting, then run
    again with --resume, finishes the launch: every trial FINISHED under the same single parent
    run, one MLflow run per trial (the started trial continues its run), every epoch logged
    once, the trials finished before the kill left untouched, and the grid point nobody had
    asked for yet asked exactly once."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    # Three trials one at a time, so the kill falls between two of them on any machine.
    args = (STUDY, "--data", data_root, "--epochs", 2, "--values", "0.1,0.2", "--max-concurrent", 1)
    first = start(sgstudy_run(*args), workdir, tmp_path / "first")
    try:
        wait_until(
            kill_point(workdir, first), first, 300, "finished trial followed by a started one"
        )
        if sig == signal.SIGKILL:
            # The whole tree at once, Ray's trial worker included: nothing may log after this.
            kill_groups({first.proc.pid})
        else:
            os.killpg(first.proc.pid, signal.SIGINT)  # Ctrl-C in the driver's terminal
            first.proc.wait(timeout=120)
            assert first.proc.returncode == 130, first.tail()
    finally:
        first.stop()
    killed = read_study(workdir)
    before = snapshot(killed)
    done_before = {t for t, run in before.items() if run.status == "FINISHED"}
    started_before = {t for t, run in before.items() if run.status != "FINISHED"}
    assert done_before and started_before, before
    if sig == signal.SIGKILL:
        # The kill landed where it was aimed: the started trial had not logged an epoch.
        assert all(not before[t].loss for t in started_before), before
    else:
        # An interrupted driver says so in its parent run and tells how to go on.
        assert killed.parents[0].info.status == "KILLED"
        assert "--resume" in first.stdout()

    resumed = run_to_end(sgstudy_run(*args, "--resume"), workdir, tmp_path / "resumed")
    assert resumed.proc.returncode == 0, resumed.tail()

    tracked = read_study(workdir)
    assert_finished_launch(tracked, trials=3)
    assert Counter(run.data.tags[VARIANT_TAG] for run in tracked.children) == Counter(
        [BASELINE, "p=0.1", "p=0.2"]
    )
    assert_every_epoch_once(tracked, epochs=2)
    after = snapshot(tracked)
    for trial_id in done_before:
        # Not run again: not one new metric point (a re-run would log its epochs again).
        assert after[trial_id].run_id == before[trial_id].run_id
        assert after[trial_id].loss == before[trial_id].loss
        assert after[trial_id].primary == before[trial_id].primary
    for trial_id in started_before:
        # Continued, not reopened: the same run, still for the same grid point.
        assert after[trial_id].run_id == before[trial_id].run_id
        assert after[trial_id].variant == before[trial_id].variant
    trials = optuna_trials(workdir)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert sorted(t.params["variant"] for t in trials) == sorted([BASELINE, "p=0.1", "p=0.2"])


def test_resumed_searcher_takes_a_finished_trials_result_again(tmp_path, data_root):
    """The state a killed driver leaves when it dies between a trial's completion (told to
    Optuna's database at once) and Tune's next save of its searcher: the resumed searcher sees
    that trial report again. It must take it without error (Optuna refuses to update a finished
    trial, which used to end the resumed launch) and leave Optuna's record as it was."""
    from trainables.plan import StudyOptions, plan_study
    from trainables.study import build_searcher

    plan = plan_study(
        StudyOptions(
            study=STUDY,
            data_root=str(data_root),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage_path=str(tmp_path / "ray_results"),
        )
    )
    searcher = build_searcher(plan)
    assert searcher.suggest("trial-a")["variant"] in P_GRID
    # Tune's last save of the searcher (a pickle), taken while trial-a still ran.
    resumed = pickle.loads(pickle.dumps(searcher))
    searcher.on_trial_complete("trial-a", {PRIMARY_METRIC: 0.5, "training_iteration": 2})

    # The resumed trial finds its last checkpoint complete and hands Tune its result again.
    resumed.on_trial_result("trial-a", {PRIMARY_METRIC: 0.5, "training_iteration": 3})
    resumed.on_trial_complete("trial-a", {PRIMARY_METRIC: 0.5, "training_iteration": 3})
    trials = optuna_trials(tmp_path)
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.5)]


RETRY_SCRIPT = """
import sys
from trainables.plan import StudyOptions
from trainables.study import run_study

outcome = run_study(StudyOptions(
    study=sys.argv[1], data_root=sys.argv[2], epochs=2, values=(0.1,), fail_once_at_epoch=1,
))
sys.exit(0 if outcome.complete else 1)
"""


def test_a_trial_that_fails_once_is_retried_from_its_checkpoint(tmp_path, data_root):
    """Every trial raises once right after its epoch-1 checkpoint; Tune retries it from that
    checkpoint, and the launch completes with one FINISHED MLflow run per trial holding each
    of the 2 epochs once, tagged as resumed from epoch 1."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    driver = run_to_end(
        [sys.executable, "-c", RETRY_SCRIPT, STUDY, data_root], workdir, tmp_path / "logs"
    )
    assert driver.proc.returncode == 0, driver.tail()

    tracked = read_study(workdir)
    assert_finished_launch(tracked, trials=2)
    assert_every_epoch_once(tracked, epochs=2)
    for run in tracked.children:
        # Set only by an attempt that started from a checkpoint, never by a fresh one.
        assert run.data.tags.get(RESUMED_FROM_TAG) == "1", run.data.tags
    # Tune's own record of each trial: it failed exactly once, with the injected error.
    errors = sorted((workdir / "ray_results" / STUDY).glob("*/error.txt"))
    assert len(errors) == 2
    for error in errors:
        text = error.read_text()
        assert "InjectedFailure" in text and "Failure # 1 " in text and "Failure # 2 " not in text


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("no-such-study",), "unknown study 'no-such-study'"),
        ((STUDY, "--values", "1.5"), "mask_ratio (p) grid value 1.5 is outside [0, 1)"),
        (("align-motifs-lambda", "--values=-1"), "align_weight (λ) grid value -1.0"),
        (
            (STUDY, "--tracking-uri", "http://127.0.0.1:{port}"),
            "tracking server http://127.0.0.1:{port} is unreachable",
        ),
        ((STUDY, "--data", "{missing}"), "dataset folder {missing} does not exist"),
        ((STUDY, "--resume"), "nothing to resume"),
    ],
    ids=[
        "unknown-study",
        "p-out-of-range",
        "negative-lambda",
        "unreachable-mlflow",
        "missing-dataset",
        "resume-without-launch",
    ],
)
def test_bad_input_is_one_error_line_exit_2_and_writes_nothing(tmp_path, data_root, args, needle):
    """A launch that cannot work stops before Ray or MLflow start: exit status 2, exactly one
    ``error: ...`` line on stderr naming the problem, and the working directory (where the
    MLflow and Optuna stores and ray_results would go) still empty."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    fill = {"port": free_port(), "missing": tmp_path / "no-such-dataset"}
    args = [str(a).format(**fill) for a in args]
    if "--data" not in args:
        args += ["--data", str(data_root)]
    driver = run_to_end(sgstudy_run(*args), workdir, tmp_path / "logs", timeout_s=120)
    assert driver.proc.returncode == 2, driver.tail()
    lines = driver.stderr().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert needle.format(**fill) in lines[0]
    assert list(workdir.iterdir()) == []


# ---------------------------------------------------------------- two nodes
@pytest.fixture
def two_node_cluster(tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """A head and a worker node of 1 CPU each on this machine; yields (address, env).

    The cluster keeps its state in a temp dir of its own (short: Ray's socket paths are
    limited) and authenticates with a fresh token passed in the environment, so it touches
    neither ~/.ray nor the default /tmp/ray where other Ray instances live.
    """
    temp_dir = tempfile.mkdtemp(prefix="sgstudy-ray-", dir="/tmp")
    # Ray >= 2.60 turns on token auth for a new head; every process of this cluster gets it.
    env = subprocess_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    address = f"127.0.0.1:{free_port()}"
    common = ["--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1"]
    common += [f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    nodes = [
        [RAY, "start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"],
        [RAY, "start", f"--address={address}"],
    ]
    started: list[Spawned] = []
    try:
        for i, command in enumerate(nodes):
            node = start(command + common, tmp_path, tmp_path / f"node{i}", env)
            started.append(node)
            assert node.proc.wait(timeout=120) == 0, node.tail()
        yield address, env
    finally:
        # `ray start` exits at once; its daemons stay in its process group.
        for node in started:
            node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_study_on_two_nodes_runs_trials_on_both(tmp_path, data_root, two_node_cluster):
    """With --address, the driver joins a two-node cluster instead of starting a Ray: its two
    trials (one CPU each, one CPU per node) run at once, one per node, and each child run
    records the cluster node it ran on."""
    address, env = two_node_cluster
    workdir = tmp_path / "work"
    workdir.mkdir()
    driver = run_to_end(
        sgstudy_run(
            STUDY, "--data", data_root, "--epochs", 1, "--values", "0.1", "--address", address
        ),
        workdir,
        tmp_path / "driver",
        env,
    )
    assert driver.proc.returncode == 0, driver.tail()
    tracked = read_study(workdir)
    assert_finished_launch(tracked, trials=2)
    node_ids = {run.data.tags[NODE_ID_TAG] for run in tracked.children}
    assert len(node_ids) == 2
    assert node_ids == cluster_node_ids(address, env, tmp_path)


def cluster_node_ids(address: str, env: dict[str, str], tmp_path: Path) -> set[str]:
    """The ids of the cluster's live nodes, as Ray itself lists them."""
    script = (
        "import json, sys, ray\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))\n"
    )
    probe = run_to_end(
        [sys.executable, "-c", script, address], tmp_path, tmp_path / "probe", env, timeout_s=120
    )
    assert probe.proc.returncode == 0, probe.tail()
    return set(json.loads(probe.stdout().strip().splitlines()[-1]))
