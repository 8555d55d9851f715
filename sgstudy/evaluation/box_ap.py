"""Box mean average precision at IoU 0.5, the detector's validation metric.

PASCAL VOC's procedure: per class, every detection of every image is ranked by score; in that
order a detection is a true positive when it overlaps a not yet matched annotation of its class
in its image by IoU >= 0.5 (the annotation then counts as matched), else a false positive.
AP is the area under the precision-recall curve after making precision monotone (the
"all-point" interpolation of VOC 2010+). mAP is the mean over the classes that have annotations
in the evaluated images; a class never annotated there is left out.

Choices: IoU uses continuous pixel coordinates (no +1), as torchvision does; a tie in score keeps
the order in which detections were given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from sgstudy.structures import SceneGraphTarget

MATCH_IOU = 0.5


def average_precision(true_positive: Tensor, num_annotations: int) -> float:
    """All-point interpolated AP of detections already ranked by score.

    true_positive: (D,) bool, whether each ranked detection matched; num_annotations > 0.
    """
    if true_positive.numel() == 0:
        return 0.0
    hits = true_positive.double().cumsum(0)
    precision = hits / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    recall = hits / num_annotations
    # Monotone envelope: the best precision at this recall or any higher one.
    envelope = precision.flip(0).cummax(0).values.flip(0)
    recall_steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((recall_steps * envelope).sum())


def match_image(
    boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor
) -> Tensor:
    """Greedy matching in one image: (D,) bool, True for detections that are true positives.

    Detections are visited by descending score; each takes the unmatched annotation of its
    class with the highest IoU, if that IoU is >= 0.5.
    """
    matched = torch.zeros(len(boxes), dtype=torch.bool)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return matched
    iou = box_iou(boxes.double(), gt_boxes.double())
    iou[labels[:, None] != gt_labels[None, :]] = -1.0  # other classes never match
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for detection in torch.argsort(scores, descending=True, stable=True).tolist():
        candidates = iou[detection].masked_fill(taken, -1.0)
        best_iou, best = candidates.max(dim=0)
        if best_iou >= MATCH_IOU:
            matched[detection] = True
            taken[best] = True
    return matched


def box_map_at_50(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[SceneGraphTarget],
    num_classes: int,
) -> float:
    """mAP@0.5 over images.

    predictions: per image {"boxes": (D, 4) xyxy pixels, "labels": (D,) int64, "scores": (D,)}
    (torchvision's detection output); targets: the images' annotations; num_classes: object
    classes including background (index 0, never evaluated). Returns a value in [0, 1]; 0.0
    when no image has an annotation.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    if not targets:
        return 0.0
    true_positive, scores, labels = [], [], []
    for prediction, target in zip(predictions, targets):
        p = {k: prediction[k].detach().cpu() for k in ("boxes", "labels", "scores")}
        true_positive.append(
            match_image(
                p["boxes"], p["scores"], p["labels"], target.boxes.cpu(), target.labels.cpu()
            )
        )
        scores.append(p["scores"].double())
        labels.append(p["labels"])
    true_positive, scores, labels = torch.cat(true_positive), torch.cat(scores), torch.cat(labels)
    annotations = torch.bincount(
        torch.cat([t.labels.cpu() for t in targets]), minlength=num_classes
    )
    per_class = []
    for cls in range(1, num_classes):
        if annotations[cls] == 0:
            continue
        mine = labels == cls
        ranked = torch.argsort(scores[mine], descending=True, stable=True)
        per_class.append(average_precision(true_positive[mine][ranked], int(annotations[cls])))
    return sum(per_class) / len(per_class) if per_class else 0.0
