"""The ``dsg-ablation`` study end to end on the real stack: ``sgstudy run`` (Ray Tune, Optuna,
MLflow on disk) trains every DSG variant once on a tiny referring-relationship dataset, and
``sgstudy report dsg-ablation`` renders its table from MLflow.

The dataset is derived from the synthetic scene graphs with ``synth-rr`` and cut to one
relation on each of a few images, so that a trial is its start-up and a few steps of the
tiny DSG: the test checks the plumbing (one child run per variant, the task's metrics and
artifact, the report), ``tests/test_dsg.py`` checks that DSG learns.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from test_study import optuna_trials, read_study, run_to_end, sgstudy_run

from search_spaces.studies import DSG_GRID, DSG_LABELS
from sgstudy.data.referring_synth import derive_referring_dataset
from sgstudy.metric_names import REFERRING_METRICS, TOTAL_LOSS
from sgstudy.tracking import VARIANT_TAG
from sgstudy.tracking_layout import PER_PREDICATE_IOU_ARTIFACT

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to clean up Ray processes"
)

STUDY = "dsg-ablation"
IMAGES_PER_SPLIT = {"train": 6, "test": 1}  # 5 train images and 1 val image (last 10%)


def cut_to_few_queries(root: Path) -> None:
    """Keeps the first relation of the first few images of each split file."""
    for split, count in IMAGES_PER_SPLIT.items():
        path = root / f"annotations_{split}.json"
        relations = json.loads(path.read_text())
        kept = sorted(relations, key=int)[:count]
        path.write_text(json.dumps({key: relations[key][:1] for key in kept}))


@pytest.fixture(scope="module")
def dsg_study(synthetic_root_factory, tmp_path_factory):
    data = tmp_path_factory.mktemp("rr") / "data"
    derive_referring_dataset(synthetic_root_factory(40, 64, 0), data)
    cut_to_few_queries(data)
    workdir = tmp_path_factory.mktemp("dsg_study")
    logs = tmp_path_factory.mktemp("dsg_study_logs")
    driver = run_to_end(
        sgstudy_run(STUDY, "--data", data, "--epochs", 1, "--max-concurrent", 2),
        cwd=workdir,
        logs=logs,
    )
    assert driver.proc.returncode == 0, driver.tail()
    return workdir, driver


def test_every_variant_trains_once_and_logs_the_referring_metrics(dsg_study):
    """One FINISHED parent, one FINISHED child run per variant (DSG, its two GPI variants,
    no-DSG, Two-step), each with subject/object/mean IoU and the loss at epoch 1, its
    variant's config as params, and the per-predicate IoU artifact."""
    workdir, driver = dsg_study
    tracked = read_study(workdir, STUDY)
    assert len(tracked.parents) == 1 and tracked.parents[0].info.status == "FINISHED"
    assert Counter(run.data.tags[VARIANT_TAG] for run in tracked.children) == Counter(
        list(DSG_GRID)
    )
    for run in tracked.children:
        assert run.info.status == "FINISHED", run.info.run_name
        keys = DSG_GRID[run.data.tags[VARIANT_TAG]]
        assert run.data.params["model"] == "dsg"
        assert {k: run.data.params[k] for k in keys} == keys
        for key in (*REFERRING_METRICS, TOTAL_LOSS):
            assert tracked.steps(run, key) == [1], (run.info.run_name, key)
            assert 0.0 <= run.data.metrics[key] <= (1.0 if key != TOTAL_LOSS else 1e6)
        artifacts = {a.path for a in tracked.client.list_artifacts(run.info.run_id)}
        assert PER_PREDICATE_IOU_ARTIFACT in artifacts
    assert [t.state.name for t in optuna_trials(workdir)] == ["COMPLETE"] * len(DSG_GRID)
    # The driver's own table names the variants and the IoU columns.
    out = driver.stdout()
    assert "subject IoU" in out and all(label in out for label in DSG_LABELS.values())


def test_report_renders_the_iou_table_in_every_format(dsg_study, tmp_path):
    """``sgstudy report dsg-ablation`` on the launch's store (in this process, as the CLI
    calls it)."""
    from reports.report import write_report

    workdir, _ = dsg_study
    out = tmp_path / "report"
    outputs = write_report(STUDY, f"sqlite:///{workdir / 'mlflow.db'}", out)
    assert outputs.logged_to is not None
    table = (out / "table_main.md").read_text().split("\n\n")[0].splitlines()
    assert table[0] == "| Method | subject IoU | object IoU | mean IoU |"
    assert [row.split(" | ")[0].lstrip("| ") for row in table[2:]] == [
        "DSG", "DSG (scalar attention)", "DSG (sum)", "no-DSG", "Two-step",
    ]  # fmt: skip
    assert (out / "table_main.tex").is_file() and (out / "table_main.csv").is_file()
    assert not (out / "table_groups.md").exists()
    # The DSG supplement's Table 1, measured by the driver at launch, comes with the report.
    complexity = (out / "complexity.md").read_text()
    assert "`paper` preset" in complexity and "`tiny` preset" in complexity
    assert "| DSG generator | n = 32 entities" in complexity
    assert "## Complexity (DSG supplement Table 1)" in (out / "index.md").read_text()


def test_a_study_refuses_a_dataset_of_the_other_task(synthetic_root_factory, tmp_path, capsys):
    """dsg-ablation on VG150 files, or a Motifs study on referring-relationship files: one
    error line, exit 2, and nothing written (no MLflow store, no Ray state)."""
    from sgstudy.cli import main

    scene_graphs = synthetic_root_factory(40, 64, 0)
    referring = tmp_path / "rr"
    derive_referring_dataset(scene_graphs, referring)
    store = tmp_path / "mlflow.db"
    for study, data, needle in (
        (STUDY, scene_graphs, "needs a referring-relationship dataset (derive one with"),
        ("align-motifs-p", referring, "needs a VG150 dataset"),
    ):
        argv = ["run", study, "--data", str(data), "--tracking-uri", f"sqlite:///{store}",
                "--storage-path", str(tmp_path / "ray_results")]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not store.exists() and not (tmp_path / "ray_results").exists()
