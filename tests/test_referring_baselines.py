"""The referring-relationship baselines: the class-only heuristic's answers on hand-made
detections, the random-box baseline's determinism, and ``sgstudy baseline`` on a
referring-relationship dataset with a real (untrained) detector checkpoint."""

from __future__ import annotations

import torch
from referring_data import write_hand_made

from sgstudy.cli import main
from sgstudy.data.referring import ReferringDataset, ReferringImages
from sgstudy.evaluation.referring_eval import ReferringEvaluator
from sgstudy.models.detector import build_detector, save_detector
from sgstudy.models.referring_baselines import RandomBoxBaseline, answer_by_class


def test_class_only_answers_by_the_query_classes_in_score_order():
    """Detections in score order with classes 5, 2, 3, 2; query <2, p, 3>: class 2 boxes are
    subjects, the class-3 box the object, the class-5 box "other"."""
    boxes = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    answer = answer_by_class(boxes, torch.tensor([5, 2, 3, 2]), torch.tensor([2, 1, 3]))
    assert answer.boxes.tolist() == boxes.tolist()
    assert answer.role_scores.argmax(dim=1).tolist() == [3, 1, 2, 1]
    assert answer.role_scores.sum(dim=1).tolist() == [1.0] * 4


def test_class_only_answers_both_roles_when_subject_and_object_share_a_class():
    boxes = torch.tensor([[0.0, 0, 1, 1], [2, 2, 3, 3]])
    answer = answer_by_class(boxes, torch.tensor([4, 1]), torch.tensor([4, 2, 4]))
    assert answer.boxes.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]]
    assert answer.role_scores.argmax(dim=1).tolist() == [1, 2, 3]


def test_random_boxes_are_reproducible_valid_and_scored(tmp_path):
    dataset = ReferringDataset(write_hand_made(tmp_path / "data"), "train")
    targets = [dataset[i][1] for i in range(len(dataset))]
    first = RandomBoxBaseline(num_boxes=5, seed=3)(None, targets)
    again = RandomBoxBaseline(num_boxes=5, seed=3)(None, targets[::-1])[::-1]
    for a, b, t in zip(first, again, targets):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.role_scores, b.role_scores)
        height, width = t.image_size
        assert a.boxes.shape == (5, 4)
        assert ((a.boxes[:, :2] <= a.boxes[:, 2:]).all() and (a.boxes >= 0).all()
                and (a.boxes[:, 2] <= width).all() and (a.boxes[:, 3] <= height).all())  # fmt: skip
        assert torch.allclose(a.role_scores.sum(dim=1), torch.ones(5))
    other = RandomBoxBaseline(num_boxes=5, seed=4)(None, targets[:1])[0]
    assert not torch.equal(other.boxes, first[0].boxes)
    evaluator = ReferringEvaluator(len(dataset.predicate_classes) - 1)
    evaluator.process(targets, first)
    metrics = evaluator.evaluate().metrics
    assert metrics["num_queries"] == len(targets)
    assert 0.0 < metrics["mean_iou"] < 1.0


def test_baseline_command_evaluates_both_baselines(tmp_path, capsys):
    """A detector trained by ``sgstudy train-detector`` on the referring dataset's own train
    images (one epoch) feeds the class-only heuristic."""
    root = write_hand_made(tmp_path / "data")
    classes = ReferringDataset(root, "train").object_classes
    images = ReferringImages(root, "train")
    assert len(images) == 8  # train images 1..9 but "5", which has no relation
    assert [images[i][1].image_id for i in range(len(images))] == [1, 2, 3, 4, 6, 7, 8, 9]
    assert images[0][1].boxes.tolist()[0] == [4, 2, 20, 12]
    assert main(["train-detector", "--data", str(root), "--epochs", "1",
                 "--out", str(tmp_path / "det"), "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    detector_file = tmp_path / "det" / "detector.pt"
    argv = ["baseline", "--data", str(root), "--split", "val"]
    assert main([*argv, "--detector", str(detector_file), "--score-threshold", "0.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Referring-relationship baselines, val split")
    assert lines[1].split() == ["subject", "IoU", "object", "IoU", "mean", "IoU"]
    assert lines[2].startswith("random boxes") and lines[3].startswith("class-only heuristic")
    values = [float(v) for line in lines[2:4] for v in line.split()[-3:]]
    assert all(0.0 <= v <= 100.0 for v in values)
    assert main(argv) == 0
    assert "needs --detector" in capsys.readouterr().out
    torch.manual_seed(0)
    other = list(classes[:-1])
    save_detector(build_detector("tiny", len(other)), detector_file, "tiny", len(other), other)
    assert main([*argv, "--detector", str(detector_file)]) == 2
    assert capsys.readouterr().err.startswith("error: detector checkpoint")
