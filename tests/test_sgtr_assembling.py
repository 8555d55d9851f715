"""SGTR's graph assembling and Hungarian matcher on hand-made cases with known answers."""

import math

import pytest
import torch

from sgstudy.models.sgtr.assembling import (
    Entities,
    assemble_pairs,
    role_scores,
    scene_graph,
    to_pixels,
)
from sgstudy.models.sgtr.matcher import (
    COST_WEIGHTS,
    QueryOutputs,
    TripletTargets,
    hungarian_match,
    match_cost,
)
from sgstudy.structures import SceneGraphTarget

NO_OBJECT = -1e4  # a logit whose softmax probability is 0


def class_logits(*probabilities):
    """Logits over (no-object, classes...) whose softmax is (0, probabilities...)."""
    return torch.tensor([[NO_OBJECT, *(math.log(p) for p in probabilities)]])


def two_entities():
    """e0: class 1 at the top left, e1: class 2 at the bottom right, on a 100 x 200 image."""
    probs = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.2, 0.8]])
    boxes = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])
    return Entities(probs, boxes, (100, 200))


def test_role_score_is_the_papers_product():
    entities = two_entities()
    # The indicator agrees exactly with e0: cos 1, GIoU 1, no centre distance.
    score = role_scores(
        class_logits(0.9, 0.1), entities.boxes[:1], entities.boxes[:1, :2], entities
    )
    assert score[0, 0].item() == pytest.approx(0.9**0.6, rel=1e-5)
    # e1: cosine of the two distributions, no overlap (GIoU < 0 counts 0).
    assert score[0, 1].item() == 0.0
    # Half a box width off in x: GIoU of two shifted boxes, distance 0.1 * 200 px = 20 px.
    shifted = torch.tensor([[0.35, 0.25, 0.2, 0.2]])
    score = role_scores(class_logits(0.9, 0.1), shifted, shifted[:, :2], entities)
    iou = 0.5 / 1.5  # overlap half a box, union one and a half; enclosing box = union
    assert score[0, 0].item() == pytest.approx(0.9**0.6 * iou / 21.0, rel=1e-4)
    unshaped = role_scores(class_logits(0.9, 0.1), shifted, shifted[:, :2], entities, shaping=False)
    assert unshaped[0, 0].item() == pytest.approx(0.9 * iou / 21.0, rel=1e-4)


def test_kth_subject_pairs_with_kth_object():
    subject_scores = torch.tensor([[0.9, 0.5, 0.1]])
    object_scores = torch.tensor([[0.2, 0.3, 0.8]])
    pairs = assemble_pairs(subject_scores, object_scores, k=2)
    # Two pairs (not 2 x 2): best subject with best object, second with second.
    assert pairs.subjects.tolist() == [[0, 1]] and pairs.objects.tolist() == [[2, 1]]
    assert pairs.subject_scores[0].tolist() == pytest.approx([0.9, 0.5])
    assert pairs.object_scores[0].tolist() == pytest.approx([0.8, 0.3])


def test_scene_graph_scores_drops_self_pairs_and_duplicates():
    entities = Entities(
        torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]),
        # e2 is e1 shifted by one pixel: IoU > 0.8, same label.
        torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2], [0.755, 0.75, 0.2, 0.2]]),
        (100, 100),
    )
    predicate_probs = torch.tensor([[0.1, 0.8], [0.5, 0.4], [0.9, 0.2], [0.3, 0.3]])
    subject_scores = torch.tensor([[0.5], [0.5], [0.4], [1.0]])
    pairs = assemble_pairs(
        subject_scores.new_tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
        * subject_scores,
        torch.tensor([[0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0], [0, 1.0, 0]]),
        k=1,
    )
    prediction = scene_graph(predicate_probs, pairs, entities)
    # q0: (e0, e1) predicate 2 at 0.8 * 0.5; q1: (e0, e2) predicate 1 at 0.25;
    # q2: (e0, e2) predicate 1 at 0.9 * 0.4 = 0.36 beats q1, which it duplicates: q1 dropped;
    # q3: (e1, e1) is a self-pair: dropped.
    assert prediction.pairs.tolist() == [[0, 1], [0, 2]]
    expected = torch.tensor([[0.0, 0.05, 0.4], [0.0, 0.36, 0.08]])
    assert torch.allclose(prediction.predicate_scores, expected)
    assert prediction.label_scores.tolist() == [1.0, 1.0, 1.0]
    assert prediction.labels.tolist() == [1, 2, 2]
    assert torch.allclose(prediction.boxes[0], torch.tensor([15.0, 15.0, 35.0, 35.0]))
    kept_all = scene_graph(predicate_probs, pairs, entities, duplicate_filter=False)
    assert kept_all.pairs.tolist() == [[0, 1], [0, 2], [0, 2]]


def query_outputs(entities, subject, object_, predicate_logits):
    """Outputs of queries whose indicators copy entities ``subject[i]``, ``object_[i]``."""
    logits = torch.log(entities.probs.clamp(min=1e-12))
    return QueryOutputs(
        predicate_logits=predicate_logits,
        relation_vectors=torch.cat(
            (entities.boxes[subject, :2], entities.boxes[object_, :2]), dim=1
        ),
        subject_logits=logits[subject],
        object_logits=logits[object_],
        subject_boxes=entities.boxes[subject],
        object_boxes=entities.boxes[object_],
    )


def triplets_of(entities, relations):
    boxes = to_pixels(entities.boxes, entities.size)
    target = SceneGraphTarget(0, entities.size, boxes, entities.labels, torch.as_tensor(relations))
    return TripletTargets.from_target(target)


def test_cost_of_a_perfect_candidate_is_the_formula():
    entities = two_entities()
    outputs = query_outputs(entities, [0], [1], torch.tensor([[0.0, 2.0]]))
    targets = triplets_of(entities, [[0, 1, 2]])
    cost = match_cost(outputs, entities, targets, k=1)
    w = COST_WEIGHTS
    p_predicate = torch.sigmoid(torch.tensor(2.0)).item()
    scores = [0.9**0.6, 0.8**0.6]  # cos 1, GIoU 1, distance 0: only s_ent^0.6 is left
    expected = (
        w["predicate"] * 32 ** (-p_predicate)
        + w["entity_class"] * 32 ** (-(0.9 + 0.8))
        + w["entity_giou"] * 32 ** (-2.0)
        + w["assembling"] * (1.0 - sum(scores) / 2)
    )
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(expected, rel=1e-4)


def test_hungarian_gives_each_gt_its_query():
    entities = Entities(
        torch.tensor([[0.0, 0.9, 0.1, 0.0], [0.0, 0.1, 0.8, 0.1], [0.0, 0.0, 0.1, 0.9]]),
        torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]]),
        (100, 100),
    )
    # GT: 0 -1-> 1 and 2 -2-> 1. Query 0 describes the second, query 1 nothing, query 2 the first.
    predicate_logits = torch.tensor([[-3.0, 3.0], [0.0, 0.0], [3.0, -3.0]])
    outputs = query_outputs(entities, [2, 0, 0], [1, 2, 1], predicate_logits)
    targets = triplets_of(entities, [[0, 1, 1], [2, 1, 2]])
    queries, gts = hungarian_match(outputs, entities, targets, k=1)
    assert dict(zip(gts.tolist(), queries.tolist())) == {0: 2, 1: 0}
    empty = triplets_of(entities, torch.zeros(0, 3, dtype=torch.long))
    queries, gts = hungarian_match(outputs, entities, empty, k=1)
    assert queries.numel() == 0 and gts.numel() == 0
