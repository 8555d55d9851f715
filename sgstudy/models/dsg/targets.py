"""Training labels of DSG's boxes (public code ``proposal_target_layer``, SPEC §6).

A box stands for the annotated box it overlaps most when that IoU is >= 0.5, is background
below 0.3, and is ignored (label -1) in between. For a query, an annotated box is the subject,
the object, or "other" (annotated but not in this query); a box that is subject of one matching
relation and object of another is labelled subject. Entity and relation labels are the partial
scene graph: only boxes (and pairs of boxes) that stand for annotations, or are clearly
background, are supervised.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

from sgstudy.evaluation.referring_eval import ROLES
from sgstudy.models.motifs.sampling import relation_matrix
from sgstudy.structures import ReferringTarget

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.3
IGNORE = -1
# Roles of a box for a query, the columns of ReferringPrediction.role_scores.
BACKGROUND, SUBJECT, OBJECT, OTHER = (
    ROLES.index(r) for r in ("background", "subject", "object", "other")
)
NUM_ROLES = len(ROLES)
# torchvision's bound on exp(dw), exp(dh) for a stable decoding.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def match_boxes(boxes: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """boxes (n, 4), annotated (N, 4) -> matched annotation (n,) or -1, and (n,) background."""
    if len(gt_boxes) == 0 or len(boxes) == 0:
        return boxes.new_full((len(boxes),), -1, dtype=torch.long), boxes.new_ones(
            len(boxes), dtype=torch.bool
        )
    best_iou, best = box_iou(boxes, gt_boxes).max(dim=1)
    matched = torch.where(best_iou >= FOREGROUND_IOU, best, torch.full_like(best, -1))
    return matched, best_iou < BACKGROUND_IOU


def role_labels(matched: Tensor, background: Tensor, target: ReferringTarget) -> Tensor:
    """(n,) role of each box for the target's query: BACKGROUND, SUBJECT, OBJECT, OTHER, IGNORE."""
    gt_roles = torch.full((len(target.boxes),), OTHER, dtype=torch.long, device=matched.device)
    gt_roles[target.object_indices] = OBJECT
    gt_roles[target.subject_indices] = SUBJECT
    return _labels_of(matched, background, gt_roles)


def entity_labels(matched: Tensor, background: Tensor, labels: Tensor) -> Tensor:
    """(n,) annotated class of each box, 0 for background, IGNORE in between."""
    return _labels_of(matched, background, labels)


def relation_labels(matched: Tensor, relations: Tensor, num_annotated: int) -> Tensor:
    """(n, n) predicate of each ordered pair of boxes that both stand for annotations (0: none
    annotated); IGNORE for the other pairs and the diagonal."""
    matrix = relation_matrix(relations, num_annotated)
    safe = matched.clamp(min=0)
    labels = matrix[safe[:, None], safe[None, :]]
    known = (matched[:, None] >= 0) & (matched[None, :] >= 0)
    known &= ~torch.eye(len(matched), dtype=torch.bool, device=matched.device)
    return torch.where(known, labels, torch.full_like(labels, IGNORE))


def _labels_of(matched: Tensor, background: Tensor, gt_labels: Tensor) -> Tensor:
    foreground = gt_labels[matched.clamp(min=0)] if len(gt_labels) else torch.zeros_like(matched)
    ignored = torch.full_like(matched, IGNORE)
    return torch.where(matched >= 0, foreground, torch.where(background, 0, ignored))


# ---------------------------------------------------------------- box refinement
def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * width, boxes[:, 1] + 0.5 * height, width, height


def refine_boxes(boxes: Tensor, deltas: Tensor) -> Tensor:
    """Supplement §1: box [x, y, w, h] (centre, size) and deltas [dx, dy, dw, dh] ->
    [dx w + x, dy h + y, e^dw w, e^dh h], returned as xyxy. boxes, deltas (n, 4)."""
    x, y, w, h = _centre_size(boxes)
    dx, dy = deltas[:, 0], deltas[:, 1]
    dw, dh = deltas[:, 2].clamp(max=MAX_LOG_SCALE), deltas[:, 3].clamp(max=MAX_LOG_SCALE)
    cx, cy, rw, rh = dx * w + x, dy * h + y, dw.exp() * w, dh.exp() * h
    return torch.stack([cx - 0.5 * rw, cy - 0.5 * rh, cx + 0.5 * rw, cy + 0.5 * rh], dim=1)


def refinement_targets(boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """The deltas that ``refine_boxes`` turns ``boxes`` (n, 4) into ``gt_boxes`` (n, 4) with."""
    x, y, w, h = _centre_size(boxes)
    gx, gy, gw, gh = _centre_size(gt_boxes)
    return torch.stack([(gx - x) / w, (gy - y) / h, (gw / w).log(), (gh / h).log()], dim=1)
