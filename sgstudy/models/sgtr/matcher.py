"""Hungarian matching of SGTR's predicate queries to GT triplets (SPEC §5).

Each query is first assembled with its top-k entity pairs (``assembling``; k = 25 with
``candidate_expansion``, else 1). The cost of (query q, candidate pair k, GT triplet t) is

    0.6 · L1(relation vector) + 1.0 · 32^(−p_rel(q, c_t))
    + 0.5 · 32^(−(p_ent(sub)[c_s] + p_ent(obj)[c_o])) + 0.6 · mean L1 of the two boxes
    + 1.0 · 32^(−(GIoU⁺_s + GIoU⁺_o)) + 0.01 · (1 − mean assembling score)

(without ``score_shaping``, 32^(−x) becomes −x). The authors' code is not followed for how a
query's k candidates share one query; our reading: a query's cost for a GT is its best
candidate's, min over k, so that ``scipy.optimize.linear_sum_assignment`` gives every GT one
query and every query at most one GT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sgstudy.models.sgtr.assembling import (
    Entities,
    assemble_pairs,
    giou,
    role_scores,
    to_normalised,
)
from sgstudy.models.sgtr.settings import COST_BASE
from sgstudy.structures import SceneGraphTarget

COST_WEIGHTS = {
    "relation_vector": 0.6,
    "predicate": 1.0,
    "entity_class": 0.5,
    "entity_l1": 0.6,
    "entity_giou": 1.0,
    "assembling": 0.01,
}


@dataclass
class QueryOutputs:
    """One image's outputs of one decoder level.

    predicate_logits (Q, C); relation_vectors (Q, 4) sigmoid (sub cx, cy, obj cx, cy);
    subject_logits, object_logits (Q, O + 1); subject_boxes, object_boxes (Q, 4) cxcywh.
    """

    predicate_logits: Tensor
    relation_vectors: Tensor
    subject_logits: Tensor
    object_logits: Tensor
    subject_boxes: Tensor
    object_boxes: Tensor


@dataclass
class TripletTargets:
    """One image's GT triplets in the model's frame: predicates (T,) 1-based, subject_labels,
    object_labels (T,), subject_boxes, object_boxes (T, 4) cxcywh normalised, relation_vectors
    (T, 4) the two box centres."""

    predicates: Tensor
    subject_labels: Tensor
    object_labels: Tensor
    subject_boxes: Tensor
    object_boxes: Tensor

    @property
    def relation_vectors(self) -> Tensor:
        return torch.cat((self.subject_boxes[:, :2], self.object_boxes[:, :2]), dim=1)

    @staticmethod
    def from_target(target: SceneGraphTarget) -> TripletTargets:
        relations = target.relations.reshape(-1, 3)
        boxes = to_normalised(target.boxes.float(), target.image_size)
        subjects, objects = relations[:, 0], relations[:, 1]
        return TripletTargets(
            predicates=relations[:, 2],
            subject_labels=target.labels[subjects],
            object_labels=target.labels[objects],
            subject_boxes=boxes[subjects],
            object_boxes=boxes[objects],
        )


def shaped(probability: Tensor, shaping: bool) -> Tensor:
    """32^(−x) with ``shaping``, else −x: a cost that falls as the probability-like x rises."""
    return COST_BASE ** (-probability) if shaping else -probability


def match_cost(
    outputs: QueryOutputs,
    entities: Entities,
    targets: TripletTargets,
    k: int,
    shaping: bool = True,
) -> Tensor:
    """(Q, T) cost of every query for every GT triplet, the min over its k candidate pairs."""
    subject_scores = role_scores(
        outputs.subject_logits, outputs.subject_boxes, outputs.relation_vectors[:, :2],
        entities, shaping,
    )  # fmt: skip
    object_scores = role_scores(
        outputs.object_logits, outputs.object_boxes, outputs.relation_vectors[:, 2:],
        entities, shaping,
    )  # fmt: skip
    pairs = assemble_pairs(subject_scores, object_scores, k)  # (Q, k)
    w = COST_WEIGHTS
    relation = torch.cdist(outputs.relation_vectors.float(), targets.relation_vectors, p=1)
    predicate_probs = outputs.predicate_logits.float().sigmoid()[:, targets.predicates - 1]
    query_cost = w["relation_vector"] * relation + w["predicate"] * shaped(predicate_probs, shaping)
    # Per candidate entity (Q k) against every GT role.
    sub, obj = pairs.subjects.reshape(-1), pairs.objects.reshape(-1)
    class_prob = (
        entities.probs[sub][:, targets.subject_labels]
        + entities.probs[obj][:, targets.object_labels]
    )
    box_l1 = 0.5 * (
        torch.cdist(entities.boxes[sub], targets.subject_boxes, p=1)
        + torch.cdist(entities.boxes[obj], targets.object_boxes, p=1)
    )
    overlap = giou(entities.boxes[sub], targets.subject_boxes).clamp(min=0.0) + giou(
        entities.boxes[obj], targets.object_boxes
    ).clamp(min=0.0)
    assembling = 0.5 * (pairs.subject_scores + pairs.object_scores).reshape(-1, 1)
    pair_cost = (
        w["entity_class"] * shaped(class_prob, shaping)
        + w["entity_l1"] * box_l1
        + w["entity_giou"] * shaped(overlap, shaping)
        + w["assembling"] * (1.0 - assembling)
    )  # (Q k, T)
    num_queries = outputs.predicate_logits.shape[0]
    pair_cost = pair_cost.view(num_queries, -1, pair_cost.shape[1]).min(dim=1).values
    return query_cost + pair_cost


@torch.no_grad()
def hungarian_match(
    outputs: QueryOutputs, entities: Entities, targets: TripletTargets, k: int, shaping: bool = True
) -> tuple[Tensor, Tensor]:
    """(query indices, GT indices), each (min(Q, T),) int64, of the optimal assignment."""
    if len(targets.predicates) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=outputs.predicate_logits.device)
        return empty, empty
    cost = match_cost(outputs, entities, targets, k, shaping)
    queries, gts = linear_sum_assignment(cost.cpu().numpy())
    device = outputs.predicate_logits.device
    return torch.as_tensor(queries, device=device), torch.as_tensor(gts, device=device)
