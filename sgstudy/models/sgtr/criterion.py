"""SGTR's set losses with deep supervision (SPEC §5).

Per level, after Hungarian matching (``matcher``): sigmoid focal loss on the predicate classes
over all queries × C (α 0.25, γ 2), normalised by the number of GT relations; L1 on the
relation vectors of matched queries; indicator class CE (no-object weight 0.1) over all queries
of each role; indicator box L1 and GIoU on matched queries. Weights: 1, 1, 0.3, 0.5, 0.5; every
level but the last adds the same terms × 0.5 (``loss_aux_*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from sgstudy.models.sgtr.assembling import Entities, giou
from sgstudy.models.sgtr.matcher import QueryOutputs, TripletTargets, hungarian_match

TERM_WEIGHTS = {
    "predicate": 1.0,
    "relation_vector": 1.0,
    "indicator_class": 0.3,
    "indicator_l1": 0.5,
    "indicator_giou": 0.5,
}
AUX_FACTOR = 0.5
NO_OBJECT_WEIGHT = 0.1
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def loss_weights() -> dict[str, float]:
    """``loss_<term>`` and ``loss_aux_<term>`` -> weight."""
    weights = {f"loss_{name}": w for name, w in TERM_WEIGHTS.items()}
    weights.update({f"loss_aux_{name}": AUX_FACTOR * w for name, w in TERM_WEIGHTS.items()})
    return weights


def image_outputs(outputs: dict[str, Tensor], index: int) -> QueryOutputs:
    return QueryOutputs(**{name: value[index] for name, value in outputs.items()})


def level_losses(
    outputs: dict[str, Tensor],
    entities: list[Entities],
    targets: list[TripletTargets],
    k: int,
    shaping: bool,
) -> dict[str, Tensor]:
    """Unweighted terms of one level; ``outputs`` holds (B, Q, ·) tensors of ``SgtrHeads``."""
    logits = outputs["predicate_logits"].float()
    batch, num_queries, num_predicates = logits.shape
    predicate_target = torch.zeros_like(logits)
    subject_classes = logits.new_zeros(batch, num_queries, dtype=torch.long)
    object_classes = torch.zeros_like(subject_classes)
    matched_sum = {"relation_vector": logits.sum() * 0.0, "indicator_l1": logits.sum() * 0.0}
    matched_sum["indicator_giou"] = logits.sum() * 0.0
    num_relations = 0
    for i, (image_entities, target) in enumerate(zip(entities, targets)):
        per_image = image_outputs(outputs, i)
        queries, gts = hungarian_match(per_image, image_entities, target, k, shaping)
        num_relations += len(target.predicates)
        predicate_target[i, queries, target.predicates[gts] - 1] = 1.0
        subject_classes[i, queries] = target.subject_labels[gts]
        object_classes[i, queries] = target.object_labels[gts]
        matched_sum["relation_vector"] += F.l1_loss(
            per_image.relation_vectors[queries].float(),
            target.relation_vectors[gts],
            reduction="sum",
        )
        for role in ("subject", "object"):
            predicted = getattr(per_image, f"{role}_boxes")[queries].float()
            wanted = getattr(target, f"{role}_boxes")[gts]
            matched_sum["indicator_l1"] += F.l1_loss(predicted, wanted, reduction="sum")
            matched_sum["indicator_giou"] += (1.0 - giou(predicted, wanted).diagonal()).sum()
    normaliser = max(num_relations, 1)
    class_weight = logits.new_ones(outputs["subject_logits"].shape[-1])
    class_weight[0] = NO_OBJECT_WEIGHT
    indicator_class = sum(
        F.cross_entropy(
            outputs[f"{role}_logits"].float().flatten(0, 1), classes.flatten(), weight=class_weight
        )
        for role, classes in (("subject", subject_classes), ("object", object_classes))
    )
    focal = sigmoid_focal_loss(
        logits, predicate_target, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="sum"
    )
    return {
        "predicate": focal / normaliser,
        "indicator_class": indicator_class,
        **{name: value / normaliser for name, value in matched_sum.items()},
    }


def deep_supervision_losses(
    levels: list[dict[str, Tensor]],
    entities: list[Entities],
    targets: list[TripletTargets],
    k: int,
    shaping: bool,
) -> dict[str, Tensor]:
    """``loss_<term>`` of the last level and ``loss_aux_<term>`` summed over the others (every
    level matched on its own)."""
    losses = {
        f"loss_{name}": value
        for name, value in level_losses(levels[-1], entities, targets, k, shaping).items()
    }
    auxiliary = [level_losses(level, entities, targets, k, shaping) for level in levels[:-1]]
    for name in TERM_WEIGHTS:
        if auxiliary:
            losses[f"loss_aux_{name}"] = sum(terms[name] for terms in auxiliary)
    return losses
