"""The ``align-sgtr`` study end to end on the real stack (Ray, Optuna, MLflow on disk): SGTR
against Align-SGTR over two seeds, one short epoch on a 40-image synthetic dataset, then
``sgstudy report align-sgtr`` with the per-predicate difference figure (supplement Figure 2).

The DETR is a small untrained one, saved as ``sgstudy train-detector --kind detr`` saves: the
test is about the study's plumbing, not about what SGTR learns (``test_sgtr_learns``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer
from test_study import assert_finished_launch, read_study, run_to_end, sgstudy_run

from reports import plots
from reports.report import write_report
from reports.results import load_study_results
from search_spaces.studies import BASELINE, get_study
from sgstudy.cli import main
from sgstudy.config import RunConfig
from sgstudy.data.statistics import compute_statistics
from sgstudy.tracking import VARIANT_TAG
from sgstudy.training import load_split

detr = pytest.importorskip("sgstudy.models.detr")

STUDY = "align-sgtr"
DATASET = (40, 64, 0)  # the same small dataset as the Motifs study tests
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def data_root(synthetic_root_factory) -> Path:
    return synthetic_root_factory(*DATASET)


@pytest.fixture(scope="module")
def detector_file(data_root, tmp_path_factory) -> Path:
    """A DETR narrower than tiny, its box head scaled so that its untrained boxes differ."""
    classes = compute_statistics(
        load_split(RunConfig.from_flat({"data_root": str(data_root)}), "train")
    ).object_classes
    widths = dataclasses.replace(
        detr.DETR_PRESETS["tiny"], hidden_dim=32, heads=2, encoder_layers=1, decoder_layers=1,
        ffn_dim=64, num_queries=8, min_size=64, max_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = detr.build_detr(widths, len(classes) - 1)
    with torch.no_grad():
        model.bbox_embed.layers[-1].weight.mul_(100.0)
    path = tmp_path_factory.mktemp("detr") / "detector.pt"
    detr.save_detr(model, path, "tiny", classes)
    return path


@pytest.fixture(scope="module")
def launch(tmp_path_factory, data_root, detector_file):
    workdir = tmp_path_factory.mktemp("align_sgtr")
    command = sgstudy_run(STUDY, "--data", data_root, "--preset", "tiny", "--epochs", 1)
    command += ["--seeds", ",".join(map(str, SEEDS)), "--detector", str(detector_file)]
    driver = run_to_end(command, cwd=workdir, logs=tmp_path_factory.mktemp("align_sgtr_logs"))
    assert driver.proc.returncode == 0, driver.tail()
    return workdir, read_study(workdir, STUDY)


def test_two_variants_times_two_seeds_under_one_parent(launch, detector_file):
    _, tracked = launch
    assert_finished_launch(tracked, trials=4)
    grid = get_study(STUDY).grid
    seen = Counter((r.data.tags[VARIANT_TAG], r.data.params["seed"]) for r in tracked.children)
    assert seen == Counter((v, str(s)) for v in grid for s in SEEDS)
    assert tracked.parents[0].data.params["detector_checkpoint"] == str(detector_file)
    for run in tracked.children:
        params = run.data.params
        assert params["model"] == "sgtr" and params["protocol"] == "sgdet"
        assert params["detector_checkpoint"] == str(detector_file)
        assert params["optimizer"] == "adamw" and float(params["lr"]) == 8e-5
        aligned = run.data.tags[VARIANT_TAG] != BASELINE
        assert params["align"] == str(aligned)
        if aligned:
            assert float(params["mask_ratio"]) == 0.1 and float(params["align_weight"]) == 10.0
            assert "cross-attention" in params["align_masks"]
        assert "candidate_expansion off" in params["sgtr_switches"]
        assert "loss_predicate" in run.data.metrics and "R_50" in run.data.metrics


def test_report_table_and_difference_figure(launch, tmp_path):
    workdir, _ = launch
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    out = tmp_path / "report"
    assert main(["report", STUDY, "--tracking-uri", uri, "--out", str(out)]) == 0
    table = (out / "table_main.md").read_text()
    header, _, *rows = table.split("\n\n")[0].splitlines()
    deltas = " | ".join(f"Δ {m} [95%]" for m in ("R@50", "R@100", "mR@50", "mR@100"))
    assert header == f"| Method | R@50 | R@100 | mR@50 | mR@100 | {deltas} | n |"
    assert [line.split("|")[1].strip() for line in rows] == ["SGTR", "Align-SGTR"]
    assert "tail mR@100" in (out / "table_groups.md").read_text()
    assert (out / "difference_R100.png").is_file()

    results = load_study_results(STUDY, uri)
    fig = plots.difference_figure(results.per_predicate, "Align-SGTR", "SGTR", k=100)
    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    # Expected bars from the runs' artifacts: mean R@100 per predicate, Align-SGTR minus SGTR.
    rows = results.per_predicate[results.per_predicate["k"] == 100]
    mean = rows.groupby(["method", "predicate"])["recall"].mean()
    names = [tick.get_text() for tick in ax.get_xticklabels()]
    expected = [100 * (mean["Align-SGTR"][n] - mean["SGTR"][n]) for n in names]
    assert len(bars) == len(names) == rows["predicate"].nunique()
    assert np.allclose([bar.get_height() for bar in bars], expected)
    counts = rows.drop_duplicates("predicate").set_index("predicate")["train_count"]
    assert list(counts[names]) == sorted(counts[names], reverse=True)  # by training frequency
    better = sum(e > 1e-9 for e in expected)
    assert f"better on {better} of {len(names)}" in ax.get_title()
    assert write_report(STUDY, uri, tmp_path / "again", log_to_mlflow=False).compared == (
        "Align-SGTR",
        "SGTR",
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", STUDY], "runs SGDet: pass --detector FILE"),
        (["run", STUDY, "--detector", "/nonexistent/detr.pt"], "does not exist"),
        (["train", "--model", "sgtr", "--protocol", "predcls"], "runs the sgdet protocol only"),
        (["train", "--model", "sgtr", "--protocol", "sgcls"], "runs the sgdet protocol only"),
    ],
)
def test_bad_sgtr_input_is_one_line_and_exit_2(argv, needle, data_root, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")] if argv[0] == "train" else []
    assert main([*argv, "--data", str(data_root), *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err
    assert not (tmp_path / "run").exists()


def test_sgdet_frequency_baseline_on_the_detr(data_root, detector_file, capsys):
    argv = ["baseline", "--data", str(data_root), "--split", "val", "--protocol", "sgdet"]
    assert main([*argv, "--detector", str(detector_file)]) == 0
    out = capsys.readouterr().out
    assert "Frequency baseline, SGDet on the detections of" in out
    assert out.splitlines()[-6].startswith("R ")
    assert main(argv) == 2  # sgdet without a detector
    assert "sgdet needs --detector" in capsys.readouterr().err
