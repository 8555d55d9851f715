"""Referring-relationship metrics: DSG's ``iou_test`` (SPEC §2, §6), vectorised.

Per query, on a ``GRID_SIZE`` x ``GRID_SIZE`` grid laid over the image (coordinates divided
by the image's width and height):

- a box covers the cells ``floor(x1 * S) .. ceil(x2 * S) - 1`` by ``floor(y1 * S) ..
  ceil(y2 * S) - 1``; predicted boxes are first clipped to the image (as DSG clips them);
- the predicted subject region is the union of the boxes whose most probable role is
  "subject", plus the box with the highest P(subject) (always included, so a prediction
  with any box never leaves the region empty); the object region likewise with "object";
- the GT subject region is the union of the query's GT subject boxes (object likewise);
- IoU of the two cell sets, 0 when their union is empty (DSG's ``iou``).

``subject_iou`` and ``object_iou`` are the means over queries, ``mean_iou`` their average
(the selection metric); values are fractions in [0, 1]. With no query evaluated every metric
is NaN, never a made-up 0. The per-predicate artifact holds the same means per query
predicate (``None`` for a predicate without queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from sgstudy import metric_names
from sgstudy.errors import ConfigError
from sgstudy.structures import ReferringPrediction, ReferringTarget

GRID_SIZE = 14
# Columns of ReferringPrediction.role_scores.
ROLES = ("background", "subject", "object", "other")
SUBJECT, OBJECT = 1, 2


@dataclass(frozen=True)
class ReferringResult:
    """metrics: ``subject_iou``, ``object_iou``, ``mean_iou`` and ``num_queries``.

    predicates:  (Q,) int64 predicate of each evaluated query, 1-based
    subject_iou: (Q,) float64 per-query subject IoU
    object_iou:  (Q,) float64 per-query object IoU
    """

    metrics: dict[str, float]
    predicates: np.ndarray
    subject_iou: np.ndarray
    object_iou: np.ndarray


@dataclass
class _Pooled:
    predicates: list[np.ndarray] = field(default_factory=list)
    subject_iou: list[np.ndarray] = field(default_factory=list)
    object_iou: list[np.ndarray] = field(default_factory=list)


class ReferringEvaluator:
    """reset / process / evaluate, as ``sgstudy.evaluation.sgg_eval.SceneGraphEvaluator``.

    num_predicates: C, the number of foreground predicates (query predicates lie in 1..C)
    grid_size:      S of the S x S grid (DSG: 14)
    """

    def __init__(self, num_predicates: int, grid_size: int = GRID_SIZE) -> None:
        if num_predicates < 1:
            raise ConfigError(f"num_predicates: must be >= 1, got {num_predicates}")
        if grid_size < 1:
            raise ConfigError(f"grid_size: must be >= 1, got {grid_size}")
        self.num_predicates = int(num_predicates)
        self.grid_size = int(grid_size)
        self._pooled = _Pooled()

    def reset(self) -> None:
        self._pooled = _Pooled()

    def process(
        self, targets: list[ReferringTarget], predictions: list[ReferringPrediction]
    ) -> None:
        """Scores one batch of queries."""
        if len(targets) != len(predictions):
            raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
        if not targets:
            return
        gt = self._gt_regions(targets)  # (2, B, S*S) subject and object regions
        predicted = self._predicted_regions(targets, predictions)
        ious = region_iou(gt, predicted)  # (2, B)
        predicates = np.array([int(t.query[1]) for t in targets], dtype=np.int64)
        if ((predicates < 1) | (predicates > self.num_predicates)).any():
            raise ConfigError(
                f"query predicate outside 1..{self.num_predicates}; dataset and evaluator disagree"
            )
        self._pooled.predicates.append(predicates)
        self._pooled.subject_iou.append(ious[0])
        self._pooled.object_iou.append(ious[1])

    def evaluate(self) -> ReferringResult:
        p = self._pooled
        predicates = np.concatenate(p.predicates) if p.predicates else np.zeros(0, np.int64)
        subject = np.concatenate(p.subject_iou) if p.subject_iou else np.zeros(0)
        obj = np.concatenate(p.object_iou) if p.object_iou else np.zeros(0)
        subject_mean, object_mean = _mean(subject), _mean(obj)
        metrics = {
            metric_names.SUBJECT_IOU: subject_mean,
            metric_names.OBJECT_IOU: object_mean,
            metric_names.MEAN_IOU: (subject_mean + object_mean) / 2,
            "num_queries": float(len(predicates)),
        }
        return ReferringResult(metrics, predicates, subject, obj)

    # ------------------------------------------------------------ regions
    def _gt_regions(self, targets: list[ReferringTarget]) -> np.ndarray:
        boxes = [_numpy(t.boxes).reshape(-1, 4) for t in targets]
        cells = grid_cells(np.concatenate(boxes), _sizes(targets, boxes), self.grid_size)
        offsets = np.cumsum([0] + [len(b) for b in boxes])[:-1]
        regions = []
        for members in ("subject_indices", "object_indices"):
            rows = [offsets[q] + _numpy(getattr(t, members)).astype(np.int64).reshape(-1)
                    for q, t in enumerate(targets)]  # fmt: skip
            chosen = np.zeros((len(targets), len(cells)), dtype=bool)
            chosen[
                np.repeat(np.arange(len(targets)), [len(r) for r in rows]), np.concatenate(rows)
            ] = True
            regions.append(union_of(chosen, cells))
        return np.stack(regions)

    def _predicted_regions(
        self, targets: list[ReferringTarget], predictions: list[ReferringPrediction]
    ) -> np.ndarray:
        boxes = [_numpy(p.boxes).astype(np.float64).reshape(-1, 4) for p in predictions]
        scores = [_checked_scores(p, len(b)) for p, b in zip(predictions, boxes)]
        cells = grid_cells(np.concatenate(boxes), _sizes(targets, boxes), self.grid_size)
        flat_scores = np.concatenate(scores)  # (M, 4)
        if not len(flat_scores):
            return np.zeros((2, len(targets), cells.shape[1]), dtype=bool)
        query_of = np.repeat(np.arange(len(targets)), [len(b) for b in boxes])  # (M,)
        belongs = query_of[None, :] == np.arange(len(targets))[:, None]  # (B, M)
        best_role = flat_scores.argmax(axis=1)
        regions = []
        for role in (SUBJECT, OBJECT):
            chosen = belongs & (best_role == role)[None, :]
            # The box with the highest P(role) of each query joins the region.
            masked = np.where(belongs, flat_scores[:, role][None, :], -np.inf)
            has_boxes = belongs.any(axis=1)
            top = masked.argmax(axis=1)
            chosen[np.flatnonzero(has_boxes), top[has_boxes]] = True
            regions.append(union_of(chosen, cells))
        return np.stack(regions)


def grid_cells(boxes: np.ndarray, sizes: np.ndarray, grid_size: int) -> np.ndarray:
    """(N, S*S) bool cells covered by each box.

    boxes: (N, 4) xyxy pixels; sizes: (N, 2) (height, width) of each box's image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = sizes[:, 0:1].astype(np.float64), sizes[:, 1:2].astype(np.float64)
    scale = np.concatenate([width, height, width, height], axis=1)
    normalised = np.clip(boxes, 0.0, scale) / scale  # (N, 4) in [0, 1]
    low = np.floor(normalised[:, :2] * grid_size)  # (N, 2) x, y
    high = np.ceil(normalised[:, 2:] * grid_size)
    index = np.arange(grid_size)
    inside_x = (index >= low[:, 0:1]) & (index < high[:, 0:1])  # (N, S)
    inside_y = (index >= low[:, 1:2]) & (index < high[:, 1:2])
    return (inside_y[:, :, None] & inside_x[:, None, :]).reshape(len(boxes), grid_size**2)


def union_of(chosen: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(B, S*S) bool: for each query the union of the cells of its chosen boxes.

    chosen: (B, N) bool; cells: (N, S*S) bool.
    """
    return (chosen.astype(np.float32) @ cells.astype(np.float32)) > 0


def region_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of cell sets along the last axis; 0 where the union is empty."""
    union = (a | b).sum(axis=-1)
    inter = (a & b).sum(axis=-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def per_predicate_iou_artifact(
    result: ReferringResult, predicate_names: list[str], train_query_counts: np.ndarray
) -> dict[str, Any]:
    """The JSON-able per-predicate record logged with every epoch.

    predicate_names: C + 1 names (background first); train_query_counts: (C + 1,).
    Lists follow predicate ids 1..C; a predicate without evaluated queries has ``None``.
    """
    size = len(predicate_names)
    counts = np.bincount(result.predicates, minlength=size)[1:]

    def means(values: np.ndarray) -> list[float | None]:
        sums = np.bincount(result.predicates, weights=values, minlength=size)[1:]
        return [float(s / c) if c else None for s, c in zip(sums, counts)]

    return {
        "predicates": [str(name) for name in predicate_names[1:]],
        "train_query_counts": [int(c) for c in np.asarray(train_query_counts)[1:]],
        "eval_query_counts": [int(c) for c in counts],
        metric_names.SUBJECT_IOU: means(result.subject_iou),
        metric_names.OBJECT_IOU: means(result.object_iou),
    }


def _sizes(targets: list[ReferringTarget], boxes: list[np.ndarray]) -> np.ndarray:
    """(N, 2) (height, width) of the image of every box of ``boxes``."""
    sizes = np.array([t.image_size for t in targets], dtype=np.int64).reshape(-1, 2)
    return np.repeat(sizes, [len(b) for b in boxes], axis=0)


def _checked_scores(prediction: ReferringPrediction, num_boxes: int) -> np.ndarray:
    scores = _numpy(prediction.role_scores).astype(np.float64)
    if scores.shape != (num_boxes, len(ROLES)):
        raise ValueError(
            f"role_scores: expected shape ({num_boxes}, {len(ROLES)}) for {num_boxes} boxes, "
            f"got {tuple(scores.shape)}"
        )
    return scores


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _numpy(tensor: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    return tensor.detach().cpu().numpy()
