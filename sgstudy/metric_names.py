"""Metric names, defined once: Tune's ``metric=``, MLflow keys and report columns.

MLflow rejects ``@`` in metric names, so keys are stored as ``mR_50`` and
rendered as ``mR@50``. This module imports nothing heavy: reports use it
without torch.
"""

from __future__ import annotations

RECALL_KS: tuple[int, ...] = (20, 50, 100)

# Families of recall metrics, each reported at every K in RECALL_KS.
#   R     recall with graph constraint          mR     mean recall over predicates
#   ng_R  recall without graph constraint       ng_mR  mean recall, no graph constraint
#   zR    zero-shot recall (unseen triplets)    ng_zR  zero-shot recall, no graph constraint
RECALL_FAMILIES: tuple[str, ...] = ("R", "mR", "ng_R", "ng_mR", "zR", "ng_zR")

# Predicate groups by training frequency; group metric = mean of per-predicate recalls.
PREDICATE_GROUPS: tuple[str, ...] = ("head", "body", "tail")

# DSG's unweighted terms, every variant's (sgstudy.models.dsg.model.LOSS_WEIGHTS): the RPN's,
# the box refinement, the referring-relationship classifier on z'_i and on the raw features,
# and the partial scene-graph supervision on the boxes and on the annotated boxes.
DSG_LOSS_TERMS: tuple[str, ...] = (
    "loss_rpn_objectness", "loss_rpn_box", "loss_box", "loss_rrc", "loss_rrc_raw",
    "loss_entity", "loss_relation", "loss_entity_gt", "loss_relation_gt",
)  # fmt: skip
# SGTR's unweighted terms (sgstudy.models.sgtr.criterion.loss_weights): the last level's and
# the earlier levels' (``loss_aux_``) predicate, relation-vector and indicator terms.
SGTR_LOSS_TERMS: tuple[str, ...] = tuple(
    f"loss_{level}{term}"
    for level in ("", "aux_")
    for term in (
        "predicate", "relation_vector", "indicator_class", "indicator_l1", "indicator_giou",
    )
)  # fmt: skip
LOSS_TERMS: tuple[str, ...] = (
    "loss_rel", "loss_obj", "loss_align", *SGTR_LOSS_TERMS, *DSG_LOSS_TERMS,
)  # fmt: skip
TOTAL_LOSS = "loss"

# Collapse and balance diagnostics, per epoch (sgstudy.models.diagnostics):
#   pair_rank         effective rank of the pair representation on val
#   align_grad_ratio  ‖∇ λ·loss_align‖ / ‖∇ supervised losses‖ on the shared encoder, mean over
#                     a few sampled training steps (only runs with alignment)
PAIR_RANK = "pair_rank"
ALIGN_GRAD_RATIO = "align_grad_ratio"
DIAGNOSTICS: tuple[str, ...] = (PAIR_RANK, ALIGN_GRAD_RATIO)

# A trial's fixed cost, measured inside it (``trainables.trial``), logged at step 0: its
# function's entry to the start of its first epoch, and its last epoch's end to its run's end.
TRIAL_SETUP_S = "trial_setup_s"
TRIAL_TEARDOWN_S = "trial_teardown_s"

# The metric a study optimises and the reports sort by.
PRIMARY_METRIC = "mR_50"

# Convergence, as the reports judge it: a run's selection metric at its last epoch minus its
# value CONVERGENCE_EPOCHS epochs before (report column LAST_CHANGE, a fraction); a run whose
# change is below CONVERGED_BELOW in size (1 point) counts as converged.
CONVERGENCE_EPOCHS = 2
CONVERGED_BELOW = 0.01
LAST_CHANGE = "last_change"

# Referring relationships (DSG's ``iou_test``): mean over queries of the IoU between the
# predicted and the GT subject (object) region on a 14 x 14 grid, and the mean of the two,
# on which DSG selects its model.
SUBJECT_IOU = "subject_iou"
OBJECT_IOU = "object_iou"
MEAN_IOU = "mean_iou"
REFERRING_METRICS: tuple[str, ...] = (SUBJECT_IOU, OBJECT_IOU, MEAN_IOU)
REFERRING_PRIMARY_METRIC = MEAN_IOU
_REFERRING_DISPLAY = {SUBJECT_IOU: "subject IoU", OBJECT_IOU: "object IoU", MEAN_IOU: "mean IoU"}


def recall_key(family: str, k: int) -> str:
    """``recall_key("mR", 50) == "mR_50"``."""
    if family not in RECALL_FAMILIES:
        raise ValueError(f"unknown recall family {family!r}; expected one of {RECALL_FAMILIES}")
    return f"{family}_{k}"


def group_key(group: str, k: int) -> str:
    """Mean recall over one predicate group: ``group_key("tail", 100) == "tail_mR_100"``."""
    if group not in PREDICATE_GROUPS:
        raise ValueError(f"unknown predicate group {group!r}; expected one of {PREDICATE_GROUPS}")
    return f"{group}_mR_{k}"


def all_recall_keys() -> list[str]:
    return [recall_key(f, k) for f in RECALL_FAMILIES for k in RECALL_KS]


def all_group_keys() -> list[str]:
    return [group_key(g, k) for g in PREDICATE_GROUPS for k in RECALL_KS]


def display_name(key: str) -> str:
    """Render a stored key for people: ``mR_50`` -> ``mR@50``, ``ng_mR_100`` -> ``ng-mR@100``,
    ``tail_mR_100`` -> ``tail mR@100``, ``subject_iou`` -> ``subject IoU``. Other keys are
    returned as is."""
    if key in _REFERRING_DISPLAY:
        return _REFERRING_DISPLAY[key]
    stem, sep, k = key.rpartition("_")
    if not sep or not k.isdigit():
        return key
    for group in PREDICATE_GROUPS:
        if stem == f"{group}_mR":
            return f"{group} mR@{k}"
    if stem in RECALL_FAMILIES:
        return f"{stem.replace('ng_', 'ng-')}@{k}"
    return key


def stored_name(name: str) -> str:
    """Inverse of ``display_name``: accepts ``mR@50`` or ``mR_50`` and returns ``mR_50``."""
    for key, shown in _REFERRING_DISPLAY.items():
        if name == shown:
            return key
    for group in PREDICATE_GROUPS:
        if name.startswith(f"{group} "):
            name = f"{group}_" + name[len(group) + 1 :]
    return name.replace("ng-", "ng_").replace("@", "_")
