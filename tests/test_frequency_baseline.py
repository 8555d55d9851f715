"""The frequency baseline on hand-made label statistics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sgstudy.errors import ConfigError, DatasetError
from sgstudy.evaluation.sgg_eval import SceneGraphEvaluator
from sgstudy.models.frequency import FrequencyBaseline, all_ordered_pairs
from sgstudy.structures import SceneGraphTarget


def hand_made_counts() -> np.ndarray:
    """(O + 1, O + 1, C + 1) = (3, 3, 4): object classes 1, 2; predicates 1..3; column 0 = none."""
    counts = np.zeros((3, 3, 4), dtype=np.int64)
    counts[1, 2] = [5, 1, 7, 2]  # (label 1, label 2): predicate 2 most frequent
    counts[2, 1] = [0, 3, 0, 0]  # (label 2, label 1): predicate 1
    counts[2, 2] = [9, 0, 1, 4]  # (label 2, label 2): background most frequent, then predicate 3
    return counts  # (1, 1) never seen


def make_target(labels: list[int], relations: list[tuple[int, int, int]] = ()) -> SceneGraphTarget:
    boxes = [[20.0 * i, 0.0, 20.0 * i + 9.0, 9.0] for i in range(len(labels))]
    return SceneGraphTarget(
        image_id=7,
        image_size=(50, 100),
        boxes=torch.tensor(boxes).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        relations=torch.tensor(list(relations), dtype=torch.int64).reshape(-1, 3),
    )


def test_predicts_the_smoothed_training_distribution_for_every_ordered_pair():
    model = FrequencyBaseline(hand_made_counts())
    target = make_target([1, 2, 2])
    (prediction,) = model([torch.zeros(3, 50, 100)], [target])
    assert sorted(map(tuple, prediction.pairs.tolist())) == [
        (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)
    ]  # fmt: skip
    torch.testing.assert_close(prediction.predicate_scores.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(prediction.label_scores, torch.ones(3))
    assert torch.equal(prediction.boxes, target.boxes) and torch.equal(
        prediction.labels, target.labels
    )
    rows = {
        tuple(pair): row
        for pair, row in zip(prediction.pairs.tolist(), prediction.predicate_scores)
    }
    # Add-one smoothing: (label 1, label 2) counts [5, 1, 7, 2] + 1 = [6, 2, 8, 3] over 19.
    torch.testing.assert_close(rows[(0, 1)], torch.tensor([6.0, 2.0, 8.0, 3.0]) / 19)
    best_foreground = {pair: int(row[1:].argmax()) + 1 for pair, row in rows.items()}
    assert best_foreground[(0, 1)] == 2  # label pair (1, 2)
    assert best_foreground[(1, 0)] == 1  # label pair (2, 1)
    assert best_foreground[(1, 2)] == 3  # label pair (2, 2), background aside
    assert int(rows[(1, 2)].argmax()) == 0  # background itself is the most frequent there


def test_unseen_label_pair_gets_the_uniform_distribution():
    (prediction,) = FrequencyBaseline(hand_made_counts())([torch.zeros(1)], [make_target([1, 1])])
    torch.testing.assert_close(prediction.predicate_scores, torch.full((2, 4), 0.25))


def test_no_trainable_parameters_and_table_in_state_dict():
    model = FrequencyBaseline(hand_made_counts(), smoothing=0.5)
    assert list(model.parameters()) == []
    assert model.state_dict()["predicate_distribution"].shape == (3, 3, 4)
    # Smoothing 0.5 on (label 2, label 1): [0, 3, 0, 0] + 0.5 = [0.5, 3.5, 0.5, 0.5] over 5.
    torch.testing.assert_close(
        model.predicate_distribution[2, 1], torch.tensor([0.1, 0.7, 0.1, 0.1])
    )


def test_from_statistics_reads_pair_predicate_counts():
    stats = SimpleNamespace(pair_predicate_counts=hand_made_counts())
    model = FrequencyBaseline.from_statistics(stats)
    torch.testing.assert_close(
        model.predicate_distribution, FrequencyBaseline(hand_made_counts()).predicate_distribution
    )


def test_images_with_fewer_than_two_objects_have_no_pairs():
    model = FrequencyBaseline(hand_made_counts())
    single, empty = model([torch.zeros(1), torch.zeros(1)], [make_target([2]), make_target([])])
    assert single.pairs.shape == (0, 2) and single.predicate_scores.shape == (0, 4)
    assert empty.pairs.shape == (0, 2) and empty.boxes.shape == (0, 4)
    assert all_ordered_pairs(4).shape == (12, 2)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="pair_predicate_counts"):
        FrequencyBaseline(np.zeros((3, 4, 4)))
    with pytest.raises(DatasetError, match="object label 5"):
        FrequencyBaseline(hand_made_counts())([torch.zeros(1)], [make_target([1, 5])])


def test_recalls_the_frequent_relation_in_predcls():
    # Image labels [1, 2, 2]; GT (0,1,p2) is the most frequent predicate of (1, 2) -> recalled.
    # GT (2,0,p3): label pair (2, 1) only ever had p1 -> p3 is never the pair's argmax, so with
    # the graph constraint it is missed; without it, 6 pairs x 3 predicates = 18 < 20 triplets
    # all enter the top 20 and it is recalled. R@20 = 1/2, ng-R@20 = 1.
    target = make_target([1, 2, 2], relations=[(0, 1, 2), (2, 0, 3)])
    model = FrequencyBaseline(hand_made_counts())
    evaluator = SceneGraphEvaluator("predcls", 3, None)
    evaluator.process([target], model([torch.zeros(1)], [target]))
    result = evaluator.evaluate()
    assert result.metrics["R_20"] == 0.5
    assert result.metrics["ng_R_20"] == 1.0


def test_runs_on_the_synthetic_dataset(synthetic_root):
    from sgstudy.data.dataset import SceneGraphDataset
    from sgstudy.data.statistics import compute_statistics

    train = SceneGraphDataset(synthetic_root, "train")
    statistics = compute_statistics(train)
    model = FrequencyBaseline.from_statistics(statistics)
    num_predicates = len(statistics.predicate_classes) - 1

    def evaluate(split: str):
        dataset = SceneGraphDataset(synthetic_root, split)
        evaluator = SceneGraphEvaluator(
            "predcls", num_predicates, statistics.train_triplets, statistics.predicate_groups
        )
        for index in range(len(dataset)):
            image, target = dataset[index]
            (prediction,) = model([image], [target])
            best = prediction.predicate_scores[:, 1:].argmax(dim=1) + 1
            labels = target.labels[prediction.pairs]  # (P, 2)
            counts = torch.from_numpy(statistics.pair_predicate_counts)
            expected = counts[labels[:, 0], labels[:, 1], 1:].argmax(dim=1) + 1
            assert torch.equal(best, expected)  # the most frequent training predicate per pair
            evaluator.process([target], [prediction])
        return evaluator.evaluate()

    test = evaluate("test")
    assert test.metrics["num_images"] > 0
    for family in ("R", "mR", "ng_R", "ng_mR"):
        values = [test.metrics[f"{family}_{k}"] for k in (20, 50, 100)]
        assert 0.0 < values[0] <= values[1] <= values[2] <= 1.0, (family, values)
    # Training triplets are all seen by definition, so zero-shot recall has nothing to average.
    assert np.isnan(evaluate("train").metrics["zR_50"])


def test_sgdet_baseline_pairs_a_faster_rcnns_own_detections(synthetic_root, tmp_path, capsys):
    """On a Faster R-CNN checkpoint (Motifs' detector kind), the SGDet baseline pairs the
    detector's post-processed detections: their boxes, labels and scores, and each pair's
    predicate scores from the frequency table; ``sgstudy baseline`` reads either kind."""
    from sgstudy.cli import main
    from sgstudy.data.dataset import SceneGraphDataset
    from sgstudy.data.statistics import compute_statistics
    from sgstudy.models.detector import build_detector, load_any_detector, save_detector
    from sgstudy.models.detr import DETR, DETR_PRESETS, save_detr
    from sgstudy.models.frequency import DetectionFrequencyBaseline, all_ordered_pairs

    statistics = compute_statistics(SceneGraphDataset(synthetic_root, "train"))
    classes = list(statistics.object_classes)
    torch.manual_seed(0)
    path = tmp_path / "detector.pt"
    save_detector(build_detector("tiny", len(classes)), path, "tiny", len(classes), classes)
    detector = load_any_detector(path, classes)
    detector.roi_heads.score_thresh = 0.0  # an untrained head's scores are all small
    model = DetectionFrequencyBaseline(FrequencyBaseline.from_statistics(statistics), detector)
    image, target = SceneGraphDataset(synthetic_root, "val")[0]
    (found,) = detector([image])
    (prediction,) = model([image], [target])
    assert len(found["labels"]) >= 2
    assert torch.equal(prediction.boxes, found["boxes"])
    assert torch.equal(prediction.labels, found["labels"])
    assert torch.equal(prediction.label_scores, found["scores"])
    assert torch.equal(prediction.pairs, all_ordered_pairs(len(found["labels"])))
    table = model.frequency.predicate_distribution
    pair_labels = found["labels"][prediction.pairs]
    assert torch.equal(prediction.predicate_scores, table[pair_labels[:, 0], pair_labels[:, 1]])

    # A DETR checkpoint loads as a DETR, whose every query is a detection (``detr.detections``).
    detr_path = tmp_path / "detr.pt"
    save_detr(DETR(DETR_PRESETS["tiny"], len(classes) - 1), detr_path, "tiny", classes)
    assert isinstance(load_any_detector(detr_path, classes), DETR)

    argv = ["baseline", "--protocol", "sgdet", "--detector", str(path), "--data"]
    assert main([*argv, str(synthetic_root), "--split", "val"]) in (0, None)
    out = capsys.readouterr().out
    assert f"SGDet on the detections of {path}" in out and "\nmR " in out
