"""Ranking and matching of relation triplets for one image, vectorised with numpy.

The Scene-Graph-Benchmark protocol (KaihuaTang/Scene-Graph-Benchmark.pytorch,
``sgg_eval.py``) ranks predicted triplets by

    triplet score = predicate score x subject score x object score

and counts a ground-truth triplet as recalled at K when one of the top-K
predicted triplets has the same subject label, predicate and object label and
overlaps both GT boxes with IoU >= 0.5 (boxes measured with the +1 pixel
convention). Everything here works on whole arrays: no Python loop runs over
pairs or triplets.

Ties in the ranking keep the candidates' input order (a stable sort), pair-major
then predicate-minor for the no-graph-constraint ranking, so that any correct
implementation that breaks ties the same way gives identical results.
``rank_as_reference`` instead reproduces the reference's own order, ties included (see
``SceneGraphEvaluator``'s ``reference_compatible``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Rank given to a GT triplet that no candidate matches: larger than any K.
NO_MATCH = np.iinfo(np.int64).max


@dataclass(frozen=True)
class RankedTriplets:
    """The best predicted triplets of one image, best first.

    subjects:   (T,) int64, indices into the predicted boxes
    objects:    (T,) int64, indices into the predicted boxes
    predicates: (T,) int64, foreground predicate ids in 1..C
    scores:     (T,) float64, triplet scores, non-increasing
    """

    subjects: np.ndarray
    objects: np.ndarray
    predicates: np.ndarray
    scores: np.ndarray


def box_iou_plus_one(
    boxes_a: np.ndarray, boxes_b: np.ndarray, dtype: type = np.float64
) -> np.ndarray:
    """Pairwise IoU of xyxy boxes with KT's +1 pixel convention: a box (x1, y1, x2, y2)
    covers (x2 - x1 + 1) x (y2 - y1 + 1) pixels, because VG boxes name inclusive pixels.
    Every step runs in ``dtype``: KT's ``bbox_overlaps`` casts the boxes to float32 (its
    ``BoxList``) and computes there.

    boxes_a: (N, 4), boxes_b: (M, 4) -> (N, M) of ``dtype``
    """
    a = boxes_a.astype(dtype, copy=False)[:, None, :]  # (N, 1, 4)
    b = boxes_b.astype(dtype, copy=False)[None, :, :]  # (1, M, 4)
    top_left = np.maximum(a[..., :2], b[..., :2])  # (N, M, 2)
    bottom_right = np.minimum(a[..., 2:], b[..., 2:])
    wh = np.clip(bottom_right - top_left + 1.0, 0.0, None)
    intersection = wh[..., 0] * wh[..., 1]  # (N, M)
    area_a = (a[..., 2] - a[..., 0] + 1.0) * (a[..., 3] - a[..., 1] + 1.0)  # (N, 1)
    area_b = (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)  # (1, M)
    return intersection / (area_a + area_b - intersection)


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first; equal scores keep index order.

    Same answer as ``np.argsort(-scores, kind="stable")[:k]`` but sorts only the
    candidates at or above the k-th largest score (no-graph-constraint rankings
    have P x C entries, tens of thousands for a busy image).

    scores: (S,) -> (min(S, k),) int64
    """
    if scores.size <= k:
        return np.argsort(-scores, kind="stable")
    kth_largest = np.partition(scores, scores.size - k)[scores.size - k]
    # Ties at the k-th score all enter, so the stable sort below decides among them by index.
    candidates = np.flatnonzero(scores >= kth_largest)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:k]


def rank_with_graph_constraint(
    pairs: np.ndarray, predicate_scores: np.ndarray, label_scores: np.ndarray, k: int
) -> RankedTriplets:
    """One triplet per pair: its best foreground predicate (column 0, background, never wins).

    pairs: (P, 2) int64, predicate_scores: (P, C + 1), label_scores: (N,) -> top min(P, k)
    """
    foreground = predicate_scores[:, 1:].astype(np.float64, copy=False)  # (P, C)
    if pairs.shape[0] == 0:
        return _empty_ranking()
    best = foreground.argmax(axis=1)  # (P,) first maximum on ties
    triplet_scores = (
        foreground[np.arange(len(best)), best]
        * label_scores[pairs[:, 0]]
        * label_scores[pairs[:, 1]]
    )
    order = top_k_stable(triplet_scores, k)
    return RankedTriplets(pairs[order, 0], pairs[order, 1], best[order] + 1, triplet_scores[order])


def rank_without_graph_constraint(
    pairs: np.ndarray, predicate_scores: np.ndarray, label_scores: np.ndarray, k: int
) -> RankedTriplets:
    """Every (pair, foreground predicate) is a candidate triplet.

    pairs: (P, 2) int64, predicate_scores: (P, C + 1), label_scores: (N,) -> top min(P * C, k)
    """
    foreground = predicate_scores[:, 1:].astype(np.float64, copy=False)  # (P, C)
    if pairs.shape[0] == 0 or foreground.shape[1] == 0:
        return _empty_ranking()
    triplet_scores = (
        foreground * label_scores[pairs[:, 0], None] * label_scores[pairs[:, 1], None]
    ).ravel()  # (P * C,) pair-major
    order = top_k_stable(triplet_scores, k)
    pair_index, predicate_column = np.divmod(order, foreground.shape[1])
    return RankedTriplets(
        pairs[pair_index, 0], pairs[pair_index, 1], predicate_column + 1, triplet_scores[order]
    )


def rank_as_reference(
    pairs: np.ndarray,
    predicate_scores: np.ndarray,
    label_scores: np.ndarray,
    k: int,
    graph_constraint: bool,
) -> RankedTriplets:
    """The order Scene-Graph-Benchmark ranks in, ties included, on this machine.

    Scores stay in the prediction's own float dtype (float32 for a model's output) and are
    multiplied in the reference's order:
    - graph constraint: its relation post-processor sorts predicate score x subject score x
      object score with ``torch.sort(descending=True)``, which does not keep input order on
      ties, and its evaluator keeps that order;
    - no graph constraint: its ``argsort_desc`` is ``np.argsort`` (numpy's default, unstable
      sort) of minus (subject score x object score) x predicate score, pair-major.
    Both sorts are deterministic for one torch/numpy build and CPU, so the reference's
    evaluation on the same machine ties the same way.

    pairs: (P, 2) int64, predicate_scores: (P, C + 1), label_scores: (N,) -> top min(P(C), k)
    """
    foreground = predicate_scores[:, 1:]  # (P, C)
    if pairs.shape[0] == 0 or foreground.shape[1] == 0:
        return _empty_ranking()
    subject_scores, object_scores = label_scores[pairs[:, 0]], label_scores[pairs[:, 1]]
    if graph_constraint:
        best = foreground.argmax(axis=1)  # (P,) the reference's evaluator takes numpy's argmax
        triplet_scores = foreground[np.arange(len(best)), best] * subject_scores * object_scores
        order = torch.sort(torch.from_numpy(triplet_scores), descending=True).indices.numpy()[:k]
        return RankedTriplets(
            pairs[order, 0], pairs[order, 1], best[order] + 1, triplet_scores[order]
        )
    triplet_scores = ((subject_scores * object_scores)[:, None] * foreground).ravel()
    order = np.argsort(-triplet_scores)[:k]  # the default kind on purpose: the reference's
    pair_index, predicate_column = np.divmod(order, foreground.shape[1])
    return RankedTriplets(
        pairs[pair_index, 0], pairs[pair_index, 1], predicate_column + 1, triplet_scores[order]
    )


def first_match_rank(
    gt_relations: np.ndarray,
    gt_labels: np.ndarray,
    predicted_labels: np.ndarray,
    box_matches: np.ndarray,
    ranked: RankedTriplets,
) -> np.ndarray:
    """For every GT triplet, the rank (0-based) of the best predicted triplet that matches it.

    A GT triplet is recalled at K exactly when its rank is < K. Several GT rows may
    be matched by the same prediction (KT keeps duplicate test annotations and
    counts each one), so this is not a one-to-one assignment.

    gt_relations:     (R, 3) int64 (subject index, object index, predicate)
    gt_labels:        (N_gt,) int64
    predicted_labels: (N_pred,) int64
    box_matches:      (N_gt, N_pred) bool, IoU >= threshold
    returns           (R,) int64, ``NO_MATCH`` where nothing matches
    """
    gt_subjects, gt_objects, gt_predicates = gt_relations.T  # each (R,)
    if ranked.predicates.size == 0:
        return np.full(gt_relations.shape[0], NO_MATCH, dtype=np.int64)
    matches = (
        (gt_predicates[:, None] == ranked.predicates[None, :])
        & (gt_labels[gt_subjects][:, None] == predicted_labels[ranked.subjects][None, :])
        & (gt_labels[gt_objects][:, None] == predicted_labels[ranked.objects][None, :])
        & box_matches[gt_subjects][:, ranked.subjects]
        & box_matches[gt_objects][:, ranked.objects]
    )  # (R, T)
    first = matches.argmax(axis=1).astype(np.int64)  # first True; 0 when none
    return np.where(matches.any(axis=1), first, NO_MATCH)


def _empty_ranking() -> RankedTriplets:
    empty_index = np.zeros(0, dtype=np.int64)
    return RankedTriplets(empty_index, empty_index, empty_index, np.zeros(0, dtype=np.float64))
