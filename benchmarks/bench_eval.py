"""Times the SceneGraphEvaluator, batched and per image, against a plain per-image loop.

Random scene graphs (about 8 objects and 10 GT relations per image, long-tailed labels
and predicates, C = 50) and random predictions for them (up to ``--pairs`` candidate
pairs, the GT predicate boosted on GT pairs so that recall is neither 0 nor 1) are
evaluated three times: by ``sgstudy.evaluation.sgg_eval`` batched in torch (its default;
on CUDA when present), by the same evaluator per image in numpy (``batched=False``), and by
``reference_metrics`` below, written as obvious loops in the manner of KT's ``sgg_eval.py``.
The two evaluator paths must agree within 1e-12 and both with the loops within 1e-9, on
every metric and per-predicate recall; then the timings and speed-ups are printed.

    python benchmarks/bench_eval.py [--images 5000] [--pairs 100] [--protocol sgdet]
                                    [--seed 0] [--reference-images N]

In PredCls/SGCls the candidates are the ordered pairs of the GT objects (8 objects give
56 < 100); SGDet adds predicted boxes beyond the GT ones, so the default is SGDet.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import numpy as np
import torch

from sgstudy import metric_names
from sgstudy.evaluation.sgg_eval import SceneGraphEvaluator
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget

NUM_PREDICATES = 50
NUM_OBJECT_CLASSES = 150
IMAGE_SIDE = 800.0


def long_tail(size: int, exponent: float) -> np.ndarray:
    """Zipf-like probabilities over ``size`` classes, class 0 most frequent."""
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return weights / weights.sum()


LABEL_P = long_tail(NUM_OBJECT_CLASSES, 1.0)
PREDICATE_P = long_tail(NUM_PREDICATES, 1.2)


def random_target(rng: np.random.Generator, image_id: int) -> SceneGraphTarget:
    num_objects = int(rng.integers(6, 11))
    top_left = rng.uniform(0, IMAGE_SIDE - 220, (num_objects, 2)).round()
    size = rng.uniform(20, 200, (num_objects, 2)).round()
    subjects = rng.integers(0, num_objects, int(rng.integers(8, 13)))
    objects = (subjects + rng.integers(1, num_objects, len(subjects))) % num_objects  # != subject
    predicates = rng.choice(NUM_PREDICATES, len(subjects), p=PREDICATE_P) + 1
    return SceneGraphTarget(
        image_id=image_id,
        image_size=(int(IMAGE_SIDE), int(IMAGE_SIDE)),
        boxes=torch.tensor(np.hstack([top_left, top_left + size]), dtype=torch.float32),
        labels=torch.tensor(rng.choice(NUM_OBJECT_CLASSES, num_objects, p=LABEL_P) + 1),
        relations=torch.tensor(np.stack([subjects, objects, predicates], axis=1)),
    )


def random_prediction(
    rng: np.random.Generator, target: SceneGraphTarget, protocol: str, max_pairs: int
) -> SceneGraphPrediction:
    boxes = target.boxes.numpy().astype(np.float64)
    labels = target.labels.numpy().copy()
    scores = np.ones(len(labels))
    if protocol != "predcls":
        wrong = rng.random(len(labels)) < 0.2
        labels[wrong] = rng.choice(NUM_OBJECT_CLASSES, int(wrong.sum()), p=LABEL_P) + 1
        scores = rng.uniform(0.3, 1.0, len(labels))
    if protocol == "sgdet":  # jittered GT boxes (some below IoU 0.5) plus spurious detections
        extent = boxes[:, 2:] - boxes[:, :2]
        boxes = (boxes + rng.uniform(-0.25, 0.25, boxes.shape) * np.tile(extent, 2)).round()
        extra = int(rng.integers(4, 9))
        corner = rng.uniform(0, IMAGE_SIDE - 220, (extra, 2)).round()
        boxes = np.vstack([boxes, np.hstack([corner, corner + rng.uniform(20, 200, (extra, 2))])])
        labels = np.concatenate([labels, rng.choice(NUM_OBJECT_CLASSES, extra, p=LABEL_P) + 1])
        scores = np.concatenate([scores, rng.uniform(0.05, 0.8, extra)])
    n = len(labels)
    all_pairs = np.array([(s, o) for s in range(n) for o in range(n) if s != o]).reshape(-1, 2)
    pairs = all_pairs[np.sort(rng.permutation(len(all_pairs))[:max_pairs])]
    predicate_scores = rng.random((len(pairs), NUM_PREDICATES + 1))
    gt_predicate = {(s, o): p for s, o, p in target.relations.tolist()}
    for row, (s, o) in enumerate(pairs.tolist()):
        if (s, o) in gt_predicate:
            predicate_scores[row, gt_predicate[(s, o)]] += rng.uniform(0.0, 40.0)
    predicate_scores /= predicate_scores.sum(axis=1, keepdims=True)
    return SceneGraphPrediction(
        boxes=torch.tensor(boxes, dtype=torch.float32),
        labels=torch.tensor(labels),
        label_scores=torch.tensor(scores, dtype=torch.float32),
        pairs=torch.tensor(pairs, dtype=torch.int64),
        predicate_scores=torch.tensor(predicate_scores, dtype=torch.float32),
    )


def training_triplets(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) (subject label, predicate, object label) drawn like the test triplets."""
    subjects = rng.choice(NUM_OBJECT_CLASSES, count, p=LABEL_P) + 1
    objects = rng.choice(NUM_OBJECT_CLASSES, count, p=LABEL_P) + 1
    predicates = rng.choice(NUM_PREDICATES, count, p=PREDICATE_P) + 1
    return np.stack([subjects, predicates, objects], axis=1)


# ------------------------------------------------------------------ the loop reference
def iou_plus_one(a: list[float], b: list[float]) -> float:
    width = max(min(a[2], b[2]) - max(a[0], b[0]) + 1.0, 0.0)
    height = max(min(a[3], b[3]) - max(a[1], b[1]) + 1.0, 0.0)
    intersection = width * height
    area_a = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0)
    area_b = (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
    return intersection / (area_a + area_b - intersection)


def ranked_triplets(prediction: SceneGraphPrediction, graph_constraint: bool, k: int) -> list:
    """Top-k (score, subject, object, predicate), best first; ties keep input order."""
    label_scores = prediction.label_scores.tolist()
    candidates = []
    for (s, o), row in zip(prediction.pairs.tolist(), prediction.predicate_scores.tolist()):
        if graph_constraint:
            best = 1
            for c in range(2, len(row)):
                if row[c] > row[best]:
                    best = c
            predicates = [best]
        else:
            predicates = list(range(1, len(row)))
        for c in predicates:
            candidates.append((row[c] * label_scores[s] * label_scores[o], s, o, c))
    return sorted(candidates, key=lambda triplet: -triplet[0])[:k]


def reference_image(target, prediction, train_set, graph_constraint, ks, iou_threshold):
    """Per K: (recalled GT indices, indices of unseen GT triplets) for one image."""
    gt_boxes, gt_labels = target.boxes.tolist(), target.labels.tolist()
    boxes, labels = prediction.boxes.tolist(), prediction.labels.tolist()
    relations = target.relations.tolist()
    ranked = ranked_triplets(prediction, graph_constraint, max(ks))

    def matches(gt, triplet) -> bool:
        s, o, p = gt
        _, ps, po, pp = triplet
        return (
            pp == p
            and labels[ps] == gt_labels[s]
            and labels[po] == gt_labels[o]
            and iou_plus_one(gt_boxes[s], boxes[ps]) >= iou_threshold
            and iou_plus_one(gt_boxes[o], boxes[po]) >= iou_threshold
        )

    unseen = [
        j
        for j, (s, o, p) in enumerate(relations)
        if (gt_labels[s], p, gt_labels[o]) not in train_set
    ]
    recalled = {
        k: [j for j, gt in enumerate(relations) if any(matches(gt, t) for t in ranked[:k])]
        for k in ks
    }
    return recalled, unseen


def reference_metrics(targets, predictions, train_triplets, ks, iou_threshold=0.5) -> dict:
    train_set = {tuple(t) for t in train_triplets.tolist()}
    out = {}
    for mode, graph_constraint in (("", True), ("ng_", False)):
        recall = defaultdict(list)
        zero_shot = defaultdict(list)
        class_collect = defaultdict(lambda: defaultdict(list))
        for target, prediction in zip(targets, predictions):
            relations = target.relations.tolist()
            if not relations:
                continue
            recalled, unseen = reference_image(
                target, prediction, train_set, graph_constraint, ks, iou_threshold
            )
            for k in ks:
                recall[k].append(len(recalled[k]) / len(relations))
                count, hit = defaultdict(int), defaultdict(int)
                for j, (_, _, p) in enumerate(relations):
                    count[p] += 1
                    hit[p] += j in recalled[k]
                for p in count:
                    class_collect[k][p].append(hit[p] / count[p])
                if unseen:
                    zero_shot[k].append(len([j for j in recalled[k] if j in unseen]) / len(unseen))
        for k in ks:
            per_class = [
                sum(class_collect[k][c]) / len(class_collect[k][c]) if class_collect[k][c] else 0.0
                for c in range(1, NUM_PREDICATES + 1)
            ]
            out[f"{mode}R_{k}"] = sum(recall[k]) / len(recall[k]) if recall[k] else math.nan
            out[f"{mode}mR_{k}"] = sum(per_class) / NUM_PREDICATES
            out[f"{mode}zR_{k}"] = (
                sum(zero_shot[k]) / len(zero_shot[k]) if zero_shot[k] else math.nan
            )
            out[f"{mode}per_predicate_{k}"] = per_class
    return out


# ------------------------------------------------------------------ comparison and timing
def vectorised_metrics(
    targets, predictions, protocol, train_triplets, ks, batched=True, repeats=1
) -> tuple[dict, float]:
    """The evaluator's metrics and its best time over ``repeats`` runs (seconds)."""
    seconds = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        evaluator = SceneGraphEvaluator(
            protocol, NUM_PREDICATES, train_triplets, ks=ks, batched=batched
        )
        for begin in range(0, len(targets), 8):  # batches of 8, as a loader would give them
            evaluator.process(targets[begin : begin + 8], predictions[begin : begin + 8])
        result = evaluator.evaluate()
        seconds = min(seconds, time.perf_counter() - start)
    out = dict(result.metrics)
    for k in ks:
        out[f"per_predicate_{k}"] = result.per_predicate_recall[k].tolist()
        out[f"ng_per_predicate_{k}"] = result.per_predicate_ng_recall[k].tolist()
    return out, seconds


def assert_same(reference: dict, vectorised: dict, tolerance: float = 1e-9) -> None:
    for key, expected in reference.items():
        got = np.asarray(vectorised[key], dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        same = np.isclose(got, expected, rtol=0.0, atol=tolerance, equal_nan=True)
        assert same.all(), f"{key}: evaluator {got} but reference {expected}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=100, help="candidate pairs per image")
    parser.add_argument("--protocol", choices=("predcls", "sgcls", "sgdet"), default="sgdet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="the evaluators' time is the best of N runs"
    )
    parser.add_argument(
        "--reference-images",
        type=int,
        default=None,
        help="time the loop reference on the first N images only (default: all)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    targets = [random_target(rng, i) for i in range(args.images)]
    predictions = [random_prediction(rng, t, args.protocol, args.pairs) for t in targets]
    train_triplets = training_triplets(rng, 20 * args.images)
    ks = metric_names.RECALL_KS
    mean_pairs = np.mean([len(p.pairs) for p in predictions])
    print(f"{args.images} images, {args.protocol}, C = {NUM_PREDICATES}, "
          f"{mean_pairs:.1f} candidate pairs per image on average")  # fmt: skip

    vectorised, vectorised_seconds = vectorised_metrics(
        targets, predictions, args.protocol, train_triplets, ks, repeats=args.repeats
    )
    per_image, per_image_seconds = vectorised_metrics(
        targets, predictions, args.protocol, train_triplets, ks, False, args.repeats
    )
    assert_same(per_image, vectorised, tolerance=1e-12)
    print(f"batched and per-image metrics agree within 1e-12 on {args.images} images")
    subset = min(args.reference_images or args.images, args.images)
    start = time.perf_counter()
    reference = reference_metrics(targets[:subset], predictions[:subset], train_triplets, ks)
    reference_seconds = time.perf_counter() - start
    compared = vectorised
    if subset < args.images:
        compared, _ = vectorised_metrics(
            targets[:subset], predictions[:subset], args.protocol, train_triplets, ks
        )
    assert_same(reference, compared)
    print(f"metrics agree within 1e-9 on {subset} images "
          f"(R@50 {reference['R_50']:.4f}, mR@50 {reference['mR_50']:.4f}, "
          f"zR@50 {reference['zR_50']:.4f}, ng-R@50 {reference['ng_R_50']:.4f})")  # fmt: skip

    device = SceneGraphEvaluator(args.protocol, NUM_PREDICATES, None).device
    loop_rate = subset / reference_seconds
    rows = [
        (f"batched (torch, {device})", args.images, vectorised_seconds),
        ("per image (numpy)", args.images, per_image_seconds),
        ("python loops (reference)" + (" [subset]" if subset < args.images else ""), subset,
         reference_seconds),
    ]  # fmt: skip
    print(f"{'implementation':<36} {'images':>7} {'seconds':>9} {'images/s':>10} {'vs loops':>9}")
    for name, count, seconds in rows:
        rate = count / seconds
        print(f"{name:<36} {count:>7} {seconds:>9.3f} {rate:>10.1f} {rate / loop_rate:>8.1f}x")
    speed_up = (args.images / vectorised_seconds) / loop_rate
    print(f"speed-up of the batched evaluator over the python loops (images/s): {speed_up:.1f}x")
    print(f"speed-up of the batched evaluator over the per-image evaluator: "
          f"{per_image_seconds / vectorised_seconds:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
