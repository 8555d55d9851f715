"""The frequency baseline (Zellers et al., CVPR 2018, "FREQ"): predicates from label statistics.

For PredCls it predicts, for every ordered pair of GT objects, the empirical
distribution p(predicate | subject label, object label) of the training split,
ignoring the image. It has no trainable parameters; Motifs' frequency bias is
initialised from the same table.

Smoothing (our choice, the paper is silent): additive smoothing with
``smoothing`` (default 1, Laplace) on every column including background, so a
label pair never seen in training gets the uniform distribution instead of 0/0.
Within a pair the ranking of predicates is unchanged by it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sgstudy.errors import ConfigError, DatasetError
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget


class FrequencyBaseline(nn.Module):
    """pair_predicate_counts: (O + 1, O + 1, C + 1) int counts of training pairs indexed by
    (subject label, object label, predicate); column 0 counts pairs with no relation."""

    def __init__(self, pair_predicate_counts: np.ndarray, smoothing: float = 1.0) -> None:
        super().__init__()
        counts = np.asarray(pair_predicate_counts, dtype=np.float64)
        if counts.ndim != 3 or counts.shape[0] != counts.shape[1] or counts.shape[2] < 2:
            raise ConfigError(
                "pair_predicate_counts: expected shape (O + 1, O + 1, C + 1) with C >= 1, "
                f"got {counts.shape}"
            )
        if (counts < 0).any():
            raise ConfigError("pair_predicate_counts: counts must be non-negative")
        if smoothing <= 0:
            raise ConfigError(f"smoothing: must be > 0, got {smoothing}")
        smoothed = counts + smoothing
        distribution = smoothed / smoothed.sum(axis=2, keepdims=True)
        # A buffer, not a parameter: it moves with .to(device) and is saved, but never trained.
        self.register_buffer(
            "predicate_distribution", torch.from_numpy(distribution).float(), persistent=True
        )

    @classmethod
    def from_statistics(cls, stats: Any, smoothing: float = 1.0) -> FrequencyBaseline:
        """Any object with a ``pair_predicate_counts`` array (e.g. ``DatasetStatistics``)."""
        return cls(stats.pair_predicate_counts, smoothing=smoothing)

    @property
    def num_object_classes(self) -> int:
        """O, the foreground object classes the table covers."""
        return self.predicate_distribution.shape[0] - 1

    def forward(
        self, images: list[Tensor], targets: list[SceneGraphTarget]
    ) -> list[SceneGraphPrediction]:
        """PredCls: GT boxes and labels, every ordered pair i != j.

        Per image with N objects: boxes (N, 4), labels (N,), label_scores (N,) = 1,
        pairs (N (N - 1), 2), predicate_scores (N (N - 1), C + 1), each row summing to 1.
        ``images`` is unused; it is taken so that every model is called alike.
        """
        return [self._predict(target) for target in targets]

    def _predict(self, target: SceneGraphTarget) -> SceneGraphPrediction:
        table = self.predicate_distribution
        labels = target.labels.to(table.device, torch.long)
        outside = (labels < 0) | (labels > self.num_object_classes)
        if outside.any():
            raise DatasetError(
                f"image {target.image_id}: object label {int(labels[outside][0])} is outside "
                f"the 0..{self.num_object_classes} classes of the frequency statistics"
            )
        pairs = all_ordered_pairs(labels.numel(), table.device)  # (N (N - 1), 2)
        return SceneGraphPrediction(
            boxes=target.boxes.to(table.device),
            labels=labels,
            label_scores=torch.ones(labels.numel(), device=table.device),
            pairs=pairs,
            predicate_scores=table[labels[pairs[:, 0]], labels[pairs[:, 1]]],
        )


def all_ordered_pairs(num_objects: int, device: torch.device | str = "cpu") -> Tensor:
    """(N (N - 1), 2) int64 (subject, object) index pairs with subject != object, row-major."""
    index = torch.arange(num_objects, device=device)
    subjects, objects = torch.meshgrid(index, index, indexing="ij")
    off_diagonal = subjects != objects
    return torch.stack((subjects[off_diagonal], objects[off_diagonal]), dim=1)


class DetectionFrequencyBaseline(nn.Module):
    """The SGDet frequency baseline on a frozen detector's entities: every ordered pair of the
    detector's detections gets p(predicate | subject label, object label); the detection
    scores are the object scores, so a triplet ranks by frequency × subject score × object
    score. It is the yardstick a relation model must beat on the same detector
    (``sgstudy baseline --protocol sgdet --detector FILE``): SGTR's DETR or Motifs' Faster
    R-CNN (``entity_detections`` says which detections each gives)."""

    def __init__(self, frequency: FrequencyBaseline, detector: nn.Module) -> None:
        super().__init__()
        from sgstudy.models.detector import freeze

        self.frequency = frequency
        self.detector = freeze(detector)

    def forward(
        self, images: list[Tensor], targets: list[SceneGraphTarget]
    ) -> list[SceneGraphPrediction]:
        table = self.frequency.predicate_distribution
        predictions = []
        for found in entity_detections(self.detector, images):
            labels = found["labels"]
            pairs = all_ordered_pairs(labels.numel(), labels.device)
            predictions.append(
                SceneGraphPrediction(
                    boxes=found["boxes"],
                    labels=labels,
                    label_scores=found["scores"],
                    pairs=pairs,
                    predicate_scores=table[labels[pairs[:, 0]], labels[pairs[:, 1]]],
                )
            )
        return predictions


def entity_detections(detector: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Per image ``{"boxes": (N, 4) xyxy original pixels, "labels": (N,) 1-based, "scores"}``:
    for a DETR every query with its best foreground class (``detr.detections``); for a Faster
    R-CNN its own post-processing (per-class NMS, its score threshold and per-image limit)."""
    from sgstudy.models.detr import DETR, detections

    if isinstance(detector, DETR):
        return detections(detector(images))
    return detector(images)
