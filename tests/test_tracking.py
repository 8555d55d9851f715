"""MLflow helpers against a real SQLite store: nesting, resuming a trial's run, statuses."""

import socket

import pytest

from sgstudy import tracking
from sgstudy.errors import UserError
from sgstudy.tracking_layout import (
    NODE_ID_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STUDY_TAG,
    TRIAL_ID_TAG,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = tracking.resolve_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = tracking.make_client(uri)
    experiment_id = tracking.get_or_create_experiment(client, "align-motifs-p", uri)
    parent = tracking.start_study_run(
        client, experiment_id, "align-motifs-p", "launch-a", {"seeds": "0,1"}
    )
    return client, tracking.StudyRun(uri, experiment_id, parent, "align-motifs-p")


def test_default_uri_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_relative_sqlite_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri("sqlite:///sub.db") == f"sqlite:///{tmp_path}/sub.db"


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("sqlite:////no/such/folder/mlflow.db", "folder /no/such/folder does not exist"),
        ("./mlruns", "file store"),
        ("file:///tmp/mlruns", "file store"),
    ],
)
def test_bad_uris_are_user_errors(uri, needle):
    with pytest.raises(UserError, match=needle):
        tracking.resolve_tracking_uri(uri)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_refused_quickly():
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UserError, match=f"tracking server {uri} is unreachable"):
        tracking.resolve_tracking_uri(uri, timeout_s=1.0)


def test_a_server_that_refuses_the_api_is_refused():
    # Something answers HTTP, but not MLflow's API (here: 501 to every GET): one error line
    # naming the code, where a bare /health probe used to let the launch go on and crash.
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(UserError, match=f"tracking server {uri} refused an API call") as e:
            tracking.resolve_tracking_uri(uri)
        assert "HTTP 501" in str(e.value) and "\n" not in str(e.value)
    finally:
        thread.join(timeout=5)
        server.server_close()


def test_experiment_is_reused_and_artifacts_sit_next_to_the_db(store):
    client, study_run = store
    again = tracking.get_or_create_experiment(client, "align-motifs-p", study_run.tracking_uri)
    assert again == study_run.experiment_id
    location = client.get_experiment(again).artifact_location
    db_dir = tracking.sqlite_path(study_run.tracking_uri).parent
    assert location == (db_dir / "mlartifacts" / "align-motifs-p").as_uri()


def test_parent_run_is_found_by_its_launch(store):
    client, study_run = store
    run = client.get_run(study_run.parent_run_id)
    assert run.data.tags[ROLE_TAG] == "study" and run.data.tags[STUDY_TAG] == "align-motifs-p"
    assert run.data.params == {"seeds": "0,1"}
    assert tracking.find_study_run(client, study_run.experiment_id, "launch-a") == run.info.run_id
    assert tracking.find_study_run(client, study_run.experiment_id, "launch-b") is None


def test_trial_run_is_nested_and_resumed_by_trial_id(store):
    client, study_run = store
    run_id, resumed = tracking.start_trial_run(
        client, study_run, "t_00001", "p=0.1 seed=0", tags=tracking.node_tags("node-a", [])
    )
    assert not resumed
    tags = client.get_run(run_id).data.tags
    assert tags[ROLE_TAG] == "trial" and tags[PARENT_TAG] == study_run.parent_run_id
    assert tags[TRIAL_ID_TAG] == "t_00001" and tags[NODE_ID_TAG] == "node-a"
    tracking.log_epoch(client, run_id, 1, {"mR_50": 0.25, "loss": 1.5})
    tracking.end_run(client, run_id, tracking.FAILED)

    # The retry knows nothing but its trial id, and lands in the same run on another node.
    again, resumed = tracking.start_trial_run(
        client, study_run, "t_00001", "p=0.1 seed=0", tags=tracking.node_tags("node-b", [0])
    )
    assert (again, resumed) == (run_id, True)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags[NODE_ID_TAG] == "node-b"
    tracking.log_epoch(client, run_id, 2, {"mR_50": 0.3, "loss": 1.2})
    tracking.end_run(client, run_id, tracking.FINISHED)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert tracking.logged_steps(client, run_id, "mR_50") == {1, 2}
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.5), (2, 1.2)]


def test_known_run_id_wins_over_the_search(store):
    client, study_run = store
    first, _ = tracking.start_trial_run(client, study_run, "t_00002", "a")
    second, resumed = tracking.start_trial_run(client, study_run, "other", "b", known_run_id=first)
    assert second == first and resumed


def test_params_are_truncated_and_never_rewritten(store):
    client, study_run = store
    run_id, _ = tracking.start_trial_run(client, study_run, "t_00003", "params")
    tracking.log_params(client, run_id, {"long": "x" * 7000, "seed": 0})
    # A resumed trial logs its params again; the ones already there are left alone.
    tracking.log_params(client, run_id, {"seed": 0, "git_commit": "abc"})
    params = client.get_run(run_id).data.params
    assert len(params["long"]) == tracking.MAX_PARAM_LENGTH
    assert params["seed"] == "0" and params["git_commit"] == "abc"


def test_json_artifact_is_readable(store, tmp_path):
    import json

    client, study_run = store
    run_id, _ = tracking.start_trial_run(client, study_run, "t_00004", "artifact")
    tracking.log_json(client, run_id, "per_predicate_recall.json", {"on": 0.5})
    local = client.download_artifacts(run_id, "per_predicate_recall.json", str(tmp_path))
    assert json.loads(open(local).read()) == {"on": 0.5}


def test_end_status_follows_the_exception():
    assert tracking.status_for(None) == "FINISHED"
    assert tracking.status_for(KeyboardInterrupt()) == "KILLED"
    assert tracking.status_for(RuntimeError("boom")) == "FAILED"
    with pytest.raises(ValueError):
        tracking.end_run(None, "id", "DONE")


def test_git_commit_of_this_checkout_and_elsewhere(tmp_path):
    commit = tracking.git_commit()
    assert len(commit) == 40 and int(commit, 16) >= 0
    assert tracking.git_commit(tmp_path) == "unknown"
