"""DETR's Hungarian matcher and set losses (facebookresearch/detr ``matcher.py``, ``detr.py``).

Matching: per image, the one-to-one assignment of queries to annotated boxes that minimises
``1 · (−p(class)) + 5 · L1(cx, cy, w, h) + 2 · (−GIoU)``, solved by
``scipy.optimize.linear_sum_assignment``; unmatched queries must predict no-object.
Losses (per decoder layer, the auxiliary layers included): cross-entropy over all queries with
the no-object column weighted 0.1, and for matched queries L1 and 1 − GIoU summed and divided
by the number of annotated boxes in the batch. Weights: CE 1, L1 5, GIoU 2; every auxiliary
layer ``i`` adds the same three terms with the suffix ``_i``.

Targets are what torchvision detectors take: per image ``{"boxes": (N, 4) xyxy pixels of the
image as given, "labels": (N,) 1-based classes}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou

from sgstudy.models.detr import DetrOutput

NO_OBJECT = 0  # the class column meaning "no object"


@dataclass(frozen=True)
class MatchCosts:
    """The matcher's cost weights (DETR's defaults)."""

    class_weight: float = 1.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0


@dataclass(frozen=True)
class LossWeights:
    """DETR's loss weights and the no-object class weight of the cross-entropy."""

    ce: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    no_object: float = 0.1


def detr_loss_weights(
    decoder_layers: int, weights: LossWeights = LossWeights()
) -> dict[str, float]:
    """``{"loss_ce", "loss_bbox", "loss_giou"}`` and their copies ``_0 .. _{L-2}`` for the
    auxiliary decoder layers, each with its weight."""
    base = {"loss_ce": weights.ce, "loss_bbox": weights.l1, "loss_giou": weights.giou}
    out = dict(base)
    for layer in range(decoder_layers - 1):
        out.update({f"{name}_{layer}": value for name, value in base.items()})
    return out


def normalised_targets(
    targets: Sequence[Mapping[str, Tensor]], image_sizes: Sequence[tuple[int, int]]
) -> list[tuple[Tensor, Tensor]]:
    """Per image (labels (N,), boxes (N, 4) cx, cy, w, h relative to the image's size)."""
    out = []
    for target, (height, width) in zip(targets, image_sizes):
        boxes = target["boxes"].to(torch.float32)
        scale = boxes.new_tensor([width, height, width, height])
        out.append((target["labels"], box_convert(boxes / scale, "xyxy", "cxcywh")))
    return out


@torch.no_grad()
def hungarian_match(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[tuple[Tensor, Tensor]],
    costs: MatchCosts = MatchCosts(),
) -> list[tuple[Tensor, Tensor]]:
    """The optimal assignment per image.

    logits (B, Q, O + 1), boxes (B, Q, 4) normalised cxcywh; targets: per image (labels (N_i,),
    boxes (N_i, 4) normalised cxcywh). Returns per image (query indices, target indices), both
    (min(Q, N_i),) int64, sorted by query. The cost matrix is computed for the whole batch at
    once and cut per image, as DETR does.
    """
    batch, queries = logits.shape[:2]
    probabilities = logits.flatten(0, 1).softmax(-1)  # (B·Q, O + 1)
    predicted = boxes.flatten(0, 1).float()
    labels = torch.cat([t[0] for t in targets]).to(logits.device)
    target_boxes = torch.cat([t[1] for t in targets]).to(predicted)
    if len(labels) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return [(empty, empty) for _ in range(batch)]
    cost = (
        costs.class_weight * -probabilities[:, labels]
        + costs.l1_weight * torch.cdist(predicted, target_boxes, p=1)
        - costs.giou_weight * generalized_box_iou(_xyxy(predicted), _xyxy(target_boxes))
    )
    cost = cost.view(batch, queries, -1).cpu()
    matches, start = [], 0
    for index, (image_labels, _) in enumerate(targets):
        block = cost[index, :, start : start + len(image_labels)]
        start += len(image_labels)
        rows, cols = linear_sum_assignment(block.numpy())
        matches.append(
            (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
        )
    return matches


def _xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def set_losses(
    logits: Tensor,
    boxes: Tensor,
    targets: Sequence[tuple[Tensor, Tensor]],
    matches: Sequence[tuple[Tensor, Tensor]],
    num_boxes: float,
    no_object_weight: float,
) -> dict[str, Tensor]:
    """``loss_ce``, ``loss_bbox`` and ``loss_giou`` of one decoder layer (unweighted).

    logits (B, Q, O + 1) and boxes (B, Q, 4) of the layer; ``matches`` from ``hungarian_match``;
    ``num_boxes``: the batch's annotated boxes (at least 1), the L1 and GIoU normaliser.
    """
    classes = torch.full(logits.shape[:2], NO_OBJECT, dtype=torch.int64, device=logits.device)
    batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
    query_index = torch.cat([q for q, _ in matches])
    matched_labels = torch.cat([t[0][j] for t, (_, j) in zip(targets, matches)])
    classes[batch_index, query_index] = matched_labels.to(logits.device)
    class_weights = torch.ones(logits.shape[-1], device=logits.device)
    class_weights[NO_OBJECT] = no_object_weight
    loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=class_weights)
    predicted = boxes[batch_index, query_index]
    target_boxes = torch.cat([t[1][j] for t, (_, j) in zip(targets, matches)]).to(predicted)
    loss_bbox = F.l1_loss(predicted, target_boxes, reduction="sum") / num_boxes
    giou = torch.diag(generalized_box_iou(_xyxy(predicted), _xyxy(target_boxes)))
    loss_giou = (1 - giou).sum() / num_boxes
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}


def detr_losses(
    output: DetrOutput,
    targets: Sequence[Mapping[str, Tensor]],
    costs: MatchCosts = MatchCosts(),
    weights: LossWeights = LossWeights(),
) -> dict[str, Tensor]:
    """Unweighted loss terms of the last decoder layer and, suffixed ``_i``, of every auxiliary
    layer (each matched anew); ``detr_loss_weights`` / ``DETR.loss_weights`` say how they sum."""
    normalised = normalised_targets(targets, output.image_sizes)
    num_boxes = max(float(sum(len(labels) for labels, _ in normalised)), 1.0)
    layers = [*output.aux, (output.logits, output.boxes)]
    losses: dict[str, Tensor] = {}
    for layer, (logits, boxes) in enumerate(layers):
        matches = hungarian_match(logits, boxes, normalised, costs)
        terms = set_losses(logits, boxes, normalised, matches, num_boxes, weights.no_object)
        suffix = "" if layer == len(layers) - 1 else f"_{layer}"
        losses.update({f"{name}{suffix}": value for name, value in terms.items()})
    return losses


def weighted_total(losses: Mapping[str, Tensor], loss_weights: Mapping[str, float]) -> Tensor:
    """Σ weight · term over the terms that have a weight."""
    return sum(loss_weights[name] * value for name, value in losses.items() if name in loss_weights)
