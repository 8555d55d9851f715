"""The evaluator's two paths and its reference-compatible switch.

- batched (torch, the default) == per image (numpy) within 1e-12 on random images of every
  protocol, exact score ties included;
- ``reference_compatible`` reproduces Scene-Graph-Benchmark in its three corner cases, each
  shown both ways: float32 IoU, the reference's own order on exact ties, and images with GT
  relations but no predicted pair skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sgstudy.evaluation import sgg_eval
from sgstudy.evaluation.sgg_eval import SceneGraphEvaluator
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget

REPO = Path(__file__).resolve().parents[1]


def load_bench_eval():
    spec = importlib.util.spec_from_file_location("bench_eval", REPO / "benchmarks/bench_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metrics_of(evaluator, targets, predictions) -> dict[str, np.ndarray]:
    for begin in range(0, len(targets), 8):
        evaluator.process(targets[begin : begin + 8], predictions[begin : begin + 8])
    result = evaluator.evaluate()
    out = {key: np.array([value]) for key, value in result.metrics.items()}
    for k in evaluator.ks:
        out[f"per_predicate_{k}"] = result.per_predicate_recall[k]
        out[f"ng_per_predicate_{k}"] = result.per_predicate_ng_recall[k]
    out["eval_counts"] = result.eval_predicate_counts
    return out


def with_ties(prediction: SceneGraphPrediction, rng: np.random.Generator) -> SceneGraphPrediction:
    """Scores rounded to eighths (label scores to halves): many exact ties in both rankings."""
    scores = (prediction.predicate_scores * 8).round() / 8
    if rng.random() < 0.1:  # and some images without any predicted pair
        return SceneGraphPrediction(
            prediction.boxes, prediction.labels, prediction.label_scores,
            torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, scores.shape[1]),
        )  # fmt: skip
    label_scores = (prediction.label_scores * 2).round().clamp(min=1) / 2
    return SceneGraphPrediction(
        prediction.boxes, prediction.labels, label_scores, prediction.pairs, scores
    )


@pytest.mark.parametrize("protocol", ["predcls", "sgcls", "sgdet"])
@pytest.mark.parametrize("ties", [False, True])
def test_batched_equals_per_image_on_random_images(protocol, ties, monkeypatch):
    bench = load_bench_eval()
    rng = np.random.default_rng(7)
    targets = [bench.random_target(rng, i) for i in range(48)]
    targets[3] = SceneGraphTarget(3, (800, 800), targets[3].boxes, targets[3].labels,
                                  torch.zeros(0, 3, dtype=torch.int64))  # fmt: skip
    pairs = [int(rng.integers(1, 100)) for _ in targets]  # some images below K candidates
    predictions = [bench.random_prediction(rng, t, protocol, n) for t, n in zip(targets, pairs)]
    if ties:
        predictions = [with_ties(prediction, rng) for prediction in predictions]
    train = bench.training_triplets(rng, 300)
    # Small chunks: the batched path must also agree across its chunk boundaries.
    monkeypatch.setattr(sgg_eval, "CHUNK_SCORES", 12 * 100 * bench.NUM_PREDICATES)
    # K below some images' pair counts: the batched path then drops pairs that cannot rank.
    evaluators = [
        SceneGraphEvaluator(protocol, bench.NUM_PREDICATES, train, ks=(10, 20, 50), batched=batched)
        for batched in (True, False)
    ]
    batched, per_image = (metrics_of(e, targets, predictions) for e in evaluators)
    assert len(evaluators[0]._pools) > 1  # really chunked
    assert batched.keys() == per_image.keys()
    for key, expected in per_image.items():
        np.testing.assert_allclose(batched[key], expected, rtol=0, atol=1e-12, err_msg=key)
    assert batched["num_images"][0] == 47


# ------------------------------------------------------------------ reference_compatible
def image(relations, labels, boxes):
    return SceneGraphTarget(
        image_id=0,
        image_size=(100, 400),
        boxes=torch.tensor(boxes, dtype=torch.float32),
        labels=torch.tensor(labels),
        relations=torch.tensor(relations, dtype=torch.int64).reshape(-1, 3),
    )


def prediction(boxes, labels, pairs, scores):
    return SceneGraphPrediction(
        boxes=torch.tensor(boxes, dtype=torch.float32),
        labels=torch.tensor(labels),
        label_scores=torch.ones(len(labels)),
        pairs=torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2),
        predicate_scores=torch.tensor(np.asarray(scores, np.float32).reshape(len(pairs), -1))
        if len(pairs)
        else torch.zeros(0, 2),
    )


def evaluate(protocol, num_predicates, images, ks=(20, 50, 100), **options):
    evaluator = SceneGraphEvaluator(protocol, num_predicates, None, ks=ks, **options)
    evaluator.process([t for t, _ in images], [p for _, p in images])
    return evaluator.evaluate().metrics


def test_float32_iou_decides_a_match_within_float_rounding_of_the_threshold():
    # GT subject [0, 0, 9, 9] (100 px); the predicted one [0, 0, 9, y2] contains it, so
    # IoU = 100 / (10 (y2 + 1)). y2 = 19 + 2**-19 (a float32): in float64 IoU = 0.49999995 and
    # misses 0.5; KT's float32 arithmetic rounds it to exactly 0.5 and matches.
    y2 = float(np.float32(19) + np.float32(2**-19))
    gt_boxes = [[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0]]
    target = image([(0, 1, 1)], [1, 2], gt_boxes)
    detected = prediction([[0.0, 0.0, 9.0, y2], gt_boxes[1]], [1, 2], [(0, 1)], [[0.1, 0.9]])
    for batched in (True, False):
        assert evaluate("sgdet", 1, [(target, detected)], batched=batched)["R_20"] == 0.0
    assert evaluate("sgdet", 1, [(target, detected)], reference_compatible=True)["R_20"] == 1.0


def tied_image(graph_constraint: bool) -> tuple[SceneGraphTarget, np.ndarray, np.ndarray]:
    """PredCls, 8 objects, all 56 ordered pairs, C = 2, scores from three values (many ties);
    returns the target without relations, the (P, 2) pairs and (P, C + 1) float32 scores."""
    rng = np.random.default_rng(0)
    boxes = [[30.0 * i, 0.0, 30.0 * i + 9.0, 9.0] for i in range(8)]
    pairs = np.array([(s, o) for s in range(8) for o in range(8) if s != o])
    values = np.array([0.25, 0.5, 0.75], dtype=np.float32)
    foreground = values[rng.integers(0, 3, (len(pairs), 2))]
    if graph_constraint:
        foreground[:, 1] = 0.0  # one candidate per pair: predicate 1
    scores = np.column_stack([1 - foreground.max(axis=1), foreground]).astype(np.float32)
    return image([], list(range(1, 9)), boxes), pairs, scores


def test_exact_ties_follow_the_reference_sorts_only_when_asked():
    k = 20
    for graph_constraint in (True, False):
        empty, pairs, scores = tied_image(graph_constraint)
        foreground = scores[:, 1:]
        if graph_constraint:  # KT's post-processor: torch.sort, descending
            reference = torch.sort(torch.from_numpy(foreground[:, 0]), descending=True)
            reference_order = reference.indices.numpy()
        else:  # KT's argsort_desc: numpy's default sort of the negated scores, pair-major
            reference_order = np.argsort(-foreground.ravel())
        flat = foreground[:, 0] if graph_constraint else foreground.ravel()
        stable_order = np.argsort(-flat, kind="stable")
        only_reference = sorted(set(reference_order[:k]) - set(stable_order[:k]))
        assert only_reference, "the reference's sort kept input order on this tie pattern"
        # The GT triplet is a candidate the reference ranks in its top K, a stable sort not.
        pair, column = divmod(int(only_reference[0]), 1 if graph_constraint else 2)
        subject, obj = (int(v) for v in pairs[pair])
        target = image([(subject, obj, column + 1)], empty.labels.tolist(), empty.boxes.tolist())
        predicted = prediction(empty.boxes.tolist(), empty.labels.tolist(), pairs, scores)
        key = f"R_{k}" if graph_constraint else f"ng_R_{k}"
        for batched in (True, False):
            default = evaluate("predcls", 2, [(target, predicted)], (k,), batched=batched)
            assert default[key] == 0.0
        compatible = evaluate("predcls", 2, [(target, predicted)], (k,), reference_compatible=True)
        assert compatible[key] == 1.0


def test_an_image_without_predicted_pairs_counts_zero_unless_reference_compatible():
    boxes = [[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0]]
    recalled = image([(0, 1, 1)], [1, 2], boxes)
    hit = prediction(boxes, [1, 2], [(0, 1)], [[0.1, 0.9]])
    no_pairs = prediction(boxes, [1, 2], [], [])
    images = [(recalled, hit), (recalled, no_pairs)]
    for batched in (True, False):
        default = evaluate("predcls", 1, images, batched=batched)
        assert (default["R_50"], default["mR_50"], default["num_images"]) == (0.5, 0.5, 2.0)
    compatible = evaluate("predcls", 1, images, reference_compatible=True)
    assert (compatible["R_50"], compatible["mR_50"], compatible["num_images"]) == (1.0, 1.0, 1.0)


def test_reference_compatible_runs_per_image_and_the_device_defaults_to_cuda_when_present():
    evaluator = SceneGraphEvaluator("predcls", 2, None, reference_compatible=True)
    assert not evaluator.batched
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert SceneGraphEvaluator("predcls", 2, None).device.type == expected
