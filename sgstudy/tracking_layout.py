"""How a study is laid out in MLflow: the names the tracking layer writes and the reports read.

- One MLflow experiment per study, named after the study (``align-motifs-p``).
- One parent run per launch of the study: tag ``ROLE_TAG = "study"``.
- One child run per trial: tag ``ROLE_TAG = "trial"`` and ``mlflow.parentRunId``; params are
  ``RunConfig.to_params()`` (``model``, ``protocol``, ``align``, ``mask_ratio``, ``align_weight``,
  ``seed``, ...) plus the provenance params below; metrics per epoch (``step`` = epoch, 1-based)
  with the names of ``sgstudy.metric_names``; the per-predicate recall artifact at
  ``PER_PREDICATE_ARTIFACT`` (schema in ``sgstudy.evaluation.sgg_eval.per_predicate_artifact``).

Imports nothing heavy: the reports layer reads it without torch.
"""

ROLE_TAG = "sgstudy.role"
STUDY_TAG = "sgstudy.study"
TRIAL_ID_TAG = "sgstudy.trial_id"
NODE_ID_TAG = "sgstudy.node_id"
PARENT_TAG = "mlflow.parentRunId"
# The worker process a trial ran in and how many trials it had started before (0: a fresh
# process; more: Tune reused the process, see ``trainables.study``), and the wall-clock time
# (Unix seconds) the trial's function was entered.
WORKER_PID_TAG = "sgstudy.worker_pid"
WORKER_TRIAL_TAG = "sgstudy.worker_trial"
TRIAL_ENTERED_TAG = "sgstudy.trial_entered_at"
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"

# Provenance params logged with every trial besides the run config.
GIT_COMMIT_PARAM = "git_commit"
DATASET_FINGERPRINT_PARAM = "dataset_fingerprint"
VERSION_PARAM = "sgstudy_version"
STUDY_PARAM = "study"

PER_PREDICATE_ARTIFACT = "per_predicate_recall.json"
# The referring-relationship task's counterpart: mean subject / object IoU per query predicate
# (schema in ``sgstudy.evaluation.referring_eval.per_predicate_iou_artifact``).
PER_PREDICATE_IOU_ARTIFACT = "per_predicate_iou.json"
RESOLVED_CONFIG_ARTIFACT = "config.json"
# A referring-relationship study's parent run holds the DSG supplement's Table 1 as measured
# (``sgstudy complexity``); the report renders it.
COMPLEXITY_ARTIFACT = "complexity.md"
# Where the report command logs its outputs inside the study's parent run.
REPORT_ARTIFACT_DIR = "report"


def default_tracking_uri() -> str:
    """A SQLite store in the working directory (MLflow >= 3.13 refuses the old file store)."""
    from pathlib import Path

    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
