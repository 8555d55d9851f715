"""The resource side of ``sgstudy run``, on the real stack (Ray, Ray Train, Optuna, MLflow).

* How a launch is sized: ``trial_resources``, ``default_max_concurrent`` /
  ``resolve_max_concurrent`` and the ``check_resources`` refusals, with exact values.
* Fractional GPUs: two trials of half a GPU each packed on the one GPU of a local Ray. This
  machine has no GPU, so the Ray started here declares a fake one; Ray still hands it out
  (``ray.get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``) while torch finds no CUDA and trains on CPU.
* Data-parallel trials: each trial trains through a Ray Train ``TorchTrainer`` with two gloo
  DDP workers.
* ``sgstudy ui``: the MLflow UI on a store, bound to 127.0.0.1, and its refusal without one.

Both studies run in this process on one local Ray (2 CPUs, 1 fake GPU) in a temp dir of its
own, shut down when the module ends; the UI runs in a session of its
own and its whole process group is killed by id. Nothing here touches another Ray on the
machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from search_spaces.studies import BASELINE
from sgstudy.errors import ConfigError, UserError
from sgstudy.metric_names import PRIMARY_METRIC, TOTAL_LOSS
from sgstudy.tracking import GPU_IDS_TAG, VARIANT_TAG, WORLD_SIZE_TAG
from sgstudy.tracking_layout import ROLE_STUDY, ROLE_TAG, ROLE_TRIAL, TRIAL_ID_TAG
from trainables.plan import (
    DRIVER_MEMORY_BYTES,
    StudyOptions,
    check_resources,
    default_max_concurrent,
    resolve_max_concurrent,
    trial_resources,
)
from trainables.processes import group_members

SGSTUDY = Path(sys.executable).parent / "sgstudy"
STUDY = "align-motifs-p"
# The same small dataset as tests/test_study.py (generated once per session): about 20 train
# and 4 val images, a trial costs its start-up and about a second per epoch.
DATASET = (40, 64, 0)
# `--values 0.1` shrinks the p-grid to the baseline and p=0.1: two trials.
VARIANTS = {BASELINE, "p=0.1"}
EPOCHS = 2
UI_TIMEOUT_S = 90  # the MLflow UI takes ~10 s to answer on an idle 2-core machine, ~30 s loaded


def options(**overrides: Any) -> StudyOptions:
    return StudyOptions(study=STUDY, data_root="unused", **overrides)


# ---------------------------------------------------------------- trial_resources
def test_trial_resources_of_a_plain_trial_are_its_cpus_and_gpus():
    """A single-process trial reserves exactly its --cpus-per-trial and --gpus-per-trial."""
    assert trial_resources(options()) == {"CPU": 1.0, "GPU": 0.0}
    assert trial_resources(options(cpus_per_trial=2, gpus_per_trial=0.5)) == {
        "CPU": 2,
        "GPU": 0.5,
    }


def test_trial_resources_of_a_data_parallel_trial_hold_no_cpu_and_tune_accepts_them():
    """A data-parallel trial's own process only waits on its TorchTrainer: it reserves no CPU
    and no GPU (its workers do), just a token of memory, because Tune refuses an all-zero
    request (``{"CPU": 0}`` used to fail every --workers-per-trial launch in ``with_resources``)."""
    from ray import tune
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    resources = trial_resources(options(workers_per_trial=2, cpus_per_trial=4, gpus_per_trial=1))
    assert resources == {"CPU": 0.0, "memory": DRIVER_MEMORY_BYTES}
    tune.with_resources(lambda config: None, resources)  # raised ValueError before the fix
    # One bundle, no CPU or GPU in it: a 2-CPU node can still start 2 workers of 1 CPU.
    assert resource_dict_to_pg_factory(resources).bundles == [{"memory": float(1 << 20)}]


# ---------------------------------------------------------------- max concurrency
@pytest.mark.parametrize(
    ("overrides", "cluster", "expected"),
    [
        # 8 GPUs hold 16 half-GPU trials, but 12 CPUs only 12 of 1 CPU: CPUs limit.
        ({"gpus_per_trial": 0.5}, {"CPU": 12, "GPU": 8}, 12),
        # With CPUs to spare, the GPUs limit: 16.
        ({"gpus_per_trial": 0.5}, {"CPU": 64, "GPU": 8}, 16),
        # Whole GPUs, 4 CPUs each: min(8 / 1, 64 / 4) = 8.
        ({"gpus_per_trial": 1, "cpus_per_trial": 4}, {"CPU": 64, "GPU": 8}, 8),
        # 2 DDP workers of 1 GPU and 4 CPUs: a trial takes 2 GPUs and 8 CPUs -> 4.
        (
            {"gpus_per_trial": 1, "cpus_per_trial": 4, "workers_per_trial": 2},
            {"CPU": 64, "GPU": 8},
            4,
        ),
        # ... and 2 workers of 1 CPU on a 2-CPU machine: one trial at a time.
        ({"workers_per_trial": 2}, {"CPU": 2}, 1),
        # No GPUs asked for: by CPU only, whatever GPUs the cluster has.
        ({"cpus_per_trial": 2}, {"CPU": 7, "GPU": 8}, 3),
        ({}, {"CPU": 16}, 16),
        # 6 / (3 x 0.2) is 9.999999999999998 in floats: still 10 trials.
        ({"cpus_per_trial": 0.2, "workers_per_trial": 3}, {"CPU": 6}, 10),
        # Nothing fits: 0 (no GPU in the cluster; fewer CPUs than one trial needs).
        ({"gpus_per_trial": 0.5}, {"CPU": 16}, 0),
        ({"cpus_per_trial": 4}, {"CPU": 3, "GPU": 1}, 0),
        ({}, {}, 0),
    ],
    ids=[
        "half-gpus-cpu-bound",
        "half-gpus-gpu-bound",
        "whole-gpus",
        "ddp-gpus",
        "ddp-cpus",
        "no-gpus-by-cpu",
        "defaults",
        "float-rounding",
        "no-gpu-in-cluster",
        "too-few-cpus",
        "empty-cluster",
    ],
)
def test_default_max_concurrent_is_what_the_cluster_holds(overrides, cluster, expected):
    """The default concurrency is how many whole trials (workers x per-worker resources) fit
    the cluster at once, by GPUs when trials use them and by CPUs always; 0 when none fits."""
    assert default_max_concurrent(options(**overrides), cluster) == expected
    if expected:
        assert resolve_max_concurrent(options(**overrides), cluster) == expected


def test_given_max_concurrent_wins_over_the_cluster():
    """--max-concurrent is used as given: below what fits, above it, and on a joined cluster
    even when nothing fits yet; a local Ray that can never hold a trial is refused anyway."""
    cluster = {"CPU": 16, "GPU": 8}
    assert resolve_max_concurrent(options(max_concurrent=3), cluster) == 3
    assert resolve_max_concurrent(options(max_concurrent=40), cluster) == 40
    joined = options(max_concurrent=2, gpus_per_trial=1, address="auto")
    assert resolve_max_concurrent(joined, {"CPU": 4}) == 2
    with pytest.raises(UserError, match="this machine's Ray has 4 CPUs and 0 GPUs"):
        resolve_max_concurrent(options(max_concurrent=2, gpus_per_trial=1), {"CPU": 4})


def test_a_trial_that_fits_no_local_ray_is_one_error_naming_both_sides():
    """On a Ray this launch started (no --address), a trial bigger than the machine is a
    ``UserError`` saying what a trial needs (workers x per-worker) and what the machine has."""
    with pytest.raises(UserError) as raised:
        resolve_max_concurrent(options(gpus_per_trial=1), {"CPU": 4})
    assert str(raised.value) == (
        "a trial needs 1 CPUs and 1 GPUs, but this machine's Ray has 4 CPUs and 0 GPUs"
    )
    with pytest.raises(UserError) as raised:
        resolve_max_concurrent(options(workers_per_trial=4, cpus_per_trial=2), {"CPU": 6})
    assert str(raised.value) == (
        "a trial needs 8 CPUs and 0 GPUs, but this machine's Ray has 6 CPUs and 0 GPUs"
    )


def test_a_trial_that_fits_no_joined_cluster_runs_one_at_a_time(capsys):
    """On a joined cluster (--address) an autoscaler may still add nodes: the launch goes on
    one trial at a time and says why."""
    assert resolve_max_concurrent(options(gpus_per_trial=1, address="auto"), {"CPU": 4}) == 1
    assert capsys.readouterr().out == (
        "a trial needs 1 CPUs and 1 GPUs; the cluster has 4 CPUs and 0 GPUs now: "
        "running one at a time until it grows\n"
    )


# ---------------------------------------------------------------- check_resources
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cpus_per_trial": 0}, "cpus_per_trial must be a number > 0, got 0"),
        ({"cpus_per_trial": -1.0}, "cpus_per_trial must be a number > 0, got -1.0"),
        ({"cpus_per_trial": math.nan}, "cpus_per_trial must be a number > 0, got nan"),
        ({"cpus_per_trial": math.inf}, "cpus_per_trial must be a number > 0, got inf"),
        ({"gpus_per_trial": -0.5}, "gpus_per_trial must be a number >= 0, got -0.5"),
        ({"gpus_per_trial": math.nan}, "gpus_per_trial must be a number >= 0, got nan"),
        # int(inf) raised OverflowError here: a traceback instead of one error line.
        ({"gpus_per_trial": math.inf}, "gpus_per_trial must be a number >= 0, got inf"),
        ({"gpus_per_trial": 1.5}, "gpus_per_trial 1.5: more than one GPU must be a whole number"),
        (
            {"gpus_per_trial": 0.5, "workers_per_trial": 2},
            "gpus_per_trial 0.5 with workers_per_trial 2: data-parallel workers need a whole "
            "GPU each",
        ),
        ({"workers_per_trial": 0}, "workers_per_trial must be >= 1, got 0"),
        ({"workers_per_trial": -2}, "workers_per_trial must be >= 1, got -2"),
        ({"max_concurrent": 0}, "max_concurrent must be >= 1, got 0"),
        ({"max_failures": -1}, "max_failures must be >= 0, got -1"),
    ],
    ids=[
        "cpus-0",
        "cpus-negative",
        "cpus-nan",
        "cpus-inf",
        "gpus-negative",
        "gpus-nan",
        "gpus-inf",
        "gpus-1.5",
        "half-gpu-ddp",
        "workers-0",
        "workers-negative",
        "max-concurrent-0",
        "max-failures-negative",
    ],
)
def test_check_resources_refuses_impossible_requests(overrides, message):
    """Each impossible resource request is a ``ConfigError`` (one ``error:`` line from the CLI)
    naming the flag and the value."""
    with pytest.raises(ConfigError) as raised:
        check_resources(options(**overrides))
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"gpus_per_trial": 0.25},
        {"gpus_per_trial": 1.0},
        {"gpus_per_trial": 2},
        {"cpus_per_trial": 0.5, "workers_per_trial": 4, "max_concurrent": 1, "max_failures": 0},
    ],
    ids=["defaults", "quarter-gpu", "one-gpu", "two-gpus", "small-values"],
)
def test_check_resources_accepts_fractions_and_whole_gpus(overrides):
    """Fractions of one GPU pack trials; whole numbers of GPUs are fine; so are the edges."""
    check_resources(options(**overrides))


# ---------------------------------------------------------------- studies on a local Ray
@pytest.fixture(scope="module")
def data_root(synthetic_root_factory) -> Path:
    return synthetic_root_factory(*DATASET)


@pytest.fixture(scope="module")
def fake_gpu_ray() -> Iterator[dict[str, float]]:
    """A local Ray of 2 CPUs and 1 (fake) GPU in this process; yields its resources.

    Its state lives in a short temp dir of its own (Ray's socket paths are limited), not in
    /tmp/ray where other Ray instances live. ``ray.init`` edits ``os.environ`` (the auth
    mode): restored afterwards, so later tests do not see it.
    """
    import ray

    saved = dict(os.environ)
    temp_dir = tempfile.mkdtemp(prefix="sgstudy-ray-", dir="/tmp")
    try:
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=1,
            include_dashboard=False,
            _temp_dir=temp_dir,
        )
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class Launched:
    """A finished launch: what ``run_study`` returned and printed, and the MLflow store."""

    outcome: Any
    stdout: str
    client: Any
    parent: Any
    children: list[Any]

    def steps(self, run: Any, key: str) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(run.info.run_id, key))


def launch(
    workdir: Path, data_root: Path, capsys, epochs: int = EPOCHS, **resources: Any
) -> Launched:
    """Runs the 2-trial p-grid (baseline, p=0.1) in this process on the Ray already up."""
    from mlflow.tracking import MlflowClient

    from trainables.study import run_study

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    outcome = run_study(
        StudyOptions(
            study=STUDY,
            data_root=str(data_root),
            epochs=epochs,
            values=(0.1,),
            tracking_uri=uri,
            storage_path=str(workdir / "ray_results"),
            verbose=0,
            **resources,
        )
    )
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([outcome.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_STUDY]
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) == ROLE_TRIAL]
    assert len(parents) == 1 and len(parents) + len(children) == len(runs)
    return Launched(outcome, capsys.readouterr().out, client, parents[0], children)


def assert_two_finished_trials(launched: Launched, epochs: int = EPOCHS) -> None:
    """Both trials FINISHED in Tune's eyes and MLflow's, one child run each, every epoch once."""
    # On failure, what Tune and the trials printed (their errors) is in the message.
    assert launched.outcome.complete, launched.stdout[-6000:]
    assert {row.variant for row in launched.outcome.rows} == VARIANTS
    assert all(not row.failed and row.epochs_done == epochs for row in launched.outcome.rows)
    assert launched.parent.info.status == "FINISHED"
    assert len(launched.children) == 2
    assert {run.data.tags[VARIANT_TAG] for run in launched.children} == VARIANTS
    assert len({run.data.tags[TRIAL_ID_TAG] for run in launched.children}) == 2
    for run in launched.children:
        assert run.info.status == "FINISHED", run.info.run_name
        for key in (PRIMARY_METRIC, TOTAL_LOSS):
            assert launched.steps(run, key) == list(range(1, epochs + 1)), (run.info.run_name, key)
        # The val metrics of the last epoch, as the table shows them.
        metrics = run.data.metrics
        assert {"mR_50", "mR_100", "R_50", "R_100"} <= set(metrics), sorted(metrics)
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("mR_50", "mR_100", "R_50", "R_100"))


def test_half_gpu_trials_share_the_one_gpu_at_once(tmp_path, data_root, fake_gpu_ray, capsys):
    """With --gpus-per-trial 0.5 --cpus-per-trial 1 on a Ray of 2 CPUs and 1 GPU, the default
    concurrency is 2 and both trials run on GPU 0 at the same time: each MLflow child run names
    GPU "0", their runs overlap in time, and both FINISHED. The GPU is declared, not real:
    device "auto" finds no CUDA behind Ray's CUDA_VISIBLE_DEVICES and trains on CPU."""
    assert fake_gpu_ray["GPU"] == 1.0 and fake_gpu_ray["CPU"] == 2.0
    # Long enough that the second trial's worker, which may start a second or two after the
    # first one's, finds the first still training: the overlap below is about packing.
    epochs = 3 * EPOCHS
    launched = launch(
        tmp_path, data_root, capsys, epochs=epochs, gpus_per_trial=0.5, cpus_per_trial=1
    )
    assert_two_finished_trials(launched, epochs)
    assert "2 trials, up to 2 at once" in launched.stdout
    assert launched.parent.data.params["gpus_per_trial"] == "0.5"

    for run in launched.children:
        # Ray handed each trial GPU 0: two halves of the same GPU.
        assert run.data.tags[GPU_IDS_TAG] == "0", run.data.tags
        assert run.data.tags[WORLD_SIZE_TAG] == "1"
        assert run.data.params["device"] == "auto"
    # Packed, not queued: each run started before the other ended.
    starts = [run.info.start_time for run in launched.children]
    ends = [run.info.end_time for run in launched.children]
    assert max(starts) < min(ends), (starts, ends)

    # Trained on CPU: the last checkpoint of each trial holds CPU tensors only (torch.load
    # without map_location restores tensors where they were saved).
    import torch

    trial_ids = {run.data.tags[TRIAL_ID_TAG] for run in launched.children}
    for trial_id in trial_ids:
        (trial_dir,) = (tmp_path / "ray_results" / STUDY).glob(f"*_{trial_id}_*")
        (checkpoint,) = trial_dir.glob("checkpoint_*/checkpoint.pt")
        state = torch.load(checkpoint, weights_only=False)
        assert state["epoch"] == epochs
        devices = {tensor.device.type for tensor in state["model"].values()}
        assert devices == {"cpu"}, (trial_id, devices)


def test_data_parallel_trials_train_on_two_ddp_workers(tmp_path, data_root, fake_gpu_ray, capsys):
    """With --workers-per-trial 2 --cpus-per-trial 1 on 2 CPUs, each trial is a Ray Train run
    of 2 gloo DDP workers, so one trial runs at a time; both FINISHED with one MLflow child run
    each holding every epoch once and the val metrics, logged by rank 0 from a process group
    of world size 2, and each trial's Train run kept its checkpoint next to the launch."""
    launched = launch(tmp_path, data_root, capsys, workers_per_trial=2, cpus_per_trial=1)
    assert_two_finished_trials(launched)
    # The trial's 2 workers take both CPUs.
    assert "2 trials, up to 1 at once" in launched.stdout
    assert launched.parent.data.params["workers_per_trial"] == "2"
    for run in launched.children:
        # torch.distributed's own count of the processes that trained this trial.
        assert run.data.tags[WORLD_SIZE_TAG] == "2", run.data.tags
        assert run.data.tags[GPU_IDS_TAG] == ""  # CPU workers hold no GPU
    by_start = sorted(launched.children, key=lambda run: run.info.start_time)
    assert by_start[0].info.end_time <= by_start[1].info.start_time

    # The TorchTrainer of each trial ran under the launch's data-parallel storage, named after
    # the trial, and kept its last checkpoint (the session of the last epoch).
    import torch

    train_runs = tmp_path / "ray_results" / f"{STUDY}-data-parallel"
    for run in launched.children:
        trial_id = run.data.tags[TRIAL_ID_TAG]
        (checkpoint,) = (train_runs / f"trial-{trial_id}").glob("checkpoint_*/checkpoint.pt")
        assert torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] == EPOCHS


# ---------------------------------------------------------------- sgstudy ui
def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            if len(address) == 8:  # IPv4, little-endian
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
            else:
                found.add(f"ipv6:{address}")
    return found


def kill_group(proc: subprocess.Popen) -> None:
    """Kills the process group ``proc`` leads (the UI's server and job runners are in it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_members(proc.pid), f"processes {group_members(proc.pid)} survived SIGKILL"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux /proc")
def test_ui_serves_the_store_on_localhost_only(tmp_path):
    """``sgstudy ui --port P --tracking-uri sqlite:///...`` on an existing store answers 200 at
    http://127.0.0.1:P/, serves that store's experiments, and listens on 127.0.0.1 only."""
    from sgstudy import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.get_or_create_experiment(tracking.make_client(uri), STUDY, uri)
    port = free_port()
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "wb") as out_file, open(err, "wb") as err_file:
        proc = subprocess.Popen(
            [str(SGSTUDY), "ui", "--port", str(port), "--tracking-uri", uri],
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out_file,
            stderr=err_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the server's children die with it
        )
    try:

        def logs() -> str:
            return f"--- stdout\n{out.read_text()}\n--- stderr\n{err.read_text()[-4000:]}"

        deadline = time.monotonic() + UI_TIMEOUT_S
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"sgstudy ui exited ({proc.returncode})\n{logs()}"
            try:
                status, _ = http_get(f"http://127.0.0.1:{port}/")
            except OSError:  # not listening yet
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"no 200 within {UI_TIMEOUT_S} s (last {status})\n{logs()}"

        assert listening_addresses(port) == {"127.0.0.1"}
        # It serves the store it was given: the experiment created above.
        status, body = http_get(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
            f"?experiment_name={STUDY}"
        )
        assert status == 200, body[:500]
        assert json.loads(body)["experiment"]["name"] == STUDY
        assert f"http://127.0.0.1:{port}" in out.read_text()
    finally:
        kill_group(proc)


@pytest.mark.parametrize("given", [False, True], ids=["default-store", "tracking-uri"])
def test_ui_without_a_store_is_one_error_line_exit_2(tmp_path, given):
    """``sgstudy ui`` where no MLflow database exists (./mlflow.db by default, or the
    --tracking-uri given) exits 2 with one ``error:`` line naming the missing file, and creates
    nothing (MLflow would otherwise make an empty database)."""
    db = tmp_path / "mlflow.db"
    args = ["--tracking-uri", f"sqlite:///{db}"] if given else []
    done = subprocess.run(
        [str(SGSTUDY), "ui", "--port", str(free_port()), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [f"error: no MLflow store at {db}: run a study first"]
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []
