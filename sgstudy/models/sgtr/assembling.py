"""SGTR's rule-based graph assembling (SPEC §5): predicate queries meet detected entities.

For predicate query q and entity e, the subject score is

    cos(p_sub(q), p_ent(e))^0.6 · max(GIoU(b_sub(q), b_ent(e)), 0) · s_ent(e)^0.6
        · 1 / (|Δx| + |Δy| + 1)

with p the class distributions over the foreground classes, s_ent the entity's best
foreground probability and Δ the relation vector's subject centre minus the entity centre, in
pixels; the object score likewise. Each role keeps its top-k entities independently and the
k-th subject is paired with the k-th object. The same scores serve the training matcher.

All functions work on one image; boxes are (cx, cy, w, h) normalised to the image's extent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou
from torchvision.ops.boxes import box_convert

from sgstudy.models.sgtr.settings import (
    DUPLICATE_IOU,
    OUTPUT_CAP,
    PRE_DEDUP_CAP,
    SCORE_EXPONENT,
    SELF_PAIR_GIOU,
)
from sgstudy.structures import SceneGraphPrediction


@dataclass
class Entities:
    """The frozen detector's entities of one image.

    probs:  (E, O + 1) class distribution, column 0 no-object
    boxes:  (E, 4) cxcywh normalised
    size:   (height, width) in pixels
    """

    probs: Tensor
    boxes: Tensor
    size: tuple[int, int]

    @property
    def scores(self) -> Tensor:
        """(E,) best foreground probability."""
        return self.probs[:, 1:].max(dim=1).values

    @property
    def labels(self) -> Tensor:
        """(E,) 1-based best foreground class."""
        return self.probs[:, 1:].argmax(dim=1) + 1

    def pixel_boxes(self) -> Tensor:
        """(E, 4) xyxy in pixels."""
        return to_pixels(self.boxes, self.size)


def to_pixels(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, 4) normalised cxcywh -> xyxy pixels of an image of ``size`` (h, w)."""
    height, width = size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes, "cxcywh", "xyxy") * scale


def to_normalised(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, 4) xyxy pixels -> cxcywh normalised."""
    height, width = size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes / scale, "xyxy", "cxcywh")


def giou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU of normalised cxcywh boxes (N, 4) x (M, 4) -> (N, M)."""
    return generalized_box_iou(box_convert(a, "cxcywh", "xyxy"), box_convert(b, "cxcywh", "xyxy"))


def role_scores(
    class_logits: Tensor,
    boxes: Tensor,
    centres: Tensor,
    entities: Entities,
    shaping: bool = True,
) -> Tensor:
    """Assembling score of every (query, entity) for one role.

    class_logits (Q, O + 1) and boxes (Q, 4) of the role's indicator, centres (Q, 2) the role's
    half of the relation vector -> (Q, E). ``shaping`` applies the 0.6 exponents.
    """
    exponent = SCORE_EXPONENT if shaping else 1.0
    query_probs = class_logits.float().softmax(dim=1)[:, 1:]
    similarity = F.normalize(query_probs, dim=1) @ F.normalize(entities.probs[:, 1:], dim=1).T
    overlap = giou(boxes.float(), entities.boxes).clamp(min=0.0)
    height, width = entities.size
    delta = (centres.float()[:, None, :] - entities.boxes[None, :, :2]).abs()  # (Q, E, 2)
    distance = delta[..., 0] * width + delta[..., 1] * height
    confidence = entities.scores.clamp(min=0.0) ** exponent
    return similarity.clamp(min=0.0) ** exponent * overlap * confidence[None, :] / (distance + 1.0)


@dataclass
class AssembledPairs:
    """The top-k entity pairs of every query: the k-th subject with the k-th object.

    subjects, objects: (Q, k) entity indices; subject_scores, object_scores: (Q, k)
    """

    subjects: Tensor
    objects: Tensor
    subject_scores: Tensor
    object_scores: Tensor


def assemble_pairs(subject_scores: Tensor, object_scores: Tensor, k: int) -> AssembledPairs:
    """Top-k entities per role, independently; (Q, E) scores each -> ``AssembledPairs``."""
    k = min(k, subject_scores.shape[1])
    sub_scores, subjects = subject_scores.topk(k, dim=1)
    obj_scores, objects = object_scores.topk(k, dim=1)
    return AssembledPairs(subjects, objects, sub_scores, obj_scores)


def scene_graph(
    predicate_probs: Tensor,
    pairs: AssembledPairs,
    entities: Entities,
    duplicate_filter: bool = True,
    output_caps: bool = True,
) -> SceneGraphPrediction:
    """Test-time triplets of one image as a ``SceneGraphPrediction``.

    predicate_probs (Q, C): sigmoid predicate scores. Every (query, k) candidate becomes one
    row: pair (subject, object) and predicate scores p_pred(q, ·) · s_sub · s_obj in columns
    1..C (column 0, background, is 0). Entity label scores are 1, so the evaluator's triplet
    score is exactly SGTR's. Self-pairs and pairs whose boxes have GIoU >= 0.95 are dropped; the
    top 4,096 rows by best triplet score are kept, a row is dropped when a higher-scored one has
    the same predicate and the same entities (or both boxes at IoU > 0.8 with the same labels),
    and the top 300 remain (the caps and the filter follow the switches).
    """
    k = pairs.subjects.shape[1]
    subjects, objects = pairs.subjects.reshape(-1), pairs.objects.reshape(-1)
    pair_score = (pairs.subject_scores * pairs.object_scores).reshape(-1, 1)
    rows = predicate_probs.float().repeat_interleave(k, dim=0) * pair_score  # (Q k, C)
    boxes = entities.pixel_boxes()
    pair_giou = giou(entities.boxes, entities.boxes)[subjects, objects]
    keep = (subjects != objects) & (pair_giou < SELF_PAIR_GIOU)
    subjects, objects, rows = subjects[keep], objects[keep], rows[keep]
    best, predicates = rows.max(dim=1)
    order = best.argsort(descending=True, stable=True)
    if output_caps:
        order = order[:PRE_DEDUP_CAP]
    subjects, objects, rows, predicates = (
        subjects[order],
        objects[order],
        rows[order],
        predicates[order],
    )
    if duplicate_filter:
        unique = ~duplicates(subjects, objects, predicates, boxes, entities.labels)
        subjects, objects, rows = subjects[unique], objects[unique], rows[unique]
    if output_caps:
        subjects, objects, rows = subjects[:OUTPUT_CAP], objects[:OUTPUT_CAP], rows[:OUTPUT_CAP]
    return SceneGraphPrediction(
        boxes=boxes,
        labels=entities.labels,
        label_scores=torch.ones(len(boxes), device=boxes.device),
        pairs=torch.stack((subjects, objects), dim=1),
        predicate_scores=torch.cat((rows.new_zeros(len(rows), 1), rows), dim=1),
    )


def duplicates(
    subjects: Tensor, objects: Tensor, predicates: Tensor, boxes: Tensor, labels: Tensor
) -> Tensor:
    """(T,) True where a row earlier in the (score-sorted) list has the same predicate and the
    same entities, or boxes at IoU > 0.8 for both roles with the same labels."""
    if len(subjects) == 0:
        return torch.zeros(0, dtype=torch.bool, device=subjects.device)
    overlap = box_iou(boxes, boxes) > DUPLICATE_IOU
    same_label = labels[:, None] == labels[None, :]
    alike = (overlap & same_label) | torch.eye(len(boxes), dtype=torch.bool, device=boxes.device)
    same = (
        (predicates[:, None] == predicates[None, :])
        & alike[subjects][:, subjects]
        & alike[objects][:, objects]
    )
    earlier = torch.ones_like(same).triu(diagonal=1)  # [j, i] True for j < i
    return (same & earlier).any(dim=0)
