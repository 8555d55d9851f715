"""The report of a referring-relationship study (``dsg-ablation``) from a real MLflow SQLite
store holding hand-made DSG runs: labels and row order of the ablations, subject / object /
mean IoU as mean ± std over seeds with the best bold, in Markdown, LaTeX and CSV."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from reports.report import write_report
from reports.results import exclusion_reason
from sgstudy.tracking_layout import (
    COMPLEXITY_ARTIFACT,
    PARENT_TAG,
    ROLE_STUDY,
    ROLE_TAG,
    ROLE_TRIAL,
)

STUDY = "dsg-ablation"
# (dsg_variant, gpi_aggregation, seed, subject IoU, object IoU, mean IoU), logged in an order
# that is not the table's.
RUNS = [
    ("two-step", "feature-attention", 0, 0.30, 0.20, 0.25),
    ("no-dsg", "feature-attention", 0, 0.40, 0.30, 0.35),
    ("dsg", "feature-attention", 0, 0.60, 0.50, 0.55),
    ("dsg", "sum", 0, 0.50, 0.40, 0.45),
    ("dsg", "scalar-attention", 0, 0.58, 0.56, 0.57),
    ("no-dsg", "feature-attention", 1, 0.44, 0.34, 0.39),
    ("dsg", "feature-attention", 1, 0.62, 0.54, 0.58),
    ("dsg", "scalar-attention", 1, 0.58, 0.60, 0.59),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(STUDY, artifact_location=(root / "store").as_uri())
    parent = client.create_run(experiment, run_name="launch", tags={ROLE_TAG: ROLE_STUDY})
    for variant, aggregation, seed, subject, obj, mean in RUNS:
        run = client.create_run(
            experiment, run_name=f"{variant} seed={seed}",
            tags={ROLE_TAG: ROLE_TRIAL, PARENT_TAG: parent.info.run_id},
        )  # fmt: skip
        params = {"model": "dsg", "protocol": "predcls", "align": "False", "seed": str(seed),
                  "dsg_variant": variant, "gpi_aggregation": aggregation, "epochs": "1"}  # fmt: skip
        finals = {"subject_iou": subject, "object_iou": obj, "mean_iou": mean, "epoch": 1.0}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), 0, 1) for k, v in finals.items()],
            params=[Param(k, v) for k, v in params.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    client.log_text(parent.info.run_id, COMPLEXITY, COMPLEXITY_ARTIFACT)
    return uri, parent.info.run_id


COMPLEXITY = "| component | trainable parameters |\n| --- | ---: |\n| DSG generator | 5.25 M |\n"
EXPECTED_MARKDOWN = """\
| Method | subject IoU | object IoU | mean IoU | n |
|:---|---:|---:|---:|---:|
| DSG | **61.0** ± 1.4 | 52.0 ± 2.8 | 56.5 ± 2.1 | 2 |
| DSG (scalar attention) | 58.0 ± 0.0 | **58.0** ± 2.8 | **58.0** ± 1.4 | 2 |
| DSG (sum) | 50.0 | 40.0 | 45.0 | 1 |
| no-DSG | 42.0 ± 2.8 | 32.0 ± 2.8 | 37.0 ± 2.8 | 2 |
| Two-step | 30.0 | 20.0 | 25.0 | 1 |

Cells: mean ± sample std over n runs (seeds), percent. Some method has a single run: it has no \
interval, so bold marks the best value as printed and no significance can be given for it.
"""


def test_dsg_ablation_table_in_every_format(store, tmp_path):
    uri, parent = store
    outputs = write_report(STUDY, uri, tmp_path / "out")
    assert outputs.main_table == EXPECTED_MARKDOWN
    assert (tmp_path / "out" / "table_main.md").read_text() == EXPECTED_MARKDOWN
    assert outputs.compared is None and outputs.logged_to == parent
    tex = (tmp_path / "out" / "table_main.tex").read_text().splitlines()
    assert tex[2] == r"Method & subject IoU & object IoU & mean IoU & n \\"
    assert tex[5] == r"DSG (scalar attention) & 58.0 $\pm$ 0.0 & \textbf{58.0} $\pm$ 2.8 & " \
        r"\textbf{58.0} $\pm$ 1.4 & 2 \\"  # fmt: skip
    csv = pd.read_csv(tmp_path / "out" / "table_main.csv")
    assert csv["method"].tolist() == ["DSG", "DSG (scalar attention)", "DSG (sum)", "no-DSG",
                                      "Two-step"]  # fmt: skip
    assert csv.loc[0, "subject_iou_mean"] == pytest.approx(0.61)
    assert csv.loc[0, "subject_iou_std"] == pytest.approx(0.0141421, rel=1e-4)
    # No head/body/tail table for referring relationships; the run list names the ablation.
    assert not (tmp_path / "out" / "table_groups.md").exists()
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert set(runs["dsg_variant"]) == {"dsg", "no-dsg", "two-step"}
    index = (tmp_path / "out" / "index.md").read_text()
    assert "## Results (subject IoU, object IoU, mean IoU)" in index
    # The launch's complexity table (logged by the study driver) is rendered and logged again.
    assert f"## Complexity (DSG supplement Table 1)\n\n{COMPLEXITY}" in index
    assert (tmp_path / "out" / COMPLEXITY_ARTIFACT).read_text() == COMPLEXITY
    assert tmp_path / "out" / COMPLEXITY_ARTIFACT in outputs.files


def test_chosen_columns_and_exclusion_of_a_run_without_iou(store, tmp_path):
    uri, _ = store
    outputs = write_report(STUDY, uri, tmp_path / "out", metrics=["mean IoU"], formats=("md",),
                           log_to_mlflow=False)  # fmt: skip
    assert outputs.main_table.splitlines()[0] == "| Method | mean IoU | n |"
    finished = {"model": "dsg", "epochs": "1"}
    assert exclusion_reason("FINISHED", finished, {"loss": 1.0}) == (
        "finished without any IoU metric"
    )
    assert exclusion_reason("FINISHED", finished, {"mean_iou": 0.3, "epoch": 1.0}) is None
