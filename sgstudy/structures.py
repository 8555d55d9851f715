"""The per-image records every part of sgstudy agrees on.

A dataset yields ``(image, SceneGraphTarget)``; every model, whatever its
family, returns one ``SceneGraphPrediction`` per image in eval mode, so that
one evaluator and one report serve all models.

Conventions (as in VG150 and Scene-Graph-Benchmark):
- object labels and predicates are 1-based class ids; 0 means background;
- boxes are ``(x1, y1, x2, y2)`` in pixels of the image as the dataset yields it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SceneGraphTarget:
    """Ground truth of one image.

    image_id:   the dataset's id of the image (``image_data.json``)
    image_size: (height, width) in pixels
    boxes:      (N, 4) float32, xyxy pixels
    labels:     (N,) int64, 1-based object classes
    relations:  (R, 3) int64 rows (subject index, object index, predicate), indices into boxes
    """

    image_id: int
    image_size: tuple[int, int]
    boxes: Tensor
    labels: Tensor
    relations: Tensor

    def to(self, device: torch.device | str) -> SceneGraphTarget:
        return SceneGraphTarget(
            self.image_id,
            self.image_size,
            self.boxes.to(device),
            self.labels.to(device),
            self.relations.to(device),
        )


@dataclass
class SceneGraphPrediction:
    """A model's scene graph for one image.

    boxes:            (N, 4) float, xyxy pixels (the GT boxes in PredCls/SGCls)
    labels:           (N,) int64, predicted 1-based object classes (GT in PredCls)
    label_scores:     (N,) float, object scores (1.0 in PredCls)
    pairs:            (P, 2) int64 (subject index, object index), candidate ordered pairs
    predicate_scores: (P, C + 1) float, per-pair predicate distribution; column 0 is background
    """

    boxes: Tensor
    labels: Tensor
    label_scores: Tensor
    pairs: Tensor
    predicate_scores: Tensor

    def to(self, device: torch.device | str) -> SceneGraphPrediction:
        return SceneGraphPrediction(
            self.boxes.to(device),
            self.labels.to(device),
            self.label_scores.to(device),
            self.pairs.to(device),
            self.predicate_scores.to(device),
        )


@dataclass
class ReferringTarget:
    """Ground truth of one referring-relationship query on one image (SPEC §1, §6).

    A query <subject class, predicate, object class> asks for the boxes of every subject and
    every object that take part in a matching relation; the image's other annotations stay
    available for DSG's partial scene-graph supervision.

    image_id:        the dataset's id of the image
    image_size:      (height, width) in pixels
    boxes:           (N, 4) float32, xyxy pixels, every annotated entity of the image
    labels:          (N,) int64, 1-based entity classes
    relations:       (R, 3) int64 rows (subject index, object index, predicate), all annotated
                     relations of the image
    query:           (3,) int64 (subject class, predicate, object class), 1-based
    subject_indices: (S,) int64, indices into boxes of the query's subjects (S >= 1)
    object_indices:  (T,) int64, indices into boxes of the query's objects (T >= 1)
    """

    image_id: int
    image_size: tuple[int, int]
    boxes: Tensor
    labels: Tensor
    relations: Tensor
    query: Tensor
    subject_indices: Tensor
    object_indices: Tensor

    def to(self, device: torch.device | str) -> ReferringTarget:
        return ReferringTarget(
            self.image_id,
            self.image_size,
            self.boxes.to(device),
            self.labels.to(device),
            self.relations.to(device),
            self.query.to(device),
            self.subject_indices.to(device),
            self.object_indices.to(device),
        )


@dataclass
class ReferringPrediction:
    """A model's answer to one referring-relationship query.

    boxes:       (M, 4) float, xyxy pixels (refined boxes)
    role_scores: (M, 4) float, per box the probabilities of (background, subject, object,
                 other); rows sum to 1
    """

    boxes: Tensor
    role_scores: Tensor

    def to(self, device: torch.device | str) -> ReferringPrediction:
        return ReferringPrediction(self.boxes.to(device), self.role_scores.to(device))
