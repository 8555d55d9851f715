"""The head's MLflow server, started exactly as cluster.yaml starts it, takes a study's logging.

The command is cluster.yaml's own line, run by bash with two stand-ins for the cloud: HOME is
a temp folder (``~/sgstudy-venv`` links to this venv, ``/home/ubuntu`` becomes that folder)
and ``MLFLOW_HOST`` is 127.0.0.2, a loopback address other than 127.0.0.1, as a worker's view
of the head's private address. The old recipe (``--host 0.0.0.0``, no ``--allowed-hosts``)
answered ``/health`` but refused every API call from such an address with 403; sgstudy's
reachability check now makes a real API call and says so in one line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sgstudy import tracking
from sgstudy.errors import UserError
from trainables.processes import group_members

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.2"
PORT = 5000  # cluster.yaml's
START_TIMEOUT_S = 240


def mlflow_command() -> str:
    commands = yaml.safe_load((ROOT / "cluster.yaml").read_text())["head_start_ray_commands"]
    (command,) = [c for c in commands if "mlflow server" in c]
    return command


def loopback_alias_works() -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((HOST, 0))
        except OSError:
            return False
    return True


def start_server(home: Path, command: str) -> subprocess.Popen:
    (home / "sgstudy-venv").mkdir(parents=True)
    os.symlink(Path(sys.executable).parent, home / "sgstudy-venv" / "bin")
    (home / "mlflow").mkdir()
    command = command.replace("/home/ubuntu", str(home))
    env = {**os.environ, "HOME": str(home), "MLFLOW_HOST": HOST}
    proc = subprocess.Popen(["bash", "-c", command], env=env, start_new_session=True)
    proc.wait(timeout=30)  # the line backgrounds the server (nohup ... &) and returns
    return proc


def wait_for_health(home: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{PORT}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    log = (home / "mlflow" / "server.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"MLflow did not answer on {HOST}:{PORT} within {START_TIMEOUT_S} s\n{log}")


def stop_server(home: Path, proc: subprocess.Popen) -> None:
    """Kills the server's process group (uvicorn and its workers) by id, and waits."""
    for pid in group_members(proc.pid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def server_home(tmp_path):
    if not loopback_alias_works():
        pytest.skip(f"{HOST} is not a usable loopback address here")
    return tmp_path / "home"


def test_the_recipes_server_takes_a_study_from_a_private_address(server_home):
    """Started by cluster.yaml's line on 127.0.0.2: the reachability check passes (a real API
    call), and a parent run, a trial run and its metrics are written and read back there."""
    proc = start_server(server_home, mlflow_command())
    try:
        wait_for_health(server_home)
        uri = tracking.resolve_tracking_uri(f"http://{HOST}:{PORT}", timeout_s=120)
        client = tracking.make_client(uri)
        experiment_id = tracking.get_or_create_experiment(client, "align-motifs-p", uri)
        parent = tracking.start_study_run(client, experiment_id, "align-motifs-p", "l", {"n": 1})
        study_run = tracking.StudyRun(uri, experiment_id, parent, "align-motifs-p")
        run_id, _ = tracking.start_trial_run(client, study_run, "t1", "baseline seed 0")
        tracking.log_epoch(client, run_id, 1, {"mR_50": 0.25})
        tracking.end_run(client, run_id, tracking.FINISHED)
        assert tracking.logged_steps(client, run_id, "mR_50") == {1}
        assert client.get_run(run_id).info.status == "FINISHED"
        assert "--host 0.0.0.0" not in mlflow_command()
    finally:
        stop_server(server_home, proc)


@pytest.mark.slow
def test_the_old_recipes_server_is_refused_in_one_line(server_home):
    """The old line (``--host 0.0.0.0``, no ``--allowed-hosts``) answers /health but 403s
    API calls addressed to 127.0.0.2: the check refuses it before anything is written."""
    old = mlflow_command().split("--allowed-hosts")[0].replace('"$MLFLOW_HOST"', "0.0.0.0")
    old += "> ~/mlflow/server.log 2>&1 & echo $! > ~/mlflow/server.pid"
    proc = start_server(server_home, old)
    try:
        wait_for_health(server_home)
        with pytest.raises(UserError, match="HTTP 403") as refused:
            tracking.resolve_tracking_uri(f"http://{HOST}:{PORT}")
        assert "--allowed-hosts" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        stop_server(server_home, proc)
