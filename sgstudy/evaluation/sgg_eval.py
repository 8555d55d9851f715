"""Scene-graph recall metrics: R@K, mR@K, zR@K with and without graph constraint.

Follows the protocol of KaihuaTang/Scene-Graph-Benchmark.pytorch (``sgg_eval.py``,
"KT"); the choices where a reader could hesitate:

- Matching uses labels plus IoU >= ``iou_threshold`` for subject and object boxes in
  every protocol, as KT does. In PredCls/SGCls the predicted boxes are the GT
  boxes, so IoU matching is the same as matching box indices, except that two
  identical GT boxes are interchangeable (KT treats them so too).
- Graph constraint: one triplet per pair, the argmax over the foreground columns.
  No graph constraint: every (pair, foreground predicate) is ranked.
- Duplicate GT triplets (test keeps duplicate annotations) count separately and
  one prediction may recall all of them (KT).
- R@K: mean over images that have at least one GT relation; others are skipped
  and not counted in ``num_images``.
- mR@K: per image and predicate c in its GT, matched_c / count_c; class recall is
  the mean over the images containing c; mR is the mean over ALL C predicates, a
  predicate absent from the evaluated split counting 0 (KT). Per-predicate
  recall vectors use the same 0 for absent predicates, so mR = their mean.
- zR@K: only GT triplets (subject label, predicate, object label) absent from the
  training triplets; mean over images that have any.
- A metric with nothing to average (zR when no unseen triplet occurs or no
  training triplets were given, R on an empty split, a group with no predicate)
  is NaN, never a made-up 0.
- Values are fractions in [0, 1], not percent.
- An image with GT relations and no predicted pair counts 0 (KT skips it).

``reference_compatible=True`` (off by default) reproduces KT's ``do_vg_evaluation`` in the
three corner cases where the default differs from it on purpose:

- IoU in float32, as KT's ``bbox_overlaps`` (the default: float64). This decides SGDet
  matches whose IoU lies within about 1e-7 of the threshold.
- KT's sorts on exact score ties: scores in the prediction's own dtype (float32 for a
  model), the graph-constrained order of its post-processor (``torch.sort``, descending) and
  the no-graph-constraint order of its ``argsort_desc`` (``np.argsort``, numpy's default
  unstable sort); see ``triplet_match.rank_as_reference``. The default ranks float64 scores
  with a stable sort, so equal scores keep their input order on every machine.
- Images with GT relations and no predicted pair are skipped, not counted as 0.

Evaluation runs batched in torch (``batched``): ``process`` buffers the images and ranks and
matches them a chunk at a time on ``device`` (CUDA when present); the per-image numpy path
(``batched=False``, and always with ``reference_compatible``) gives the same metrics up to
the order of floating-point sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sgstudy import metric_names
from sgstudy.errors import ConfigError, DatasetError
from sgstudy.evaluation.batched import PackedImages, pack_images, pooled_hits
from sgstudy.evaluation.pooled import PooledImages, concatenate_pools
from sgstudy.evaluation.triplet_match import (
    RankedTriplets,
    box_iou_plus_one,
    first_match_rank,
    rank_as_reference,
    rank_with_graph_constraint,
    rank_without_graph_constraint,
)
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget

PROTOCOLS: tuple[str, ...] = ("predcls", "sgcls", "sgdet")
# The batched path ranks a chunk of images at once; its largest tensor holds
# images x (most pairs of an image) x C float32 scores, kept under 8 MiB so that the
# allocator reuses memory instead of faulting in fresh pages for every chunk.
CHUNK_SCORES = 1 << 21


@dataclass(frozen=True)
class ImageHits:
    """What one image contributes to the metrics; no predictions are kept.

    predicates:   (U,) int64, the distinct GT predicates of the image
    counts:       (U,) int64, GT triplets per predicate
    hits:         (nK, U) int64, recalled GT triplets per K and predicate, graph constraint
    ng_hits:      (nK, U) int64, the same without graph constraint
    num_unseen:   GT triplets never seen in training
    unseen_hits:  (nK,) int64, recalled unseen triplets, graph constraint
    ng_unseen_hits: (nK,) int64, the same without graph constraint
    """

    predicates: np.ndarray
    counts: np.ndarray
    hits: np.ndarray
    ng_hits: np.ndarray
    num_unseen: int
    unseen_hits: np.ndarray
    ng_unseen_hits: np.ndarray


@dataclass(frozen=True)
class EvaluationResult:
    """metrics: ``metric_names`` keys -> value, plus ``num_images``.
    per_predicate_recall / per_predicate_ng_recall: K -> (C,) class recall of predicates 1..C.
    eval_predicate_counts: (C,) int64, GT triplets per predicate 1..C in the evaluated split.
    """

    metrics: dict[str, float]
    per_predicate_recall: dict[int, np.ndarray]
    per_predicate_ng_recall: dict[int, np.ndarray]
    eval_predicate_counts: np.ndarray


class SceneGraphEvaluator:
    """reset / process / evaluate, as detectron2's evaluators.

    protocol:         "predcls", "sgcls" or "sgdet"
    num_predicates:   C, the number of foreground predicates
    train_triplets:   (T, 3) (subject label, predicate, object label) seen in training; None
                      leaves the zero-shot metrics NaN
    predicate_groups: "head"/"body"/"tail" -> predicate ids; adds the group metrics
    reference_compatible: reproduce KT's three corner cases (module docstring); per image
    batched:          rank and match chunks of images at once in torch (else per image, numpy)
    device:           where the batched path runs; None: CUDA when present, else the CPU
    """

    def __init__(
        self,
        protocol: str,
        num_predicates: int,
        train_triplets: np.ndarray | None,
        predicate_groups: dict[str, list[int]] | None = None,
        ks: tuple[int, ...] = metric_names.RECALL_KS,
        iou_threshold: float = 0.5,
        reference_compatible: bool = False,
        batched: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: unknown value {protocol!r}; expected one of {PROTOCOLS}")
        if num_predicates < 1:
            raise ConfigError(f"num_predicates: must be >= 1, got {num_predicates}")
        if not ks or any(int(k) < 1 for k in ks):
            raise ConfigError(f"ks: recall cut-offs must be positive integers, got {ks!r}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold: must be in (0, 1], got {iou_threshold}")
        self.protocol = protocol
        self.num_predicates = int(num_predicates)
        self.ks = tuple(int(k) for k in ks)
        self.iou_threshold = float(iou_threshold)
        self.predicate_groups = _checked_groups(predicate_groups, self.num_predicates)
        self._train_keys = None if train_triplets is None else _train_triplet_keys(train_triplets)
        self.reference_compatible = bool(reference_compatible)
        self.batched = bool(batched) and not self.reference_compatible
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._images: list[ImageHits] = []  # the per-image path's images
        self._pools: list[PooledImages] = []  # the batched path's finished chunks
        self._pending: list[PackedImages] = []  # the batched path's images not ranked yet
        self._pending_size = (0, 0)  # (images, most pairs of one image) in _pending

    def process(
        self, targets: list[SceneGraphTarget], predictions: list[SceneGraphPrediction]
    ) -> None:
        """Scores one batch (batched: checks it and queues it); images without GT relations
        are skipped."""
        if len(targets) != len(predictions):
            raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
        if self.batched:
            packed = pack_images(targets, predictions, self.protocol, self.num_predicates)
            if packed is not None:
                self._queue(packed)
            return
        for target, prediction in zip(targets, predictions):
            hits = self._image_hits(target, prediction)
            if hits is not None:
                self._images.append(hits)

    def _queue(self, packed: PackedImages) -> None:
        """Ranks the queued images first when adding ``packed`` would pass CHUNK_SCORES."""
        images = self._pending_size[0] + packed.num_images
        widest = max(self._pending_size[1], packed.max_pairs)
        if self._pending and images * widest * self.num_predicates > CHUNK_SCORES:
            self._flush()
            images, widest = packed.num_images, packed.max_pairs
        self._pending.append(packed)
        self._pending_size = (images, widest)

    def _flush(self) -> None:
        if self._pending:
            chunk = PackedImages.cat(self._pending)
            self._pending, self._pending_size = [], (0, 0)
            self._pools.append(
                pooled_hits(
                    chunk, self.ks, self.iou_threshold, self.num_predicates,
                    self._train_keys, self.device,
                )
            )  # fmt: skip

    def evaluate(self) -> EvaluationResult:
        self._flush()
        per_image = _pool_images(self._images, self.num_predicates, len(self.ks))
        totals = concatenate_pools([per_image, *self._pools])
        class_recall = _class_recall(totals.class_sum, totals.class_images)  # (nK, C)
        ng_class_recall = _class_recall(totals.ng_class_sum, totals.class_images)
        per_family = {  # family -> (nK,) values, in metric_names.RECALL_FAMILIES order
            "R": _row_means(totals.image_recall),
            "mR": class_recall.mean(axis=1),
            "ng_R": _row_means(totals.ng_image_recall),
            "ng_mR": ng_class_recall.mean(axis=1),
            "zR": _row_means(totals.unseen_recall),
            "ng_zR": _row_means(totals.ng_unseen_recall),
        }
        metrics = {
            metric_names.recall_key(family, k): float(per_family[family][i])
            for family in metric_names.RECALL_FAMILIES
            for i, k in enumerate(self.ks)
        }
        if self.predicate_groups is not None:
            for group in metric_names.PREDICATE_GROUPS:
                columns = np.asarray(self.predicate_groups.get(group, []), dtype=np.int64) - 1
                for i, k in enumerate(self.ks):
                    metrics[metric_names.group_key(group, k)] = _mean(class_recall[i, columns])
        metrics["num_images"] = float(totals.image_recall.shape[1])
        return EvaluationResult(
            metrics=metrics,
            per_predicate_recall={k: class_recall[i] for i, k in enumerate(self.ks)},
            per_predicate_ng_recall={k: ng_class_recall[i] for i, k in enumerate(self.ks)},
            eval_predicate_counts=totals.eval_counts,
        )

    def _image_hits(
        self, target: SceneGraphTarget, prediction: SceneGraphPrediction
    ) -> ImageHits | None:
        gt_relations = _numpy(target.relations).astype(np.int64).reshape(-1, 3)  # (R, 3)
        if gt_relations.shape[0] == 0:
            return None
        outside = (gt_relations[:, 2] < 1) | (gt_relations[:, 2] > self.num_predicates)
        if outside.any():
            raise DatasetError(
                f"image {target.image_id}: GT predicate {int(gt_relations[outside, 2][0])} "
                f"outside 1..{self.num_predicates}; dataset and evaluator disagree"
            )
        gt_labels = _numpy(target.labels).astype(np.int64)
        boxes, labels, label_scores, pairs, predicate_scores = self._checked_prediction(
            prediction, target
        )
        if self.reference_compatible and pairs.shape[0] == 0:
            return None  # KT returns before scoring an image without predicted pairs
        iou_dtype = np.float32 if self.reference_compatible else np.float64
        box_matches = box_iou_plus_one(_numpy(target.boxes), boxes, iou_dtype) >= self.iou_threshold
        ks = np.asarray(self.ks, dtype=np.int64)[:, None]  # (nK, 1)
        rankings = self._rankings(pairs, predicate_scores, label_scores)
        recalled = [  # each (nK, R) bool: GT triplet recalled at K
            first_match_rank(gt_relations, gt_labels, labels, box_matches, ranked)[None, :] < ks
            for ranked in rankings
        ]
        unseen = self._unseen(gt_relations, gt_labels)  # (R,) bool
        predicates, inverse, counts = np.unique(
            gt_relations[:, 2], return_inverse=True, return_counts=True
        )
        one_hot = (inverse[:, None] == np.arange(len(predicates))[None, :]).astype(np.int64)
        return ImageHits(
            predicates=predicates,
            counts=counts,
            hits=recalled[0].astype(np.int64) @ one_hot,  # (nK, U)
            ng_hits=recalled[1].astype(np.int64) @ one_hot,
            num_unseen=int(unseen.sum()),
            unseen_hits=(recalled[0] & unseen).sum(axis=1),
            ng_unseen_hits=(recalled[1] & unseen).sum(axis=1),
        )

    def _rankings(
        self, pairs: np.ndarray, predicate_scores: np.ndarray, label_scores: np.ndarray
    ) -> tuple[RankedTriplets, RankedTriplets]:
        """(graph-constrained, unconstrained) top max(ks) triplets of one image."""
        k_max = max(self.ks)
        if self.reference_compatible:
            return (
                rank_as_reference(pairs, predicate_scores, label_scores, k_max, True),
                rank_as_reference(pairs, predicate_scores, label_scores, k_max, False),
            )
        scores = label_scores.astype(np.float64)
        return (
            rank_with_graph_constraint(pairs, predicate_scores, scores, k_max),
            rank_without_graph_constraint(pairs, predicate_scores, scores, k_max),
        )

    def _checked_prediction(
        self, prediction: SceneGraphPrediction, target: SceneGraphTarget
    ) -> tuple[np.ndarray, ...]:
        boxes = _numpy(prediction.boxes).reshape(-1, 4)
        labels = _numpy(prediction.labels).astype(np.int64)
        label_scores = _numpy(prediction.label_scores)
        pairs = _numpy(prediction.pairs).astype(np.int64).reshape(-1, 2)
        columns = self.num_predicates + 1
        predicate_scores = _numpy(prediction.predicate_scores)
        if pairs.shape[0] == 0:
            predicate_scores = np.zeros((0, columns))
        if predicate_scores.ndim != 2 or predicate_scores.shape[0] != pairs.shape[0]:
            raise ValueError(
                f"predicate_scores: expected shape ({pairs.shape[0]}, {columns}) for "
                f"{pairs.shape[0]} pairs, got {tuple(predicate_scores.shape)}"
            )
        if predicate_scores.shape[1] != columns:
            raise ConfigError(
                f"predicate_scores: {predicate_scores.shape[1]} columns, but the evaluator "
                f"expects num_predicates + 1 = {columns}; model and dataset disagree"
            )
        if not len(boxes) == len(labels) == len(label_scores):
            raise ValueError(
                f"prediction has {len(boxes)} boxes, {len(labels)} labels and "
                f"{len(label_scores)} label scores; they must agree"
            )
        if pairs.size and (pairs.min() < 0 or pairs.max() >= len(boxes)):
            raise ValueError(f"prediction pairs index boxes outside 0..{len(boxes) - 1}")
        if self.protocol != "sgdet" and len(boxes) != len(_numpy(target.boxes).reshape(-1, 4)):
            raise ValueError(
                f"{self.protocol}: the predicted boxes must be the GT boxes of image "
                f"{target.image_id}, got {len(boxes)} boxes for {len(target.boxes)}"
            )
        return boxes, labels, label_scores, pairs, predicate_scores

    def _unseen(self, gt_relations: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
        """(R,) bool: GT triplets whose (subject label, predicate, object label) is unseen."""
        if self._train_keys is None:
            return np.zeros(gt_relations.shape[0], dtype=bool)
        keys = _triplet_keys(
            gt_labels[gt_relations[:, 0]], gt_relations[:, 2], gt_labels[gt_relations[:, 1]]
        )
        if len(self._train_keys) == 0:
            return np.ones(len(keys), dtype=bool)
        # _train_keys is sorted and unique, so a binary search finds each key or its successor.
        position = np.minimum(np.searchsorted(self._train_keys, keys), len(self._train_keys) - 1)
        return self._train_keys[position] != keys


def _pool_images(images: list[ImageHits], num_predicates: int, num_ks: int) -> PooledImages:
    def stacked(name: str) -> np.ndarray:  # (nK, sum of the per-image widths)
        parts = [getattr(image, name).reshape(num_ks, -1) for image in images]
        return np.concatenate(parts, axis=1) if parts else np.zeros((num_ks, 0))

    no_entries = [np.zeros(0, dtype=np.int64)]
    predicates = np.concatenate([image.predicates for image in images] or no_entries)  # (E,)
    counts = np.concatenate([image.counts for image in images] or no_entries)  # (E,)
    image_of = np.repeat(np.arange(len(images)), [len(image.predicates) for image in images])
    hits, ng_hits = stacked("hits"), stacked("ng_hits")  # (nK, E)
    gt_per_image = _sum_by(image_of, counts[None, :], len(images))[0]  # (I,)
    unseen = np.array([image.num_unseen for image in images], dtype=np.float64)  # (I,)
    has_unseen = unseen > 0
    size = num_predicates + 1
    return PooledImages(
        image_recall=_sum_by(image_of, hits, len(images)) / np.maximum(gt_per_image, 1),
        ng_image_recall=_sum_by(image_of, ng_hits, len(images)) / np.maximum(gt_per_image, 1),
        unseen_recall=stacked("unseen_hits")[:, has_unseen] / unseen[has_unseen],
        ng_unseen_recall=stacked("ng_unseen_hits")[:, has_unseen] / unseen[has_unseen],
        class_sum=_sum_by(predicates, hits / np.maximum(counts, 1), size)[:, 1:],
        ng_class_sum=_sum_by(predicates, ng_hits / np.maximum(counts, 1), size)[:, 1:],
        class_images=np.bincount(predicates, minlength=size)[1:],
        eval_counts=_sum_by(predicates, counts[None, :], size)[0, 1:].astype(np.int64),
    )


def _sum_by(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Sums the columns of values (rows, E) into ``size`` bins by index (E,) -> (rows, size)."""
    return np.stack([np.bincount(index, weights=row, minlength=size) for row in values])


def per_predicate_artifact(
    result: EvaluationResult,
    predicate_names: list[str],
    train_counts: np.ndarray,
    predicate_groups: dict[str, list[int]] | None,
) -> dict[str, Any]:
    """The JSON-able per-predicate record the reports read from MLflow.

    predicate_names: C + 1 names, index 0 background; train_counts: (C + 1,) training
    annotations per predicate (index 0 ignored). Lists follow predicate id order 1..C;
    group lists keep the order of ``predicate_groups``.
    """
    num_predicates = len(result.eval_predicate_counts)
    train_counts = np.asarray(train_counts).reshape(-1)
    if len(predicate_names) != num_predicates + 1 or len(train_counts) != num_predicates + 1:
        raise ValueError(
            f"expected {num_predicates + 1} predicate names and train counts (background first), "
            f"got {len(predicate_names)} and {len(train_counts)}"
        )
    groups = predicate_groups or {}
    return {
        "predicates": [str(name) for name in predicate_names[1:]],
        "train_counts": [int(count) for count in train_counts[1:]],
        "eval_counts": [int(count) for count in result.eval_predicate_counts],
        "groups": {
            group: [str(predicate_names[i]) for i in groups.get(group, [])]
            for group in metric_names.PREDICATE_GROUPS
        },
        "recall": _recall_lists(result.per_predicate_recall),
        "ng_recall": _recall_lists(result.per_predicate_ng_recall),
    }


def _recall_lists(per_k: dict[int, np.ndarray]) -> dict[str, list[float]]:
    return {str(k): [float(value) for value in recall] for k, recall in per_k.items()}


def _class_recall(class_sum: np.ndarray, class_images: np.ndarray) -> np.ndarray:
    """(nK, C) mean per-image recall of each predicate; 0 where the split never has it (KT)."""
    return np.where(class_images > 0, class_sum / np.maximum(class_images, 1), 0.0)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _row_means(values: np.ndarray) -> np.ndarray:
    """(nK, I) -> (nK,) means over images; NaN when there is no image to average."""
    return np.array([_mean(row) for row in values])


def _numpy(tensor: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    return tensor.detach().cpu().numpy()


def _triplet_keys(subjects: np.ndarray, predicates: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """One int64 per (subject label, predicate, object label); labels stay below 2**21."""
    return (subjects.astype(np.int64) << 42) | (predicates.astype(np.int64) << 21) | objects


def _train_triplet_keys(train_triplets: np.ndarray) -> np.ndarray:
    triplets = np.asarray(train_triplets, dtype=np.int64)
    if triplets.ndim != 2 or triplets.shape[1] != 3:
        raise ConfigError(f"train_triplets: expected shape (T, 3), got {triplets.shape}")
    if triplets.size and (triplets.min() < 0 or triplets.max() >= 2**21):
        raise ConfigError("train_triplets: labels and predicates must lie in 0..2**21 - 1")
    return np.unique(_triplet_keys(triplets[:, 0], triplets[:, 1], triplets[:, 2]))


def _checked_groups(
    groups: dict[str, list[int]] | None, num_predicates: int
) -> dict[str, list[int]] | None:
    if groups is None:
        return None
    for name, ids in groups.items():
        if name not in metric_names.PREDICATE_GROUPS:
            expected = metric_names.PREDICATE_GROUPS
            raise ConfigError(f"predicate_groups: unknown group {name!r}; expected {expected}")
        bad = [int(i) for i in ids if not 1 <= int(i) <= num_predicates]
        if bad:
            raise ConfigError(
                f"predicate_groups[{name!r}]: predicate ids {bad} outside 1..{num_predicates}"
            )
    return {name: [int(i) for i in ids] for name, ids in groups.items()}
