"""Scene-graph recall for many images at once, in torch: on the GPU when there is one.

``pack_images`` turns a batch of (target, prediction) pairs into flat tensors (one row per
box, pair or GT relation, plus per-image counts) and checks them; ``pooled_hits`` ranks and
matches every image of a pack with a fixed number of tensor operations, whatever the number
of images, and returns the per-image sums the metrics are made of.

The rankings are those of ``triplet_match`` (ties keep the candidates' input order, pair-major
then predicate-minor for the no-graph-constraint ranking) and every score, IoU and ratio that
decides a ranking or a match is computed with the same float64 operations in the same order,
so the metrics equal the per-image path's up to the order of a few floating-point sums
(about 1e-16). Two shortcuts only skip work that cannot change a ranking: without graph
constraint, pairs whose best triplet is below the image's k-th best pair are not scored, and
a float32 pass with a safety margin picks the few candidates whose float64 scores are sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from sgstudy.errors import ConfigError, DatasetError
from sgstudy.evaluation.pooled import PooledImages
from sgstudy.evaluation.triplet_match import NO_MATCH
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget


@dataclass(frozen=True)
class PackedImages:
    """B images with GT relations, flattened. Indices in ``relations``/``pairs`` are local to
    their image; the ``*_count`` tensors say which rows belong to which image.

    gt_count, pred_count, rel_count, pair_count: (B,) int64
    gt_boxes: (G, 4) float64; gt_labels: (G,) int64
    relations: (R, 3) int64 (subject, object, predicate)
    boxes: (N, 4) float64; labels: (N,) int64; label_scores: (N,) float64
    pairs: (P, 2) int64; predicate_scores: (P, C + 1), the prediction's float dtype
    """

    gt_count: Tensor
    pred_count: Tensor
    rel_count: Tensor
    pair_count: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    relations: Tensor
    boxes: Tensor
    labels: Tensor
    label_scores: Tensor
    pairs: Tensor
    predicate_scores: Tensor

    @property
    def num_images(self) -> int:
        return len(self.gt_count)

    @property
    def max_pairs(self) -> int:
        return int(self.pair_count.max()) if self.num_images else 0

    def to(self, device: torch.device) -> PackedImages:
        return PackedImages(*(getattr(self, f.name).to(device) for f in fields(self)))

    @staticmethod
    def cat(packs: list[PackedImages]) -> PackedImages:
        return PackedImages(
            *(torch.cat([getattr(pack, f.name) for pack in packs]) for f in fields(PackedImages))
        )


def pack_images(
    targets: list[SceneGraphTarget],
    predictions: list[SceneGraphPrediction],
    protocol: str,
    num_predicates: int,
) -> PackedImages | None:
    """The images of a batch that have GT relations, checked and flattened (None: no image).

    Per image only attributes and shapes are read; the tensors are concatenated and checked
    once per batch.
    """
    columns = num_predicates + 1
    no_scores = torch.zeros(0, columns)
    kept: list[tuple[SceneGraphTarget, SceneGraphPrediction]] = []
    scores = []
    for target, prediction in zip(targets, predictions):
        if target.relations.shape[0] == 0:
            continue
        num_pairs = prediction.pairs.shape[0]
        image_scores = prediction.predicate_scores if num_pairs else no_scores
        if image_scores.ndim != 2 or image_scores.shape != (num_pairs, columns):
            _raise_bad_scores(num_pairs, tuple(image_scores.shape), columns)
        kept.append((target, prediction))
        scores.append(image_scores)
    if not kept:
        return None
    fields_of = {
        "gt_boxes": ([t.boxes for t, _ in kept], (-1, 4)),
        "gt_labels": ([t.labels for t, _ in kept], (-1,)),
        "relations": ([t.relations for t, _ in kept], (-1, 3)),
        "boxes": ([p.boxes for _, p in kept], (-1, 4)),
        "labels": ([p.labels for _, p in kept], (-1,)),
        "label_scores": ([p.label_scores for _, p in kept], (-1,)),
        "pairs": ([p.pairs for _, p in kept], (-1, 2)),
        "predicate_scores": (scores, (-1, columns)),
    }
    sizes = {name: [part.shape[0] for part in parts] for name, (parts, _) in fields_of.items()}
    image_ids = [int(target.image_id) for target, _ in kept]
    _check_sizes(sizes, image_ids, protocol)
    counts = {"gt_count": "gt_labels", "pred_count": "labels", "rel_count": "relations",
              "pair_count": "pairs"}  # fmt: skip
    packed = PackedImages(
        **{name: _cat(parts, shape) for name, (parts, shape) in fields_of.items()},
        **{count: torch.tensor(sizes[source]) for count, source in counts.items()},
    )
    _check_indices(packed, image_ids, num_predicates)
    return packed


def _cat(parts: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    """One tensor of the parts' rows; numpy parts are converted (the slow path)."""
    try:
        joined = torch.cat(parts)
    except TypeError:
        joined = torch.cat([torch.as_tensor(np.asarray(part)) for part in parts])
    return joined if joined.shape[1:] == shape[1:] else joined.reshape(shape)


def _raise_bad_scores(num_pairs: int, shape: tuple[int, ...], columns: int) -> None:
    if len(shape) != 2 or shape[0] != num_pairs:
        raise ValueError(
            f"predicate_scores: expected shape ({num_pairs}, {columns}) for "
            f"{num_pairs} pairs, got {shape}"
        )
    raise ConfigError(
        f"predicate_scores: {shape[1]} columns, but the evaluator "
        f"expects num_predicates + 1 = {columns}; model and dataset disagree"
    )


def _check_sizes(sizes: dict[str, list[int]], image_ids: list[int], protocol: str) -> None:
    """Per image: as many boxes, labels and label scores; PredCls/SGCls: the GT boxes."""
    boxes, labels, scores, gt_boxes = (
        np.array(sizes[name]) for name in ("boxes", "labels", "label_scores", "gt_boxes")
    )
    bad = np.flatnonzero((boxes != labels) | (scores != labels))
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"prediction has {boxes[i]} boxes, {labels[i]} labels and {scores[i]} label "
            "scores; they must agree"
        )
    bad = np.flatnonzero(boxes != gt_boxes) if protocol != "sgdet" else bad
    if bad.size:
        i = bad[0]
        raise ValueError(
            f"{protocol}: the predicted boxes must be the GT boxes of image "
            f"{image_ids[i]}, got {boxes[i]} boxes for {gt_boxes[i]}"
        )


def _with_dtypes(packed: PackedImages) -> PackedImages:
    return PackedImages(
        **{f.name: getattr(packed, f.name) for f in fields(packed)}
        | {
            "gt_boxes": packed.gt_boxes.to(torch.float64),
            "gt_labels": packed.gt_labels.to(torch.int64),
            "relations": packed.relations.to(torch.int64),
            "boxes": packed.boxes.to(torch.float64),
            "labels": packed.labels.to(torch.int64),
            "label_scores": packed.label_scores.to(torch.float64),
            "pairs": packed.pairs.to(torch.int64),
        }
    )


def _check_indices(packed: PackedImages, image_ids: list[int], num_predicates: int) -> None:
    predicates = packed.relations[:, 2]
    outside = (predicates < 1) | (predicates > num_predicates)
    if outside.any():
        row = int(outside.nonzero()[0, 0])
        image = int(torch.searchsorted(packed.rel_count.cumsum(0), row, right=True))
        raise DatasetError(
            f"image {image_ids[image]}: GT predicate {int(predicates[row])} "
            f"outside 1..{num_predicates}; dataset and evaluator disagree"
        )
    boxes_of_pair = torch.repeat_interleave(packed.pred_count, packed.pair_count)  # (P,)
    if packed.pairs.numel() and (
        (packed.pairs < 0).any() or (packed.pairs >= boxes_of_pair[:, None]).any()
    ):
        raise ValueError("prediction pairs index boxes outside the image's predicted boxes")


@dataclass(frozen=True)
class _Layout:
    """Which image each row belongs to and where each image's rows start, on the device."""

    rel_image: Tensor  # (R,)
    pair_image: Tensor  # (P,)
    gt_start: Tensor  # (B,)
    pred_start: Tensor  # (B,)
    pair_start: Tensor  # (B,)

    @staticmethod
    def of(p: PackedImages) -> _Layout:
        images = torch.arange(p.num_images, device=p.gt_count.device)
        return _Layout(
            rel_image=torch.repeat_interleave(images, p.rel_count),
            pair_image=torch.repeat_interleave(images, p.pair_count),
            gt_start=p.gt_count.cumsum(0) - p.gt_count,
            pred_start=p.pred_count.cumsum(0) - p.pred_count,
            pair_start=p.pair_count.cumsum(0) - p.pair_count,
        )


@dataclass(frozen=True)
class _RankTable:
    """The best k' = min(k, most candidates of an image) predicted triplets of every image,
    best first: (B, k') tables.

    subjects/objects index the pack's predicted boxes; predicate 0 marks an empty slot.
    """

    subjects: Tensor
    objects: Tensor
    predicates: Tensor


def pooled_hits(
    packed: PackedImages,
    ks: tuple[int, ...],
    iou_threshold: float,
    num_predicates: int,
    train_keys: np.ndarray | None,
    device: torch.device,
) -> PooledImages:
    """Ranks and matches every image of ``packed`` on ``device``; see the module docstring."""
    p = _with_dtypes(packed.to(device))
    layout = _Layout.of(p)
    k_max = max(ks)
    subjects = p.pairs[:, 0] + layout.pred_start[layout.pair_image]  # (P,) into p.boxes
    objects = p.pairs[:, 1] + layout.pred_start[layout.pair_image]
    pair_weight = (p.label_scores[subjects], p.label_scores[objects])
    graph, pair_scores = _rank_with_graph_constraint(
        p, layout, subjects, objects, pair_weight, k_max
    )
    free = _rank_without_graph_constraint(
        p, layout, subjects, objects, pair_weight, pair_scores, k_max
    )
    tables = (graph, free)
    cut_offs = torch.tensor(ks, device=device)[:, None]  # (nK, 1)
    recalled = [  # each (nK, R) bool
        _first_match_rank(p, layout, table, iou_threshold)[None, :] < cut_offs for table in tables
    ]
    return _pool(p, layout, recalled, _unseen(p, layout, train_keys), num_predicates)


def _rank_with_graph_constraint(
    p: PackedImages,
    layout: _Layout,
    subjects: Tensor,
    objects: Tensor,
    pair_weight: tuple[Tensor, Tensor],
    k: int,
) -> tuple[_RankTable, Tensor]:
    """One triplet per pair, its best foreground predicate (the first maximum); also returns
    the (P,) float64 score of each pair's best triplet."""
    foreground = p.predicate_scores[:, 1:]  # (P, C)
    if foreground.numel() == 0:
        return _empty_table(p, k), foreground.new_zeros(0, dtype=torch.float64)
    best_score, best = foreground.max(dim=1)  # (P,) first maximum, as numpy's argmax
    scores = best_score.to(torch.float64) * pair_weight[0] * pair_weight[1]  # as triplet_match
    pair, valid = _top_k_per_row(scores, layout.pair_image, layout.pair_start, p.pair_count, k)
    table = _RankTable(subjects[pair], objects[pair], torch.where(valid, best[pair] + 1, 0))
    return table, scores


def _rank_without_graph_constraint(
    p: PackedImages,
    layout: _Layout,
    subjects: Tensor,
    objects: Tensor,
    pair_weight: tuple[Tensor, Tensor],
    pair_scores: Tensor,
    k: int,
) -> _RankTable:
    """Every (pair, foreground predicate), pair-major.

    A pair whose best triplet (``pair_scores``) is below the image's k-th best pair score
    cannot reach the top k, so only the other pairs are scored (exact for non-negative
    object scores, where a pair's best triplet bounds all of its triplets). Exact float64
    scores are computed for a few candidates only: those whose float32 score
    reaches each image's k-th best float32 score less a margin far above float32's rounding
    (a few 1e-7 relative), which keeps every triplet tied with or above the float64 k-th
    score. The stable row sort then decides among them by position, as
    ``triplet_match.top_k_stable`` does.
    """
    foreground = p.predicate_scores[:, 1:]  # (P, C)
    if foreground.numel() == 0:
        return _empty_table(p, k)
    num_classes = foreground.shape[1]
    kept = _pairs_that_can_rank(p, layout, pair_weight, pair_scores, k)  # (P',) ascending
    weight = (pair_weight[0] * pair_weight[1]).to(torch.float32)
    if len(kept) < len(pair_scores):
        kept_image = layout.pair_image[kept]
        kept_count = torch.bincount(kept_image, minlength=p.num_images)
        kept_start = kept_count.cumsum(0) - kept_count
        kept_scores, weight = foreground[kept], weight[kept]
    else:  # nothing to drop: no copy
        kept_image, kept_count, kept_start = layout.pair_image, p.pair_count, layout.pair_start
        kept_scores = foreground
    rough = _padded_rough_scores(kept_scores, weight, kept_image, kept_start, kept_count)
    threshold = _kth_largest(rough, k)
    threshold -= threshold.abs() * 1e-5
    image, column = torch.nonzero(rough >= threshold[:, None], as_tuple=True)
    real = column < kept_count[image] * num_classes  # padding enters images with < k entries
    image, column = image[real], column[real]
    local = torch.div(column, num_classes, rounding_mode="floor")
    pair = kept[kept_start[image] + local]
    predicate = column % num_classes
    exact = foreground[pair, predicate].to(torch.float64)
    exact = exact * pair_weight[0][pair] * pair_weight[1][pair]  # as triplet_match multiplies
    count = torch.bincount(image, minlength=p.num_images)
    chosen, valid = _top_k_per_row(exact, image, count.cumsum(0) - count, count, k)
    pair = pair[chosen]
    return _RankTable(subjects[pair], objects[pair], torch.where(valid, predicate[chosen] + 1, 0))


def _pairs_that_can_rank(
    p: PackedImages,
    layout: _Layout,
    pair_weight: tuple[Tensor, Tensor],
    pair_scores: Tensor,
    k: int,
) -> Tensor:
    """(P',) ascending indices of the pairs whose best triplet reaches the image's k-th best
    pair score (every pair of an image with fewer than k pairs)."""
    if p.max_pairs <= k or (pair_weight[0] < 0).any() or (pair_weight[1] < 0).any():
        return torch.arange(len(pair_scores), device=pair_scores.device)
    padded = pair_scores.new_full((p.num_images, p.max_pairs), -torch.inf)
    padded[layout.pair_image, _positions(layout.pair_image, layout.pair_start)] = pair_scores
    return torch.nonzero(pair_scores >= _kth_largest(padded, k)[layout.pair_image])[:, 0]


def _padded_rough_scores(
    foreground: Tensor, weight: Tensor, image: Tensor, start: Tensor, count: Tensor
) -> Tensor:
    """(B, most pairs x C) float32 triplet scores, pair-major per image, -inf padding.

    foreground: (P', C) of pairs grouped by image (``image``, ``start``, ``count``);
    weight: (P',) float32 subject x object score.
    """
    num_classes = foreground.shape[1]
    width = max(int(count.max()), 1)
    padded_row = image * width + _positions(image, start)
    rows = len(count) * width
    rough = torch.full((rows, num_classes), -torch.inf, device=foreground.device)
    rough.index_copy_(0, padded_row, foreground.to(torch.float32))
    row_weight = torch.ones(rows, device=foreground.device)  # padding keeps -inf
    row_weight[padded_row] = weight
    return rough.mul_(row_weight[:, None]).view(len(count), -1)


def _positions(row: Tensor, start: Tensor) -> Tensor:
    """(M,) position of each entry within its row, for entries grouped by row."""
    return torch.arange(len(row), device=row.device) - start[row]


def _kth_largest(dense: Tensor, k: int) -> Tensor:
    """(B, W) -> (B,) the k-th largest value of each row; -inf when a row has fewer than k."""
    rows, width = dense.shape
    if width <= k:
        return torch.full((rows,), -torch.inf, dtype=dense.dtype, device=dense.device)
    if dense.is_cuda:
        return dense.topk(k, dim=1, sorted=False).values.amin(dim=1)
    # On a CPU numpy's introselect is an order of magnitude faster than torch.topk.
    return torch.from_numpy(np.partition(dense.numpy(), width - k, axis=1)[:, width - k])


def _top_k_per_row(
    scores: Tensor, row: Tensor, start: Tensor, count: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """``scores`` (M,) grouped by row: row b holds entries start[b] .. start[b] + count[b] - 1.
    Per row, the entries of its k best scores, best first, equal scores in entry order (a
    stable sort).

    Returns index (B, k') into ``scores`` (any valid entry where ``valid`` is False) and
    valid (B, k') bool, k' = min(k, most entries of a row).
    """
    width = max(int(count.max()), 1)
    padded = scores.new_full((len(count), width), -torch.inf)
    padded[row, _positions(row, start)] = scores
    # Padding (-inf, after every entry of its row) sorts last, behind any real -inf too.
    order = torch.sort(padded, dim=1, descending=True, stable=True).indices[:, :k]
    valid = order < count[:, None]
    return (start[:, None] + order).clamp(max=max(len(scores) - 1, 0)), valid


def _empty_table(p: PackedImages, k: int) -> _RankTable:
    zeros = torch.zeros(p.num_images, k, dtype=torch.int64, device=p.gt_count.device)
    return _RankTable(zeros, zeros, zeros)


def _first_match_rank(
    p: PackedImages, layout: _Layout, table: _RankTable, iou_threshold: float
) -> Tensor:
    """(R,) rank of the best predicted triplet matching each GT triplet; NO_MATCH if none."""
    gt_start = layout.gt_start[layout.rel_image]
    gt_subjects, gt_objects = p.relations[:, 0] + gt_start, p.relations[:, 1] + gt_start
    same_predicate = table.predicates[layout.rel_image] == p.relations[:, 2:3]  # (R, k)
    row, slot = torch.nonzero(same_predicate, as_tuple=True)
    image = layout.rel_image[row]
    subjects, objects = table.subjects[image, slot], table.objects[image, slot]
    gt_s, gt_o = gt_subjects[row], gt_objects[row]
    matched = (
        (p.labels[subjects] == p.gt_labels[gt_s])
        & (p.labels[objects] == p.gt_labels[gt_o])
        & (_paired_iou_plus_one(p.gt_boxes[gt_s], p.boxes[subjects]) >= iou_threshold)
        & (_paired_iou_plus_one(p.gt_boxes[gt_o], p.boxes[objects]) >= iou_threshold)
    )
    first = torch.full((len(p.relations),), NO_MATCH, dtype=torch.int64, device=row.device)
    return first.scatter_reduce_(0, row[matched], slot[matched], reduce="amin")


def _paired_iou_plus_one(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """(M, 4), (M, 4) -> (M,) IoU of each row pair; the operations of
    ``triplet_match.box_iou_plus_one`` in the same order, so the values are bit-identical."""
    top_left = torch.maximum(boxes_a[:, :2], boxes_b[:, :2])
    bottom_right = torch.minimum(boxes_a[:, 2:], boxes_b[:, 2:])
    wh = (bottom_right - top_left + 1.0).clamp(min=0.0)
    intersection = wh[:, 0] * wh[:, 1]
    area_a = (boxes_a[:, 2] - boxes_a[:, 0] + 1.0) * (boxes_a[:, 3] - boxes_a[:, 1] + 1.0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0] + 1.0) * (boxes_b[:, 3] - boxes_b[:, 1] + 1.0)
    return intersection / (area_a + area_b - intersection)


def _unseen(p: PackedImages, layout: _Layout, train_keys: np.ndarray | None) -> Tensor:
    """(R,) bool: GT triplets whose (subject label, predicate, object label) is unseen."""
    if train_keys is None:
        return torch.zeros(len(p.relations), dtype=torch.bool, device=p.relations.device)
    gt_start = layout.gt_start[layout.rel_image]
    keys = (
        (p.gt_labels[p.relations[:, 0] + gt_start] << 42)
        | (p.relations[:, 2] << 21)
        | p.gt_labels[p.relations[:, 1] + gt_start]
    )  # as sgg_eval._triplet_keys
    if len(train_keys) == 0:
        return torch.ones(len(keys), dtype=torch.bool, device=keys.device)
    known = torch.from_numpy(train_keys).to(keys.device)
    position = torch.searchsorted(known, keys).clamp(max=len(known) - 1)
    return known[position] != keys


def _pool(
    p: PackedImages,
    layout: _Layout,
    recalled: list[Tensor],
    unseen: Tensor,
    num_predicates: int,
) -> PooledImages:
    size = num_predicates + 1
    predicates = p.relations[:, 2]
    # One entry per (image, predicate present in it), image-major as the per-image path pools.
    entries, entry_of_row, entry_counts = torch.unique(
        layout.rel_image * size + predicates, return_inverse=True, return_counts=True
    )
    entry_predicate = entries % size
    has_unseen = _per_image(unseen[None, :], layout, p.num_images)[0]  # (B,)
    out: dict[str, np.ndarray] = {}
    for prefix, hits in zip(("", "ng_"), recalled):
        per_image = _per_image(hits, layout, p.num_images)  # (nK, B)
        entry_hits = _zeros_like_rows(hits, len(entries)).index_add_(1, entry_of_row, hits.double())
        class_sum = _zeros_like_rows(hits, size).index_add_(
            1, entry_predicate, entry_hits / entry_counts
        )
        unseen_hits = _per_image(hits & unseen, layout, p.num_images)
        out[f"{prefix}image_recall"] = (per_image / p.rel_count).cpu().numpy()
        out[f"{prefix}unseen_recall"] = (
            (unseen_hits[:, has_unseen > 0] / has_unseen[has_unseen > 0]).cpu().numpy()
        )
        out[f"{prefix}class_sum"] = class_sum[:, 1:].cpu().numpy()
    return PooledImages(
        **out,
        class_images=torch.bincount(entry_predicate, minlength=size)[1:].cpu().numpy(),
        eval_counts=torch.bincount(predicates, minlength=size)[1:].cpu().numpy(),
    )


def _per_image(values: Tensor, layout: _Layout, num_images: int) -> Tensor:
    """(rows, R) bool or number -> (rows, B) float64 sums over each image's GT relations."""
    return _zeros_like_rows(values, num_images).index_add_(1, layout.rel_image, values.double())


def _zeros_like_rows(values: Tensor, width: int) -> Tensor:
    return torch.zeros(values.shape[0], width, dtype=torch.float64, device=values.device)
