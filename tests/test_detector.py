"""The detector: presets build without downloading, checkpoints round-trip, box mAP@0.5 is exact."""

import math

import pytest
import torch

from sgstudy.errors import ConfigError, UserError
from sgstudy.evaluation.box_ap import average_precision, box_map_at_50
from sgstudy.models.detector import (
    build_detector,
    load_backbone_weights,
    load_detector,
    run_backbone,
    save_detector,
)
from sgstudy.structures import SceneGraphTarget


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def target(boxes, labels):
    return SceneGraphTarget(
        0,
        (100, 100),
        torch.tensor(boxes, dtype=torch.float),
        torch.tensor(labels),
        torch.zeros(0, 3, dtype=torch.long),
    )


def detections(boxes, labels, scores):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float),
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores),
    }


# ---------------------------------------------------------------- building
def test_tiny_detector_trains_and_detects_on_small_images():
    torch.manual_seed(0)
    model = build_detector("tiny", num_classes=4)
    images = [torch.rand(3, 64, 64), torch.rand(3, 96, 128)]
    targets = [
        {"boxes": torch.tensor([[5.0, 5, 30, 40]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 20, 60, 50], [70, 10, 90, 30]]),
            "labels": torch.tensor([2, 3]),
        },
    ]
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    with torch.no_grad():
        outputs = model.eval()(images)
    assert len(outputs) == 2 and all(o["boxes"].shape[1] == 4 for o in outputs)
    view = run_backbone(model, images)
    assert view.original_sizes == [(64, 64), (96, 128)]
    assert view.image_sizes[0] == (128, 128)  # resized to the 128-px shorter side
    assert torch.allclose(
        view.to_original(view.to_resized([targets[0]["boxes"]]))[0], targets[0]["boxes"]
    )


def test_paper_detector_has_the_resnet_fpn_and_1024_d_box_head():
    model = build_detector("paper", num_classes=151)
    assert model.roi_heads.box_head.fc7.out_features == 1024
    assert model.roi_heads.box_predictor.cls_score.out_features == 151
    assert model.backbone.body.layer4[0].conv1.in_channels == 1024  # ResNet-50 bottleneck
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000


def test_bad_preset_or_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="huge"):
        build_detector("huge", 5)
    with pytest.raises(ConfigError, match="vgg"):
        build_detector("paper", 5, backbone="vgg")


def test_backbone_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    source = build_detector("tiny", 3)
    path = tmp_path / "backbone.pt"
    # A detector's full state dict: keys carry the "backbone.body." prefix, others are skipped.
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    model = build_detector("tiny", 3, backbone_weights=str(path))
    for key, value in source.backbone.body.state_dict().items():
        assert torch.equal(model.backbone.body.state_dict()[key], value), key
    assert not torch.equal(
        model.roi_heads.box_head.fc6.weight, source.roi_heads.box_head.fc6.weight
    )


def test_backbone_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "unrelated.pt"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="unrelated.pt"):
        load_backbone_weights(build_detector("tiny", 3).backbone.body, str(path))
    with pytest.raises(UserError, match="does not exist"):
        build_detector("tiny", 3, backbone_weights=str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------- checkpoints
def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_detector("tiny", 4).eval()
    path = tmp_path / "det" / "detector.pt"
    classes = ["__background__", "cat", "dog", "tree"]
    save_detector(model, path, "tiny", 4, classes, backbone="resnet50")
    loaded = load_detector(path, expected_classes=classes).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        first, second = model(image)[0], loaded(image)[0]
    assert torch.equal(first["boxes"], second["boxes"])
    assert torch.equal(first["scores"], second["scores"])
    with pytest.raises(ConfigError, match="trained on 3 object classes .* dataset.s 2"):
        load_detector(path, expected_classes=["__background__", "cat", "dog"])


def test_missing_or_damaged_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="nothere.pt does not exist"):
        load_detector(tmp_path / "nothere.pt")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="damaged.pt could not be read"):
        load_detector(damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not written by sgstudy"):
        load_detector(foreign)


# ---------------------------------------------------------------- box mAP@0.5
def test_perfect_detections_score_one():
    gt = [target([[0, 0, 10, 10], [20, 20, 50, 60]], [1, 2]), target([[5, 5, 40, 40]], [2])]
    predictions = [
        detections([[0, 0, 10, 10], [20, 20, 50, 60]], [1, 2], [0.9, 0.8]),
        detections([[5, 5, 40, 40]], [2], [0.3]),
    ]
    assert box_map_at_50(predictions, gt, num_classes=3) == 1.0


def test_known_precision_recall_curve():
    """One class, two annotations; ranked detections: hit, miss, hit.
    Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP = 1/2 · 1 + 1/2 · 2/3 = 5/6."""
    gt = [target([[0, 0, 10, 10], [50, 50, 70, 70]], [1, 1])]
    predictions = [
        detections([[0, 0, 10, 10], [80, 80, 90, 90], [51, 51, 70, 70]], [1, 1, 1], [0.9, 0.8, 0.7])
    ]
    assert box_map_at_50(predictions, gt, num_classes=2) == pytest.approx(5 / 6)


def test_duplicates_wrong_labels_and_absent_classes():
    gt = [target([[0, 0, 10, 10]], [1]), target([[0, 0, 20, 20]], [2])]
    predictions = [
        # The duplicate of a matched box is a false positive, ranked after the hit: AP 1.
        detections([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [0.9, 0.5]),
        # Right box, wrong class first (a class-1 false positive), then the right class
        # with IoU 0.5625 after a class-3 detection that no annotation has (class 3 is ignored).
        detections([[0, 0, 20, 20], [0, 0, 15, 15], [0, 0, 20, 20]], [1, 2, 3], [0.95, 0.6, 0.99]),
    ]
    # Class 1: ranked FP (0.95), TP (0.9), FP (0.5): precision 0, 1/2, 1/3 -> AP 1/2.
    # Class 2: one TP -> AP 1. Mean over classes 1 and 2.
    assert box_map_at_50(predictions, gt, num_classes=4) == pytest.approx(0.75)


def test_average_precision_edge_cases():
    assert average_precision(torch.zeros(0, dtype=torch.bool), 3) == 0.0
    assert average_precision(torch.tensor([False, False]), 1) == 0.0
    # Recall saturates at 1/2 with precision 1.
    assert average_precision(torch.tensor([True]), 2) == pytest.approx(0.5)
    assert math.isclose(box_map_at_50([], [], 3), 0.0)
