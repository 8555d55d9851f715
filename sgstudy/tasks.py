"""The two tasks sgstudy trains for, and which model family does which.

Scene-graph generation (Motifs, SGTR) reads VG150-format data, is scored by the
Scene-Graph-Benchmark recalls and selected on mR@50. Referring relationships (DSG) read the
public referring-relationship format, are scored by DSG's ``iou_test`` and selected on the
mean of subject and object IoU. Everything else (the session, the trainable, the study
driver, MLflow, the reports) is shared; the places that used to assume mR@50 ask the task.

Imports nothing heavy: the study driver and the reports read it without torch. The torch
side of a task (its dataset, statistics and evaluator) is ``sgstudy.training.PIPELINES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgstudy import metric_names
from sgstudy.tracking_layout import PER_PREDICATE_ARTIFACT, PER_PREDICATE_IOU_ARTIFACT

SCENE_GRAPH = "scene-graph"
REFERRING = "referring"
# Dataset layouts, as ``sgstudy data check`` recognises them.
VG150_FORMAT = "VG150"
REFERRING_FORMAT = "referring-relationship"


@dataclass(frozen=True)
class Task:
    """name:           ``SCENE_GRAPH`` or ``REFERRING``
    primary_metric: what a study optimises and a report sorts by (stored name)
    table_metrics:  the columns of the study driver's summary table and the report's table
    progress_metrics: what ``sgstudy train`` prints after every epoch
    artifact:       the per-epoch JSON artifact of a trial's MLflow run
    data_format:    the dataset layout the task reads
    """

    name: str
    primary_metric: str
    table_metrics: tuple[str, ...]
    progress_metrics: tuple[str, ...]
    artifact: str
    data_format: str


TASKS: dict[str, Task] = {
    SCENE_GRAPH: Task(
        SCENE_GRAPH,
        metric_names.PRIMARY_METRIC,
        ("mR_50", "mR_100", "R_50", "R_100"),
        ("R_50", "mR_50"),
        PER_PREDICATE_ARTIFACT,
        VG150_FORMAT,
    ),
    REFERRING: Task(
        REFERRING,
        metric_names.REFERRING_PRIMARY_METRIC,
        metric_names.REFERRING_METRICS,
        metric_names.REFERRING_METRICS,
        PER_PREDICATE_IOU_ARTIFACT,
        REFERRING_FORMAT,
    ),
}
# Model families of a task other than scene-graph generation.
TASK_OF_MODEL = {"dsg": REFERRING}


def task_of(model: str) -> Task:
    """The task of the model family ``model`` (a ``sgstudy.config.MODELS`` name)."""
    return TASKS[TASK_OF_MODEL.get(model, SCENE_GRAPH)]


# How DSG's configurations read in tables (the study driver's and the reports').
DSG_VARIANT_LABELS = {"dsg": "DSG", "no-dsg": "no-DSG", "two-step": "Two-step"}
GPI_LABELS = {"feature-attention": "feature attention", "scalar-attention": "scalar attention",
              "sum": "sum"}  # fmt: skip
DSG_DEFAULT_GPI = "feature-attention"


def dsg_label(variant: str, gpi_aggregation: str) -> str:
    """``DSG``, ``DSG (sum)``, ``no-DSG``, ``Two-step (scalar attention)``: the GPI aggregation
    is named when it is not DSG's feature attention, and never for no-DSG (it has no GPI)."""
    label = DSG_VARIANT_LABELS.get(variant, variant)
    if variant != "no-dsg" and gpi_aggregation != DSG_DEFAULT_GPI:
        label += f" ({GPI_LABELS.get(gpi_aggregation, gpi_aggregation)})"
    return label


def dsg_rank(variant: str, gpi_aggregation: str) -> tuple[int, int]:
    """Table order: DSG's GPI variants first, then no-DSG, then Two-step."""
    variants, aggregations = list(DSG_VARIANT_LABELS), list(GPI_LABELS)
    return (
        variants.index(variant) if variant in variants else len(variants),
        aggregations.index(gpi_aggregation)
        if gpi_aggregation in aggregations
        else len(aggregations),
    )
