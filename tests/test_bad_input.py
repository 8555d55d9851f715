"""Bad input across every subcommand: exit 2, one ``error:`` line, no traceback, nothing written.

Each case runs the real CLI (``sgstudy.cli.main``) in this process, from a working folder
that already holds an MLflow store (one experiment, one run) and an Optuna store (one
trial), as a user's project folder would. After the refusal every file there is byte for
byte as it was, so no MLflow run, Optuna trial, checkpoint or result folder was written,
and no Ray was started.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgstudy.cli import main

DATASET = (40, 64, 0)
STUDY = "align-motifs-p"

# (argv, a piece of the one error line). Placeholders: {data} a valid dataset, {file} a
# plain file, {missing} a path that does not exist, {busy_port} a port something listens
# on, {dead_port} a port nothing listens on.
CASES = [
    # data synth / data check
    (["data", "synth", "--out", "/proc/sgstudy-x"], "cannot write in /proc"),
    (["data", "synth", "--out", "{file}"], "is a file, not a folder"),
    (["data", "synth", "--out", "{file}/x"], "is a file, not a folder"),
    (["data", "synth", "--out", "out", "--num-images", "1"], "num_images must be >= 2"),
    (["data", "synth", "--out", "out", "--image-size", "4"], "image_size must be >="),
    (["data", "synth", "--out", "out", "--num-images", "many"], "invalid int value"),
    (["data", "synth", "--out", "out", "--val-fraction", "1"], "val_fraction must be between"),
    (["data", "synth"], "--out"),
    (["data", "check", "{missing}"], "{missing}"),
    (["data", "check", "{file}"], "{file}"),
    (["data", "check", "{data}", "--num-val-images", "-1"], "num_val_images must be >= 0"),
    # baseline
    (["baseline", "--data", "{missing}"], "{missing}"),
    (["baseline", "--data", "{data}", "--split", "train"], "invalid choice"),
    # train
    (["train", "--data", "{data}", "--out", "o", "--num-workers", "-1"], "num_workers must be"),
    (["train", "--data", "{data}", "--out", "/proc/sgstudy-x"], "cannot write in /proc"),
    (["train", "--data", "{data}", "--out", "{file}/run"], "is a file, not a folder"),
    (["train", "--data", "{data}", "--out", "o", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--data", "{data}", "--out", "o", "--lr-steps", "4"], "lr_steps must be epochs in"),
    (["train", "--data", "{data}", "--out", "o", "--lr-steps", "x"], "comma-separated integers"),
    (["train", "--data", "{data}", "--out", "o", "--lr", "-1"], "lr must be a finite number > 0"),
    (["train", "--data", "{data}", "--out", "o", "--lr", "inf"], "lr must be a finite number > 0"),
    (["train", "--data", "{data}", "--out", "o", "--batch-size", "0"], "batch_size must be"),
    (["train", "--data", "{data}", "--out", "o", "--mask-ratio", "1"], "mask_ratio (p) must"),
    (["train", "--data", "{data}", "--out", "o", "--mask-ratio", "nan"], "mask_ratio (p) must"),
    (["train", "--data", "{data}", "--out", "o", "--align-weight", "1e39"], "align_weight (λ)"),
    (["train", "--data", "{data}", "--out", "o", "--align-weight", "inf"], "align_weight (λ)"),
    (["train", "--data", "{data}", "--out", "o", "--model", "nope"], "invalid choice"),
    (["train", "--data", "{missing}", "--out", "o"], "{missing}"),
    (["train", "--data", "{data}", "--out", "o", "--device", "cuda:7"], "CUDA is not available"),
    # evaluate / train-detector / studies
    (["evaluate", "{missing}"], "is not a run directory"),
    (["evaluate", "{data}"], "config.json is missing"),
    (["train-detector", "--data", "{missing}", "--out", "d"], "{missing}"),
    (["studies", "extra"], "unrecognized arguments"),
    # run: the study, its grid and the launch name
    (["run", "no-such-study", "--data", "{data}"], "unknown study 'no-such-study'"),
    (["run", STUDY, "--data", "{data}", "--values", "1.5"], "outside [0, 1)"),
    (["run", STUDY, "--data", "{data}", "--epochs", "3", "--lr-steps", "3"], "lr_steps must be"),
    (["run", STUDY, "--data", "{data}", "--lr", "nan"], "lr must be a finite number > 0"),
    (["run", STUDY, "--data", "{data}", "--batch-size", "0"], "batch_size must be >= 1"),
    (["run", "align-motifs-lambda", "--data", "{data}", "--values", "1e39"], "align_weight (λ)"),
    (["run", "align-motifs-lambda", "--data", "{data}", "--values", "nan"], "align_weight (λ)"),
    (["run", "align-motifs-lambda", "--data", "{data}", "--values=-1"], "align_weight (λ)"),
    (["run", STUDY, "--data", "{data}", "--values", "0.1,x"], "comma-separated numbers"),
    (["run", STUDY, "--data", "{data}", "--seeds", "a"], "comma-separated integers"),
    (["run", STUDY, "--data", "{data}", "--epochs", "0"], "epochs must be >= 1"),
    (["run", STUDY, "--data", "{data}", "--preset", "huge"], "invalid choice"),
    (["run", STUDY, "--data", "{data}", "--scheduler", "asha"], "leaves holes in the grid"),
    (["run", STUDY, "--data", "{data}", "--name", "../../x"], "is not a plain name"),
    (["run", STUDY, "--data", "{data}", "--name", "a/b"], "is not a plain name"),
    (["run", STUDY, "--data", "{data}", "--name", ".hidden"], "is not a plain name"),
    (["run", STUDY, "--data", "{data}", "--resume"], "nothing to resume"),
    # run: where it reads and writes
    (["run", STUDY, "--data", "{file}"], "is a file; give the dataset's folder"),
    (["run", STUDY, "--data", "{missing}"], "dataset folder {missing} does not exist"),
    (["run", STUDY, "--data", "{data}", "--tracking-uri", "sqlite:////proc/x.db"], "/proc"),
    (["run", STUDY, "--data", "{data}", "--tracking-uri", "sqlite:///{missing}/x.db"], "exist"),
    (["run", STUDY, "--data", "{data}", "--tracking-uri", "file:///tmp/m"], "file store"),
    (
        ["run", STUDY, "--data", "{data}", "--tracking-uri", "http://127.0.0.1:{dead_port}"],
        "unreachable",
    ),
    (["run", STUDY, "--data", "{data}", "--storage-path", "/proc/sgstudy-x"], "cannot write"),
    (["run", STUDY, "--data", "{data}", "--storage-path", "{file}/r"], "is a file, not a"),
    (["run", STUDY, "--data", "{data}", "--optuna-storage", "redis://h/0"], "not a database"),
    (["run", STUDY, "--data", "{data}", "--optuna-storage", "sqlite:////proc/o.db"], "/proc"),
    # run: resources, refused before Ray starts
    (["run", STUDY, "--data", "{data}", "--gpus-per-trial", "2"], "this machine's Ray has"),
    (["run", STUDY, "--data", "{data}", "--cpus-per-trial", "100000"], "this machine's Ray"),
    (["run", STUDY, "--data", "{data}", "--gpus-per-trial", "nan"], "gpus_per_trial must be"),
    (["run", STUDY, "--data", "{data}", "--cpus-per-trial", "0"], "cpus_per_trial must be"),
    (["run", STUDY, "--data", "{data}", "--gpus-per-trial", "1.5"], "whole number"),
    (["run", STUDY, "--data", "{data}", "--workers-per-trial", "0"], "workers_per_trial must"),
    (["run", STUDY, "--data", "{data}", "--max-concurrent", "0"], "max_concurrent must be"),
    (["run", STUDY, "--data", "{data}", "--max-failures", "-1"], "max_failures must be"),
    # ui / report
    (["ui", "--port", "99999"], "outside 1..65535"),
    (["ui", "--port", "0"], "outside 1..65535"),
    (["ui", "--port", "http"], "expected a port number"),
    (["ui", "--port", "{busy_port}"], "cannot serve the MLflow UI"),
    (["ui", "--tracking-uri", "sqlite:///{missing}/m.db"], "does not exist"),
    (["report", STUDY, "--format", "docx"], "docx"),
    (["report", STUDY, "--out", "/proc/sgstudy-x"], "no finished trial runs"),
]


def case_id(argv: list[str]) -> str:
    return "-".join(part.strip("-{}").replace("/", "") for part in argv[:6])[:60]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A project folder with an MLflow store (one experiment, one run) and an Optuna store."""
    import optuna
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("project")
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment(STUDY, artifact_location=(folder / "art").as_uri())
    client.set_terminated(client.create_run(experiment).info.run_id)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name="s")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    (folder / "notes.txt").write_text("a plain file\n")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file()
        else "dir"
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize(("argv", "needle"), CASES, ids=[case_id(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    argv, needle, template, tmp_path, monkeypatch, capsys, synthetic_root_factory, busy_port
):
    import ray

    workdir = tmp_path / "project"
    shutil.copytree(template, workdir)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead_port = free.getsockname()[1]
    fill = {
        "data": synthetic_root_factory(*DATASET),
        "file": workdir / "notes.txt",
        "missing": tmp_path / "no-such-thing",
        "busy_port": busy_port,
        "dead_port": dead_port,
    }
    argv = [part.format(**fill) for part in argv]
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    data_before = snapshot(fill["data"])
    before = snapshot(workdir)
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's refusals
        status = exc.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert needle.format(**fill) in lines[0]
    assert "Traceback" not in out + err
    assert snapshot(workdir) == before
    assert snapshot(fill["data"]) == data_before
    assert not fill["missing"].exists()
    assert not ray.is_initialized()


def test_the_table_covers_every_subcommand_with_at_least_40_cases():
    assert len(CASES) >= 40
    commands = {argv[0] for argv, _ in CASES}
    assert commands >= {"data", "baseline", "train", "evaluate", "train-detector", "studies"}
    assert commands >= {"run", "ui", "report"}
