"""``sgstudy train`` / ``sgstudy evaluate``: a real run beats the frequency baseline, its run
directory re-evaluates, and every bad flag is one error line with exit status 2."""

import json

import pytest
import torch

from sgstudy.cli import main
from sgstudy.config import RunConfig
from sgstudy.data.statistics import compute_statistics
from sgstudy.engine import evaluate
from sgstudy.models.frequency import FrequencyBaseline
from sgstudy.training import load_split, make_evaluator, make_loader


@pytest.fixture(scope="module")
def learn_root(synthetic_root_factory):
    """300 images: enough val images (about 30) for the comparison to mean something."""
    return synthetic_root_factory(300, 64, 0)


@pytest.fixture(scope="module")
def trained_run(learn_root, tmp_path_factory):
    """Four short epochs of tiny Motifs in PredCls through the CLI."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--data", str(learn_root), "--preset", "tiny", "--epochs", "4"]
    argv += ["--lr", "0.05", "--batch-size", "4", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    return out


def baseline_val_metrics(root) -> dict[str, float]:
    config = RunConfig.from_flat({"data_root": str(root)})
    statistics = compute_statistics(load_split(config, "train"))
    loader = make_loader(load_split(config, "val"), config)
    model = FrequencyBaseline.from_statistics(statistics)
    return evaluate(model, loader, make_evaluator(config, statistics), torch.device("cpu")).metrics


def test_motifs_beats_the_frequency_baseline_on_val(trained_run, learn_root):
    """The number that says the model learns: PredCls R@50 and mR@50 clearly above the
    baseline that only knows the label pair."""
    motifs = json.loads((trained_run / "metrics.json").read_text())["val"]
    baseline = baseline_val_metrics(learn_root)
    assert motifs["R_50"] > baseline["R_50"] + 0.05
    assert motifs["mR_50"] > baseline["mR_50"] + 0.03


def test_run_directory_holds_history_checkpoint_and_config(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["history"][-1]["mR_50"] == metrics["val"]["mR_50"]
    assert (trained_run / "checkpoint.pt").is_file()
    config = json.loads((trained_run / "config.json").read_text())
    assert config["epochs"] == 4 and config["protocol"] == "predcls" and config["align"] is False
    model = json.loads((trained_run / "model.json").read_text())
    assert model["align_branch"] == "off" and model["motifs_preset"] == "tiny"


def test_evaluate_rereads_the_checkpoint(trained_run, capsys):
    """Evaluating the saved run on val gives back the numbers training printed."""
    assert main(["evaluate", str(trained_run), "--split", "val", "--quiet"]) == 0
    again = json.loads((trained_run / "metrics_val.json").read_text())["val"]
    trained = json.loads((trained_run / "metrics.json").read_text())["val"]
    assert again == pytest.approx(trained)
    assert "(epoch 4)" in capsys.readouterr().out


def test_train_resume_of_a_finished_run_trains_nothing(trained_run, learn_root, capsys):
    argv = ["train", "--data", str(learn_root), "--epochs", "4", "--device", "cpu", "--quiet"]
    assert (
        main([*argv, "--lr", "0.05", "--batch-size", "4", "--out", str(trained_run), "--resume"])
        == 0
    )
    assert "nothing to train" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--protocol", "sgxyz"], "invalid choice: 'sgxyz'"),
        (["--align", "--mask-ratio", "1.0"], "mask_ratio (p) must be in [0, 1)"),
        (["--align", "--mask-ratio", "-0.1"], "mask_ratio (p) must be in [0, 1)"),
        (["--align", "--align-weight", "-1"], "align_weight (λ) must be in [0, 1e+06], got -1.0"),
        (["--protocol", "sgdet"], "sgdet needs a trained detector"),
        (["--model", "nope"], "invalid choice: 'nope'"),
        (["--epochs", "0"], "epochs must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(flags, message, synthetic_root, tmp_path, capsys):
    argv = ["train", "--data", str(synthetic_root), "--out", str(tmp_path / "run"), *flags]
    if "invalid choice" in message:  # argparse's own refusal exits from inside main
        with pytest.raises(SystemExit) as exited:
            main(argv)
        code = exited.value.code
    else:
        code = main(argv)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_missing_dataset_is_one_line(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "absent") in err


def test_evaluate_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
