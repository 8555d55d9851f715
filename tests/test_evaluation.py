"""Scene-graph recall metrics on hand-made images with values worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgstudy import metric_names
from sgstudy.errors import ConfigError, DatasetError
from sgstudy.evaluation.sgg_eval import SceneGraphEvaluator, per_predicate_artifact
from sgstudy.evaluation.triplet_match import box_iou_plus_one, top_k_stable
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget

REPO = Path(__file__).resolve().parents[1]


def make_target(relations: list[tuple[int, int, int]], labels: list[int], boxes=None):
    """relations: (subject index, object index, predicate); boxes default to disjoint squares."""
    if boxes is None:
        boxes = [[30.0 * i, 0.0, 30.0 * i + 9.0, 9.0] for i in range(len(labels))]
    return SceneGraphTarget(
        image_id=0,
        image_size=(100, 400),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        relations=torch.tensor(relations, dtype=torch.int64).reshape(-1, 3),
    )


def make_prediction(target, scored_pairs, num_predicates, boxes=None, labels=None):
    """scored_pairs: {(subject, object): predicate_scores row of length C + 1}."""
    boxes = target.boxes if boxes is None else torch.tensor(boxes, dtype=torch.float32)
    labels = target.labels if labels is None else torch.tensor(labels, dtype=torch.int64)
    rows = list(scored_pairs.values())
    return SceneGraphPrediction(
        boxes=boxes,
        labels=labels,
        label_scores=torch.ones(len(labels)),
        pairs=torch.tensor(list(scored_pairs), dtype=torch.int64).reshape(-1, 2),
        predicate_scores=torch.tensor(rows, dtype=torch.float64).reshape(-1, num_predicates + 1),
    )


def one_predicate(num_predicates: int, predicate: int, score: float) -> list[float]:
    """A score row whose best foreground predicate is ``predicate`` with ``score``."""
    row = [0.0] * (num_predicates + 1)
    row[0] = 1.0 - score
    row[predicate] = score
    return row


def run(evaluator, *images):
    evaluator.process([t for t, _ in images], [p for _, p in images])
    return evaluator.evaluate()


def test_perfect_prediction_recalls_everything():
    target = make_target([(0, 1, 1), (1, 2, 2), (2, 0, 3)], labels=[1, 2, 3])
    scored = {(s, o): one_predicate(3, p, 0.9) for s, o, p in target.relations.tolist()}
    scored.update({(0, 2): [1.0, 0, 0, 0], (1, 0): [1.0, 0, 0, 0], (2, 1): [1.0, 0, 0, 0]})
    result = run(
        SceneGraphEvaluator("predcls", 3, None), (target, make_prediction(target, scored, 3))
    )
    assert list(result.metrics) == metric_names.all_recall_keys() + ["num_images"]
    for k in metric_names.RECALL_KS:
        for family in ("R", "mR", "ng_R", "ng_mR"):
            assert result.metrics[metric_names.recall_key(family, k)] == 1.0
        assert math.isnan(result.metrics[metric_names.recall_key("zR", k)])  # no train triplets
        np.testing.assert_array_equal(result.per_predicate_recall[k], [1.0, 1.0, 1.0])
    assert result.metrics["num_images"] == 1.0
    np.testing.assert_array_equal(result.eval_predicate_counts, [1, 1, 1])


def test_known_ranking_gives_known_recall():
    # GT: A=(0,1,p1) B=(1,2,p2) C=(2,3,p3) D=(3,0,p1). Ranked predictions, best first:
    #   rank 0 (0,2,p1) 0.9 wrong pair   rank 1 (1,2,p2) 0.8 hits B   rank 2 (0,1,p1) 0.7 hits A
    #   rank 3 (3,0,p2) 0.6 wrong pred   rank 4 (2,3,p3) 0.5 hits C
    # R@1 = 0/4, R@2 = 1/4 (B), R@3 = 2/4 (B, A), R@5 = 3/4 (B, A, C); D is never recalled.
    target = make_target([(0, 1, 1), (1, 2, 2), (2, 3, 3), (3, 0, 1)], labels=[1, 2, 3, 4])
    scored = {
        (2, 3): one_predicate(3, 3, 0.5),
        (0, 1): one_predicate(3, 1, 0.7),
        (3, 0): one_predicate(3, 2, 0.6),
        (1, 2): one_predicate(3, 2, 0.8),
        (0, 2): one_predicate(3, 1, 0.9),
    }
    evaluator = SceneGraphEvaluator("predcls", 3, None, ks=(1, 2, 3, 5))
    result = run(evaluator, (target, make_prediction(target, scored, 3)))
    recalls = [result.metrics[f"R_{k}"] for k in (1, 2, 3, 5)]
    assert recalls == [0.0, 0.25, 0.5, 0.75]
    # At K=5, per predicate: p1 has A hit, D missed -> 1/2; p2: B -> 1; p3: C -> 1.
    np.testing.assert_array_equal(result.per_predicate_recall[5], [0.5, 1.0, 1.0])
    assert result.metrics["mR_5"] == pytest.approx(2.5 / 3, abs=1e-12)


def test_graph_constraint_keeps_only_the_best_predicate_per_pair():
    # The pair's GT predicate p2 is second best: graph constraint keeps (0,1,p1) only and misses;
    # without it (0,1,p1) 0.5 ranks first and (0,1,p2) 0.4 second, so ng-R@2 = 1 but ng-R@1 = 0.
    target = make_target([(0, 1, 2)], labels=[1, 2])
    prediction = make_prediction(target, {(0, 1): [0.1, 0.5, 0.4]}, 2)
    result = run(SceneGraphEvaluator("predcls", 2, None, ks=(1, 2)), (target, prediction))
    assert (result.metrics["R_1"], result.metrics["R_2"]) == (0.0, 0.0)
    assert (result.metrics["ng_R_1"], result.metrics["ng_R_2"]) == (0.0, 1.0)
    np.testing.assert_array_equal(result.per_predicate_ng_recall[2], [0.0, 1.0])


def test_mean_recall_averages_per_predicate_over_images_not_pooled():
    # Image 1: p1 x1 recalled, p2 x3 all missed -> per image recall p1 = 1, p2 = 0.
    # Image 2: p2 x1 recalled                   -> p2 = 1.
    # Class recall p1 = 1, p2 = mean(0, 1) = 0.5 -> mR = 0.75 (pooled hits/counts: p2 = 1/4,
    # mR = 0.625). R = mean(1/4, 1/1) = 0.625. Groups: head = {p1} -> 1, body = {p2} -> 0.5.
    first = make_target([(0, 1, 1), (1, 2, 2), (2, 3, 2), (3, 4, 2)], labels=[1, 1, 1, 1, 1])
    first_scored = {(0, 1): one_predicate(2, 1, 0.9)}
    first_scored.update({(s, s + 1): one_predicate(2, 1, 0.8) for s in (1, 2, 3)})  # wrong pred
    second = make_target([(0, 1, 2)], labels=[2, 2])
    evaluator = SceneGraphEvaluator(
        "predcls", 2, None, predicate_groups={"head": [1], "body": [2], "tail": []}
    )
    result = run(
        evaluator,
        (first, make_prediction(first, first_scored, 2)),
        (second, make_prediction(second, {(0, 1): one_predicate(2, 2, 0.9)}, 2)),
    )
    np.testing.assert_array_equal(result.per_predicate_recall[50], [1.0, 0.5])
    assert result.metrics["mR_50"] == 0.75
    assert result.metrics["R_50"] == 0.625
    assert (result.metrics["head_mR_50"], result.metrics["body_mR_50"]) == (1.0, 0.5)
    assert math.isnan(result.metrics["tail_mR_50"])  # an empty group has nothing to average
    expected_keys = metric_names.all_recall_keys() + metric_names.all_group_keys() + ["num_images"]
    assert sorted(result.metrics) == sorted(expected_keys)
    np.testing.assert_array_equal(result.eval_predicate_counts, [1, 4])


def test_predicate_absent_from_split_counts_zero_in_mean_recall():
    # C = 3 but the split only has p1 and p2, both recalled: mR = (1 + 1 + 0) / 3.
    target = make_target([(0, 1, 1), (1, 0, 2)], labels=[1, 2])
    scored = {(0, 1): one_predicate(3, 1, 0.9), (1, 0): one_predicate(3, 2, 0.9)}
    result = run(
        SceneGraphEvaluator("predcls", 3, None), (target, make_prediction(target, scored, 3))
    )
    assert result.metrics["R_20"] == 1.0
    assert result.metrics["mR_20"] == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_array_equal(result.per_predicate_recall[20], [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(result.eval_predicate_counts, [1, 1, 0])


def test_zero_shot_counts_only_unseen_triplets_and_skips_images_without_any():
    # Training saw only (label 1, p1, label 2).
    # Image 1, labels [1, 2, 3]: (0,1,p1) = (1,p1,2) seen, recalled; (1,2,p2) = (2,p2,3) unseen,
    #   recalled; (0,2,p1) = (1,p1,3) unseen, missed -> zero-shot recall 1/2.
    # Image 2, labels [1, 2]: only the seen (1,p1,2), missed -> no unseen triplet, skipped.
    # Image 3, labels [3, 3]: (3,p2,3) unseen, recalled -> 1.
    # zR = mean(1/2, 1) = 0.75 (0.5 if image 2 counted as 0). R = mean(2/3, 0, 1) = 5/9.
    image1 = make_target([(0, 1, 1), (1, 2, 2), (0, 2, 1)], labels=[1, 2, 3])
    scored1 = {(0, 1): one_predicate(2, 1, 0.9), (1, 2): one_predicate(2, 2, 0.9)}
    image2 = make_target([(0, 1, 1)], labels=[1, 2])
    image3 = make_target([(0, 1, 2)], labels=[3, 3])
    evaluator = SceneGraphEvaluator("predcls", 2, np.array([[1, 1, 2]]), ks=(5,))
    result = run(
        evaluator,
        (image1, make_prediction(image1, scored1, 2)),
        (image2, make_prediction(image2, {(0, 1): one_predicate(2, 2, 0.9)}, 2)),
        (image3, make_prediction(image3, {(0, 1): one_predicate(2, 2, 0.9)}, 2)),
    )
    assert result.metrics["zR_5"] == 0.75
    assert result.metrics["R_5"] == pytest.approx(5 / 9, abs=1e-12)
    seen_only = SceneGraphEvaluator("predcls", 2, np.array([[1, 1, 2]]), ks=(5,))
    only_seen = run(seen_only, (image2, make_prediction(image2, {}, 2)))
    assert math.isnan(only_seen.metrics["zR_5"])


# GT subject [0, 0, 9, 9] covers 10 x 10 = 100 pixels with the +1 convention. A predicted
# subject [0, 0, 9, y2] covers 10 x (y2 + 1) and contains the GT box, so IoU = 100 / (10 (y2 + 1)):
#   y2 = 18 -> 100 / 190 = 0.526 (matched)        y2 = 19 -> 100 / 200 = 0.500 (matched, >=)
#   y2 = 20 -> 100 / 210 = 0.476 (missed)
# Without the +1, y2 = 19 would give 81 / 171 = 0.474 and miss: the convention decides it.
@pytest.mark.parametrize(("y2", "recalled"), [(18.0, 1.0), (19.0, 1.0), (20.0, 0.0)])
def test_sgdet_matches_at_iou_half_with_the_plus_one_convention(y2, recalled):
    boxes = [[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0]]
    target = make_target([(0, 1, 1)], labels=[1, 2], boxes=boxes)
    predicted_boxes = [[0.0, 0.0, 9.0, y2], [20.0, 20.0, 29.0, 29.0], [200.0, 200.0, 250.0, 250.0]]
    scored = {(0, 1): one_predicate(1, 1, 0.9), (2, 1): one_predicate(1, 1, 0.95)}
    prediction = make_prediction(target, scored, 1, boxes=predicted_boxes, labels=[1, 2, 1])
    result = run(SceneGraphEvaluator("sgdet", 1, None), (target, prediction))
    assert result.metrics["R_20"] == recalled
    assert box_iou_plus_one(np.array(boxes[:1]), np.array(predicted_boxes[:1]))[0, 0] == (
        pytest.approx(100 / (10 * (y2 + 1)), abs=1e-12)
    )


def test_sgdet_needs_both_boxes_and_labels():
    boxes = [[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0]]
    target = make_target([(0, 1, 1)], labels=[1, 2], boxes=boxes)
    scored = {(0, 1): one_predicate(1, 1, 0.9)}
    far_object = make_prediction(target, scored, 1, boxes=[boxes[0], [60, 60, 69, 69]])
    wrong_label = make_prediction(target, scored, 1, labels=[1, 1])
    evaluator = SceneGraphEvaluator("sgdet", 1, None)
    assert run(evaluator, (target, far_object)).metrics["R_100"] == 0.0
    evaluator.reset()
    assert run(evaluator, (target, wrong_label)).metrics["R_100"] == 0.0


def test_fewer_candidates_than_k_and_duplicate_gt():
    # One candidate pair, C = 2. GT: (0,1,p1) twice (kept duplicates) and (1,0,p2).
    # Graph: the single triplet (0,1,p1) recalls both duplicates -> 2/3 at every K.
    # No graph: (0,1,p1), (0,1,p2) -> still 2/3, (1,0) never scored.
    target = make_target([(0, 1, 1), (0, 1, 1), (1, 0, 2)], labels=[1, 2])
    prediction = make_prediction(target, {(0, 1): [0.1, 0.6, 0.3]}, 2)
    result = run(SceneGraphEvaluator("predcls", 2, None), (target, prediction))
    for k in metric_names.RECALL_KS:
        assert result.metrics[f"R_{k}"] == pytest.approx(2 / 3, abs=1e-12)
        assert result.metrics[f"ng_R_{k}"] == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_array_equal(result.eval_predicate_counts, [2, 1])


def test_empty_predictions_and_images_without_relations():
    target = make_target([(0, 1, 1)], labels=[1, 2])
    no_relations = make_target([], labels=[1, 2])
    empty = make_prediction(target, {}, 2)
    no_boxes = SceneGraphPrediction(
        torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0),
        torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 3),
    )  # fmt: skip
    result = run(SceneGraphEvaluator("predcls", 2, None), (target, empty), (no_relations, empty))
    assert result.metrics["num_images"] == 1.0  # the image without GT relations is skipped
    assert result.metrics["R_100"] == 0.0 and result.metrics["ng_mR_100"] == 0.0
    sgdet = run(SceneGraphEvaluator("sgdet", 2, None), (target, no_boxes))
    assert sgdet.metrics["R_20"] == 0.0
    nothing = SceneGraphEvaluator("predcls", 2, None).evaluate()
    assert nothing.metrics["num_images"] == 0.0 and math.isnan(nothing.metrics["R_20"])
    assert nothing.metrics["mR_20"] == 0.0  # every predicate absent counts 0, as in KT


def test_reset_forgets_processed_images():
    target = make_target([(0, 1, 1)], labels=[1, 2])
    evaluator = SceneGraphEvaluator("predcls", 1, None)
    run(evaluator, (target, make_prediction(target, {(0, 1): [0.1, 0.9]}, 1)))
    evaluator.reset()
    result = run(evaluator, (target, make_prediction(target, {(1, 0): [0.1, 0.9]}, 1)))
    assert result.metrics["R_20"] == 0.0 and result.metrics["num_images"] == 1.0


def test_per_predicate_artifact_schema():
    target = make_target([(0, 1, 1), (1, 0, 2)], labels=[1, 2])
    scored = {(0, 1): one_predicate(3, 1, 0.9), (1, 0): one_predicate(3, 3, 0.9)}
    # Graph constraint: (1,0) is predicted p3, so GT (1,0,p2) is missed -> recall [1, 0, 0].
    # Without it every (pair, predicate) of the 2 pairs x 3 predicates is in the top 20, even
    # (1,0,p2) at score 0 -> ng recall [1, 1, 0]. p3 never occurs in the split -> 0.
    groups = {"head": [1], "body": [3], "tail": [2]}
    evaluator = SceneGraphEvaluator("predcls", 3, None, predicate_groups=groups)
    result = run(evaluator, (target, make_prediction(target, scored, 3)))
    names = ["__background__", "on", "has", "near"]
    artifact = per_predicate_artifact(result, names, np.array([7, 30, 5, 12]), groups)
    assert artifact == {
        "predicates": ["on", "has", "near"],
        "train_counts": [30, 5, 12],
        "eval_counts": [1, 1, 0],
        "groups": {"head": ["on"], "body": ["near"], "tail": ["has"]},
        "recall": {"20": [1.0, 0.0, 0.0], "50": [1.0, 0.0, 0.0], "100": [1.0, 0.0, 0.0]},
        "ng_recall": {"20": [1.0, 1.0, 0.0], "50": [1.0, 1.0, 0.0], "100": [1.0, 1.0, 0.0]},
    }
    with pytest.raises(ValueError, match="4 predicate names"):
        per_predicate_artifact(result, names[:3], np.array([7, 30, 5, 12]), groups)


def test_bad_arguments_raise_config_errors():
    with pytest.raises(ConfigError, match="protocol"):
        SceneGraphEvaluator("detection", 3, None)
    with pytest.raises(ConfigError, match="predicate_groups"):
        SceneGraphEvaluator("predcls", 3, None, predicate_groups={"tail": [4]})
    with pytest.raises(ConfigError, match="train_triplets"):
        SceneGraphEvaluator("predcls", 3, np.zeros((4, 2)))
    target = make_target([(0, 1, 1)], labels=[1, 2])
    evaluator = SceneGraphEvaluator("predcls", 3, None)
    with pytest.raises(ConfigError, match="predicate_scores"):
        evaluator.process([target], [make_prediction(target, {(0, 1): [0.5, 0.5]}, 1)])
    unknown_predicate = make_target([(0, 1, 4)], labels=[1, 2])
    with pytest.raises(DatasetError, match="GT predicate 4"):
        evaluator.process([unknown_predicate], [make_prediction(target, {}, 3)])


def test_top_k_stable_equals_a_full_stable_sort():
    rng = np.random.default_rng(0)
    for size, k in [(50, 10), (7, 10), (200, 1), (200, 200)]:
        scores = rng.integers(0, 5, size).astype(np.float64)  # many ties
        np.testing.assert_array_equal(
            top_k_stable(scores, k), np.argsort(-scores, kind="stable")[:k]
        )


def test_vectorised_evaluator_agrees_with_the_loop_reference_on_random_images():
    for protocol in ("sgdet", "predcls"):
        completed = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "bench_eval.py"), "--images", "60",
             "--protocol", protocol, "--seed", "3", "--repeats", "1"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        assert "metrics agree" in completed.stdout
        assert "batched and per-image metrics agree within 1e-12" in completed.stdout
