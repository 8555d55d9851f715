"""Which object pairs a relation model is trained and tested on.

Training (Zellers et al.; KT ``relation_sampling.py``): every annotated pair (up to 256 per
image) plus background pairs, pairs without a relation, up to 1,024 pairs in all. Sampling draws
from torch's global generator, so it is reproducible given its state.
Testing: every ordered pair i != j.

In SGDet the boxes are detections, not annotations: a detection stands for the annotated box
it overlaps most if that IoU is >= 0.5, and a detected pair carries the predicate of the pair of
annotated boxes it stands for.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

MAX_FOREGROUND_PAIRS = 256
MAX_PAIRS = 1024
MATCH_IOU = 0.5


def all_ordered_pairs(num_objects: int, device: torch.device | str = "cpu") -> Tensor:
    """(N (N - 1), 2) int64 rows (subject, object), every i != j, subject-major order."""
    index = torch.arange(num_objects, device=device)
    subjects, objects = torch.meshgrid(index, index, indexing="ij")
    keep = subjects != objects
    return torch.stack([subjects[keep], objects[keep]], dim=1)


def relation_matrix(relations: Tensor, num_objects: int) -> Tensor:
    """(R, 3) rows (subject, object, predicate) -> (N, N) int64 predicate per ordered pair, 0 = none.

    A pair annotated with several predicates keeps the last one; the training split has at most
    one per pair already (SPEC §1), so this only matters for hand-made targets.
    """
    matrix = torch.zeros(num_objects, num_objects, dtype=torch.long, device=relations.device)
    if relations.numel():
        matrix[relations[:, 0], relations[:, 1]] = relations[:, 2]
    return matrix


def match_to_annotations(boxes: Tensor, gt_boxes: Tensor, threshold: float = MATCH_IOU) -> Tensor:
    """(N,) int64: the annotated box each of ``boxes`` (N, 4) stands for, -1 when IoU < threshold."""
    if boxes.numel() == 0 or gt_boxes.numel() == 0:
        return torch.full((len(boxes),), -1, dtype=torch.long, device=boxes.device)
    best_iou, best = box_iou(boxes, gt_boxes).max(dim=1)
    return torch.where(best_iou >= threshold, best, torch.full_like(best, -1))


def detection_relation_matrix(matches: Tensor, gt_matrix: Tensor) -> Tensor:
    """Predicates of detected pairs: (N,) matches into the annotations' (M, M) matrix -> (N, N)."""
    matched = matches >= 0
    safe = matches.clamp(min=0)
    matrix = gt_matrix[safe[:, None], safe[None, :]]
    return matrix * (matched[:, None] & matched[None, :])


def sample_training_pairs(
    matrix: Tensor, max_foreground: int = MAX_FOREGROUND_PAIRS, max_pairs: int = MAX_PAIRS
) -> tuple[Tensor, Tensor]:
    """Foreground pairs (at most ``max_foreground``, a random subset if more) then background
    pairs filling up to ``max_pairs``.

    matrix: (N, N) predicate per ordered pair, 0 = no relation; the diagonal is never a pair.
    Returns pairs (P, 2) int64 (subject, object) and their predicates (P,) int64, 0 = background.
    """
    num_objects = matrix.shape[0]
    pairs = all_ordered_pairs(num_objects, matrix.device)
    labels = matrix[pairs[:, 0], pairs[:, 1]]
    foreground = torch.nonzero(labels > 0).flatten()
    background = torch.nonzero(labels == 0).flatten()
    foreground = _random_subset(foreground, max_foreground)
    background = _random_subset(background, max_pairs - len(foreground))
    chosen = torch.cat([foreground, background])
    return pairs[chosen], labels[chosen]


def _random_subset(indices: Tensor, limit: int) -> Tensor:
    if len(indices) <= limit:
        return indices
    order = torch.randperm(len(indices)).to(indices.device)
    return indices[order[:limit]]
