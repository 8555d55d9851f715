"""DETR, the SGTR entity detector: matcher, losses, forward/backward, checkpoints, training."""

import dataclasses
import itertools
import json

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from sgstudy.cli import main
from sgstudy.data.dataset import SceneGraphDataset
from sgstudy.detector_training import (
    DetectorSchedule,
    detector_optimizer,
    evaluate_detector,
    train_detector_epoch,
)
from sgstudy.errors import ConfigError, UserError
from sgstudy.models.detector import build_detector, load_detector, save_detector
from sgstudy.models.detr import (
    DETR_PRESETS,
    DetrOutput,
    build_detr,
    detections,
    load_detr,
    save_detr,
)
from sgstudy.models.detr_loss import (
    detr_loss_weights,
    detr_losses,
    hungarian_match,
    weighted_total,
)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def cxcywh(*boxes):
    return torch.tensor(boxes, dtype=torch.float)


def confident_logits(classes, num_columns=4, scale=8.0):
    """(1, Q, num_columns) logits putting probability ~1 on the given column of each query."""
    logits = torch.zeros(1, len(classes), num_columns)
    logits[0, torch.arange(len(classes)), torch.tensor(classes)] = scale
    return logits


# ---------------------------------------------------------------- matcher
def test_matcher_finds_the_obvious_assignment():
    # Query 0 sits on target 1, query 2 on target 0, query 1 is elsewhere.
    targets_boxes = cxcywh([0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2])
    boxes = cxcywh([0.7, 0.6, 0.3, 0.2], [0.5, 0.9, 0.05, 0.05], [0.2, 0.2, 0.1, 0.1])[None]
    logits = confident_logits([2, 0, 1])
    [(queries, matched)] = hungarian_match(logits, boxes, [(torch.tensor([1, 2]), targets_boxes)])
    assert queries.tolist() == [0, 2] and matched.tolist() == [1, 0]


def test_matcher_is_optimal_where_greedy_is_not():
    """Query 0 is closest to target A but query 1 fits only A: the optimum gives B to query 0."""
    a, b = [0.3, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]
    boxes = cxcywh([0.38, 0.5, 0.2, 0.2], [0.3, 0.5, 0.2, 0.2])[None]
    logits = confident_logits([1, 1], num_columns=2, scale=0.0)  # classes carry no information
    [(queries, matched)] = hungarian_match(logits, boxes, [(torch.tensor([1, 1]), cxcywh(a, b))])
    assert dict(zip(queries.tolist(), matched.tolist())) == {0: 1, 1: 0}


def reference_cost(logits, boxes, labels, target_boxes):
    """DETR's matching cost written out entry by entry: -p(class) + 5 L1 - 2 GIoU."""
    probabilities = logits.softmax(-1)
    cost = torch.zeros(len(boxes), len(labels))
    for q, t in itertools.product(range(len(boxes)), range(len(labels))):
        giou = generalized_box_iou(
            box_convert(boxes[q : q + 1], "cxcywh", "xyxy"),
            box_convert(target_boxes[t : t + 1], "cxcywh", "xyxy"),
        )[0, 0]
        l1 = (boxes[q] - target_boxes[t]).abs().sum()
        cost[q, t] = -probabilities[q, labels[t]] + 5 * l1 - 2 * giou
    return cost


def random_boxes(n, generator):
    centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centres, sizes], dim=1)


def test_matcher_minimises_the_total_cost_over_all_assignments():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = torch.randn(1, 4, 5, generator=generator) * 2
        boxes = random_boxes(4, generator)[None]
        labels = torch.randint(1, 5, (3,), generator=generator)
        target_boxes = random_boxes(3, generator)
        [(queries, matched)] = hungarian_match(logits, boxes, [(labels, target_boxes)])
        cost = reference_cost(logits[0], boxes[0], labels, target_boxes)
        best = min(
            sum(cost[q, t] for t, q in enumerate(perm))
            for perm in itertools.permutations(range(4), 3)
        )
        assert len(queries) == 3
        assert float(cost[queries, matched].sum()) == pytest.approx(float(best), abs=1e-5)


def test_batched_matching_equals_matching_each_image_alone():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 5, generator=generator)
    boxes = random_boxes(18, generator).view(3, 6, 4)
    targets = [
        (torch.tensor([1, 4, 2]), random_boxes(3, generator)),
        (torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4)),
        (torch.tensor([3, 3, 1, 2, 4]), random_boxes(5, generator)),
    ]
    batched = hungarian_match(logits, boxes, targets)
    for index, target in enumerate(targets):
        [alone] = hungarian_match(logits[index : index + 1], boxes[index : index + 1], [target])
        assert torch.equal(batched[index][0], alone[0])
        assert torch.equal(batched[index][1], alone[1])
    assert len(batched[1][0]) == 0


# ---------------------------------------------------------------- losses
def output_of(logits, boxes, image_sizes, aux=()):
    batch, queries = logits.shape[:2]
    return DetrOutput(
        logits=logits,
        boxes=boxes,
        hidden=torch.zeros(batch, queries, 8),
        memory=torch.zeros(batch, 8, 2, 2),
        memory_mask=torch.zeros(batch, 2, 2, dtype=torch.bool),
        aux=list(aux),
        image_sizes=list(image_sizes),
    )


def test_perfect_predictions_have_zero_box_losses_and_wrong_ones_do_not():
    # Image 100 wide, 50 high; a box (10, 5)-(30, 25) is cx 0.2, cy 0.3, w 0.2, h 0.4.
    target = [{"boxes": torch.tensor([[10.0, 5, 30, 25]]), "labels": torch.tensor([2])}]
    boxes = cxcywh([0.2, 0.3, 0.2, 0.4], [0.8, 0.8, 0.1, 0.1])[None]
    logits = confident_logits([2, 0], num_columns=3, scale=30.0)
    losses = detr_losses(output_of(logits, boxes, [(50, 100)]), target)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_ce"].item() == pytest.approx(0.0, abs=1e-6)
    shifted = cxcywh([0.25, 0.3, 0.2, 0.4], [0.8, 0.8, 0.1, 0.1])[None]
    losses = detr_losses(output_of(logits, shifted, [(50, 100)]), target)
    assert losses["loss_bbox"].item() == pytest.approx(0.05)  # |0.25 - 0.2| over one box
    assert losses["loss_giou"].item() > 0


def test_no_object_is_weighted_one_tenth_in_the_cross_entropy():
    """Uniform logits over 3 columns: every query's CE is log 3; the weighted mean over one
    matched query (weight 1) and one no-object query (weight 0.1) is still log 3, while a
    confident no-object query lowers the mean by its weight share only."""
    target = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    boxes = cxcywh([0.05, 0.05, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1])[None]
    uniform = torch.zeros(1, 2, 3)
    losses = detr_losses(output_of(uniform, boxes, [(100, 100)]), target)
    assert losses["loss_ce"].item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    logits = uniform.clone()
    logits[0, 1, 0] = 50.0  # the unmatched query is sure of no-object: CE 0 there
    losses = detr_losses(output_of(logits, boxes, [(100, 100)]), target)
    expected = torch.log(torch.tensor(3.0)).item() * 1.0 / 1.1
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)


def test_empty_targets_give_finite_losses_and_aux_terms_per_layer():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 4, generator=generator, requires_grad=True)
    boxes = random_boxes(10, generator).view(2, 5, 4).requires_grad_()
    aux = [(logits * 0.5, boxes * 0.9), (logits * 0.7, boxes * 0.95)]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = detr_losses(output_of(logits, boxes, [(64, 64)] * 2, aux), [empty, empty])
    assert set(losses) == set(detr_loss_weights(3))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou_1"].item() == 0.0
    weighted_total(losses, detr_loss_weights(3)).backward()
    assert logits.grad.abs().sum() > 0  # everything is pushed towards no-object


def test_loss_weights_are_detrs():
    weights = detr_loss_weights(6)
    assert weights["loss_ce"] == 1.0 and weights["loss_bbox"] == 5.0
    assert weights["loss_giou"] == 2.0 and weights["loss_giou_4"] == 2.0
    assert len(weights) == 3 * 6


# ---------------------------------------------------------------- the network
def test_tiny_detr_forward_backward_and_output_contract():
    torch.manual_seed(0)
    model = build_detr("tiny", num_object_classes=5)
    widths = DETR_PRESETS["tiny"]
    images = [torch.rand(3, 128, 96), torch.rand(3, 80, 128)]
    output = model(images)
    batch, queries, d = 2, widths.num_queries, widths.hidden_dim
    assert output.logits.shape == (batch, queries, 6)
    assert output.boxes.shape == (batch, queries, 4)
    assert output.boxes.min() >= 0 and output.boxes.max() <= 1
    assert output.hidden.shape == (batch, queries, d)
    assert output.memory.shape == (batch, d, 16, 16)  # stride 8 on the 128-px padded batch
    assert output.memory_mask.shape == (batch, 16, 16)
    assert output.memory_mask[0, :, 12:].all() and not output.memory_mask[0, :, :12].any()
    assert output.memory_mask[1, 10:].all() and not output.memory_mask[1, :10].any()
    assert len(output.aux) == widths.decoder_layers - 1
    assert output.image_sizes == [(128, 96), (80, 128)]
    pixels = output.to_xyxy_pixels()
    assert pixels[1, :, [0, 2]].max() <= 128 and pixels[1, :, [1, 3]].max() <= 80
    target = [
        {"boxes": torch.tensor([[5.0, 5, 30, 40]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[10.0, 20, 60, 50], [70, 10, 90, 30]]),
            "labels": torch.tensor([5, 2]),
        },
    ]
    losses = detr_losses(output, target)
    assert set(losses) == set(model.loss_weights)
    weighted_total(losses, model.loss_weights).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()}
    # As in DETR, the first decoder layer's self-attention sees all-zero content (the queries
    # enter as positions only) and zero-initialised biases, so its weights get no gradient.
    assert no_grad <= {
        "transformer.decoder.0.self_attn.in_proj_weight",
        "transformer.decoder.0.self_attn.out_proj.weight",
        "transformer.decoder.0.norm1.weight",
    }
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    found = detections(output)
    assert found[0]["boxes"].shape == (queries, 4)
    assert found[0]["labels"].min() >= 1 and found[0]["labels"].max() <= 5
    assert model.describe()["detr_num_queries"] == str(queries)


def test_paper_preset_has_the_authors_sizes():
    widths = DETR_PRESETS["paper"]
    assert (widths.backbone, widths.backbone_stage, widths.hidden_dim, widths.heads) == (
        "resnet101",
        4,
        256,
        8,
    )
    assert (widths.encoder_layers, widths.decoder_layers, widths.ffn_dim) == (6, 6, 2048)
    assert widths.num_queries == 100
    with torch.device("meta"):  # the shapes without the cost of initialising ResNet-101
        model = build_detr("paper", 150)
    assert model.class_embed.out_features == 151
    assert model.input_proj.in_channels == 2048  # ResNet-101 C5
    assert len(model.bbox_embed.layers) == 3


def test_bad_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="huge"):
        build_detr("huge", 5)


# ---------------------------------------------------------------- checkpoints
CLASSES = ["__background__", "cat", "dog", "tree"]


def test_detr_checkpoint_round_trip_and_kind_refusal(tmp_path):
    torch.manual_seed(0)
    model = build_detr("tiny", 3).eval()
    path = tmp_path / "detr.pt"
    save_detr(model, path, "tiny", CLASSES)
    loaded = load_detr(path, expected_classes=CLASSES).eval()
    image = [torch.rand(3, 64, 80)]
    with torch.no_grad():
        assert torch.equal(model(image).boxes, loaded(image).boxes)
    with pytest.raises(ConfigError, match="trained on 3 object classes"):
        load_detr(path, expected_classes=CLASSES[:3])
    with pytest.raises(UserError, match="holds a detr detector.*--kind faster-rcnn"):
        load_detector(path, CLASSES)
    rcnn = tmp_path / "rcnn.pt"
    save_detector(build_detector("tiny", 4), rcnn, "tiny", 4, CLASSES)
    with pytest.raises(UserError, match="holds a faster-rcnn detector.*--kind detr"):
        load_detr(rcnn, CLASSES)


# ---------------------------------------------------------------- training
def test_train_detector_cli_trains_a_detr(synthetic_root_factory, tmp_path, capsys):
    root = synthetic_root_factory(30, 64, 0)
    out = tmp_path / "det"
    code = main(
        ["train-detector", "--kind", "detr", "--data", str(root), "--out", str(out)]
        + ["--epochs", "1", "--device", "cpu"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "detector epoch 1/1" in printed and "val box mAP@0.5" in printed
    result = json.loads(printed[printed.index("{") :])
    assert 0.0 <= result["box_mAP_50"] <= 1.0
    model = load_detr(out / "detector.pt")
    assert model.num_object_classes == 24


def test_train_detector_refuses_an_unknown_kind(capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's own refusal exits from inside main
        main(["train-detector", "--kind", "yolo", "--data", "x", "--out", "y"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'yolo'" in err and len(err.splitlines()) == 1


def overfit_map(root, widths, steps, num_images=4):
    """Trains a DETR of ``widths`` on ``num_images`` training images through the detector
    training loop (AdamW, lr 1e-3) and returns its box mAP@0.5 on them before and after."""
    dataset = SceneGraphDataset(root, "train", filter_empty_relations=False, seed=0)
    images, targets = zip(*(dataset[i] for i in range(num_images)))
    batch = (list(images), list(targets))
    num_classes = len(dataset.object_classes)
    torch.manual_seed(0)
    model = build_detr(widths, num_classes - 1)
    schedule = DetectorSchedule(
        batch_size=num_images, lr=1e-3, warmup_iters=0, max_grad_norm=0.1, optimizer="adamw"
    )
    optimizer, scheduler = detector_optimizer(model, schedule, total_iters=steps)
    before = evaluate_detector(model, [batch], num_classes, torch.device("cpu"))
    train_detector_epoch(
        model, [batch] * steps, optimizer, scheduler, torch.device("cpu"), schedule
    )
    return before, evaluate_detector(model, [batch], num_classes, torch.device("cpu"))


def test_detr_learns_a_handful_of_images_at_low_resolution(synthetic_root_factory):
    """The tiny preset's network at 64 px (a quarter of its cost) fits four images in 100 steps."""
    widths = dataclasses.replace(DETR_PRESETS["tiny"], min_size=64, max_size=64)
    before, after = overfit_map(synthetic_root_factory(30, 64, 0), widths, steps=100)
    assert before < 0.2
    assert after > 0.6


@pytest.mark.slow
def test_tiny_detr_overfits_a_handful_of_images(synthetic_root_factory):
    before, after = overfit_map(synthetic_root_factory(30, 64, 0), DETR_PRESETS["tiny"], 150)
    assert before < 0.2
    assert after > 0.9
