"""DSG's iou_test on hand-made queries with values worked out by hand (14 x 14 grid).

Images are 140 x 140 pixels unless said otherwise, so one grid cell is 10 x 10 pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgstudy.errors import ConfigError
from sgstudy.evaluation.referring_eval import (
    ReferringEvaluator,
    grid_cells,
    per_predicate_iou_artifact,
)
from sgstudy.structures import ReferringPrediction, ReferringTarget

SUBJECT, OBJECT, OTHER = [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]


def target(boxes, subjects, objects, predicate=1, size=(140, 140), image_id=0) -> ReferringTarget:
    return ReferringTarget(
        image_id=image_id,
        image_size=size,
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.ones(len(boxes), dtype=torch.int64),
        relations=torch.zeros(0, 3, dtype=torch.int64),
        query=torch.tensor([1, predicate, 1]),
        subject_indices=torch.tensor(subjects, dtype=torch.int64),
        object_indices=torch.tensor(objects, dtype=torch.int64),
    )


def prediction(boxes, roles) -> ReferringPrediction:
    return ReferringPrediction(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(roles, dtype=torch.float32).reshape(-1, 4),
    )


def scores(pairs, num_predicates=3) -> dict[str, float]:
    evaluator = ReferringEvaluator(num_predicates)
    for t, p in pairs:
        evaluator.process([t], [p])
    return evaluator.evaluate().metrics


def test_a_box_covers_the_cells_from_floor_to_ceil():
    """x from 15 to 31 px on a 140-px image: 1.5 -> cell 1 to 3.1 -> cell 3 (ceil 4 exclusive)."""
    cells = grid_cells(np.array([[15.0, 0.0, 31.0, 10.0]]), np.array([[140, 140]]), 14)
    grid = cells.reshape(14, 14)
    assert grid[0].nonzero()[0].tolist() == [1, 2, 3]
    assert grid[:, 1].nonzero()[0].tolist() == [0]
    # On a 70 x 280 image a cell is 20 x 5 px: the same box spans x cells 0..1, y cell 0..1.
    wide = grid_cells(np.array([[15.0, 0.0, 31.0, 10.0]]), np.array([[70, 280]]), 14)
    assert wide.reshape(14, 14).nonzero()[1].tolist() == [0, 1, 0, 1]


def test_exact_match_scores_one_and_a_half_overlap_one_third():
    gt = target([[0, 0, 70, 70], [70, 70, 140, 140]], subjects=[0], objects=[1])
    # The subject is found exactly; the object box covers the GT's 49 cells and 49 more.
    pred = prediction([[0, 0, 70, 70], [0, 70, 140, 140]], [SUBJECT, OBJECT])
    metrics = scores([(gt, pred)])
    assert metrics["subject_iou"] == 1.0
    assert metrics["object_iou"] == pytest.approx(0.5)
    assert metrics["mean_iou"] == pytest.approx(0.75)
    assert metrics["num_queries"] == 1.0


def test_all_instances_count_toward_the_region():
    """Two GT subjects: finding one of two equal boxes gives IoU 1/2, finding both 1."""
    gt = target([[0, 0, 70, 70], [70, 70, 140, 140], [0, 70, 70, 140]], [0, 1], [2])
    one = prediction([[0, 0, 70, 70], [0, 70, 70, 140]], [SUBJECT, OBJECT])
    both = prediction([[0, 0, 70, 70], [70, 70, 140, 140], [0, 70, 70, 140]],
                      [SUBJECT, SUBJECT, OBJECT])  # fmt: skip
    assert scores([(gt, one)])["subject_iou"] == pytest.approx(0.5)
    assert scores([(gt, both)])["subject_iou"] == 1.0


def test_the_top_box_is_always_included():
    """No box's most probable role is "subject", yet the one with the highest P(subject)
    forms the subject region; a box whose argmax is "object" is in the object region and,
    being the top P(object) too, only once."""
    gt = target([[0, 0, 70, 70], [70, 70, 140, 140]], subjects=[0], objects=[1])
    pred = prediction(
        [[70, 70, 140, 140], [0, 0, 70, 70], [0, 0, 140, 140]],
        [[0.1, 0.2, 0.6, 0.1], [0.5, 0.4, 0.0, 0.1], [0.6, 0.3, 0.0, 0.1]],
    )
    metrics = scores([(gt, pred)])
    assert metrics["subject_iou"] == 1.0 and metrics["object_iou"] == 1.0


def test_empty_union_scores_zero_and_no_prediction_scores_zero():
    # A degenerate GT box covers no cell and nothing is predicted: the union is empty.
    gt = target([[20, 20, 20, 20], [0, 0, 70, 70]], subjects=[0], objects=[1])
    metrics = scores([(gt, prediction([], []))])
    assert metrics["subject_iou"] == 0.0 and metrics["object_iou"] == 0.0
    assert metrics["mean_iou"] == 0.0


def test_predicted_boxes_are_clipped_to_the_image():
    gt = target([[70, 70, 140, 140], [0, 0, 70, 70]], subjects=[0], objects=[1])
    pred = prediction([[70, 70, 400, 900], [-50, -50, 70, 70]], [SUBJECT, OBJECT])
    assert scores([(gt, pred)])["mean_iou"] == 1.0


def test_a_batch_scores_like_one_query_at_a_time():
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(12):
        size = (int(rng.integers(50, 200)), int(rng.integers(50, 200)))
        corners = rng.uniform(size=(6, 2, 2)) * [size[1], size[0]]
        boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
        gt = target(boxes[:3].tolist(), [0, 1][: 1 + i % 2], [2], predicate=1 + i % 3, size=size)
        roles = rng.dirichlet(np.ones(4), size=i % 4).tolist()
        pairs.append((gt, prediction(boxes[3 : 3 + i % 4].tolist(), roles)))
    one_by_one = ReferringEvaluator(3)
    for t, p in pairs:
        one_by_one.process([t], [p])
    batched = ReferringEvaluator(3)
    batched.process([t for t, _ in pairs[:7]], [p for _, p in pairs[:7]])
    batched.process([t for t, _ in pairs[7:]], [p for _, p in pairs[7:]])
    a, b = one_by_one.evaluate(), batched.evaluate()
    assert a.metrics == b.metrics
    assert np.array_equal(a.subject_iou, b.subject_iou) and a.subject_iou.shape == (12,)


def test_means_over_queries_and_the_per_predicate_artifact():
    gt = target([[0, 0, 70, 70], [70, 70, 140, 140]], subjects=[0], objects=[1], predicate=2)
    perfect = prediction([[0, 0, 70, 70], [70, 70, 140, 140]], [SUBJECT, OBJECT])
    swapped = prediction([[0, 0, 70, 70], [70, 70, 140, 140]], [OBJECT, SUBJECT])
    evaluator = ReferringEvaluator(3)
    evaluator.process([gt, gt], [perfect, swapped])
    result = evaluator.evaluate()
    assert result.metrics["subject_iou"] == 0.5 and result.metrics["mean_iou"] == 0.5
    artifact = per_predicate_iou_artifact(result, ["bg", "a", "b", "c"], np.array([0, 4, 5, 6]))
    assert artifact == {
        "predicates": ["a", "b", "c"],
        "train_query_counts": [4, 5, 6],
        "eval_query_counts": [0, 2, 0],
        "subject_iou": [None, 0.5, None],
        "object_iou": [None, 0.5, None],
    }
    evaluator.reset()
    assert all(math.isnan(v) for k, v in evaluator.evaluate().metrics.items() if k != "num_queries")


def test_bad_input_is_refused():
    gt = target([[0, 0, 70, 70]], subjects=[0], objects=[0])
    with pytest.raises(ValueError, match="role_scores"):
        ReferringEvaluator(3).process([gt], [prediction([[0, 0, 1, 1]], [])])
    with pytest.raises(ValueError, match="1 targets but 0 predictions"):
        ReferringEvaluator(3).process([gt], [])
    with pytest.raises(ConfigError, match="outside 1..3"):
        ReferringEvaluator(3).process([target([[0, 0, 1, 1]], [0], [0], predicate=4)],
                                      [prediction([], [])])  # fmt: skip
    with pytest.raises(ConfigError):
        ReferringEvaluator(0)
