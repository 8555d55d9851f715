"""Neural Motifs: every protocol trains and predicts, alignment leaves the supervised branch alone,
the frequency bias starts at the counted log-frequencies, pairs are sampled as specified."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sgstudy.config import AlignConfig, ModelConfig
from sgstudy.engine import weighted_total
from sgstudy.errors import ConfigError
from sgstudy.models import MODEL_BUILDERS, build_model
from sgstudy.models.detector import build_detector, save_detector
from sgstudy.models.motifs.context import commit_labels_with_nms, encode_boxes, left_to_right
from sgstudy.models.motifs.predictor import FrequencyBias, UnionFeatures
from sgstudy.models.motifs.sampling import (
    all_ordered_pairs,
    detection_relation_matrix,
    match_to_annotations,
    relation_matrix,
    sample_training_pairs,
)
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget

NUM_OBJECTS, NUM_PREDICATES = 6, 5
PROTOCOLS = ("predcls", "sgcls", "sgdet")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def statistics():
    """What build_motifs reads from DatasetStatistics, made by hand."""
    counts = np.random.default_rng(0).integers(0, 6, (NUM_OBJECTS + 1,) * 2 + (NUM_PREDICATES + 1,))
    return SimpleNamespace(
        object_classes=["__background__"] + [f"object{i}" for i in range(NUM_OBJECTS)],
        predicate_classes=["__background__"] + [f"predicate{i}" for i in range(NUM_PREDICATES)],
        pair_predicate_counts=counts.astype(np.int64),
    )


@pytest.fixture(scope="module")
def batch():
    """Three 64-px random images with 3-5 hand-placed boxes and a few relations each."""
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for index, count in enumerate((4, 3, 5)):
        corner = torch.rand(count, 2, generator=generator) * 40
        size = torch.rand(count, 2, generator=generator) * 15 + 8
        relations = torch.tensor([[0, 1, 2], [1, 2, 4], [2, 0, 1]])
        targets.append(
            SceneGraphTarget(
                image_id=index,
                image_size=(64, 64),
                boxes=torch.cat([corner, corner + size], dim=1),
                labels=torch.randint(1, NUM_OBJECTS + 1, (count,), generator=generator),
                relations=relations,
            )
        )
        images.append(torch.rand(3, 64, 64, generator=generator))
    return images, targets


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory, statistics):
    path = tmp_path_factory.mktemp("detector") / "detector.pt"
    torch.manual_seed(0)
    detector = build_detector("tiny", NUM_OBJECTS + 1)
    save_detector(detector, path, "tiny", NUM_OBJECTS + 1, statistics.object_classes)
    return str(path)


def motifs(statistics, detector_file, protocol, seed=0, **align):
    config = ModelConfig(
        protocol=protocol,
        align=AlignConfig(**align),
        detector_checkpoint=detector_file if protocol == "sgdet" else None,
    )
    torch.manual_seed(seed)
    return build_model(config, statistics)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forward_backward_trains_the_relation_head_only(
    statistics, detector_file, batch, protocol, align
):
    model = motifs(statistics, detector_file, protocol, enabled=align, mask_ratio=0.3).train()
    losses = model(*batch)
    expected = {"loss_rel"} | ({"loss_obj"} if protocol != "predcls" else set())
    assert set(losses) == expected | ({"loss_align"} if align else set())
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    weighted_total(losses, model.loss_weights).backward()
    head = model.pair_classifier.classify.weight.grad
    assert head is not None and head.abs().sum() > 0
    assert model.edge_context.lstm.weight_ih_l0.grad.abs().sum() > 0
    assert model.frequency_bias.table.weight.grad.abs().sum() > 0
    if protocol != "predcls":
        assert model.decoder.classify.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.detector.parameters())
    assert not model.detector.training  # the frozen detector stays in eval mode


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("masked_input", "mask_unit"),
    [("pair_context", "relation"), ("pair_context", "element"), ("edge_input", "element"),
     ("edge_context", "element")],
)  # fmt: skip
def test_alignment_leaves_the_supervised_losses_unchanged(
    statistics, detector_file, batch, protocol, masked_input, mask_unit
):
    weight = 7.0
    baseline = motifs(statistics, detector_file, protocol).train()
    aligned = motifs(
        statistics, detector_file, protocol, enabled=True, mask_ratio=0.4, weight=weight,
        masked_input=masked_input, mask_unit=mask_unit, target="both",
    ).train()  # fmt: skip
    # Same weights, whatever the build drew; the projection head exists in the aligned model only.
    aligned.load_state_dict(baseline.state_dict(), strict=False)
    torch.manual_seed(5)
    plain = baseline(*batch)
    torch.manual_seed(5)
    with_align = aligned(*batch)
    for name in plain:
        assert torch.equal(plain[name], with_align[name]), name
    assert with_align["loss_align"] > 0
    total = weighted_total(with_align, aligned.loss_weights)
    expected = weighted_total(plain, baseline.loss_weights) + weight * with_align["loss_align"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mask_ratio_zero_makes_the_branches_identical(statistics, detector_file, batch):
    """The branch shares every parameter: with nothing masked it reproduces the teacher (compared
    without the projection head, which only the student reads)."""
    model = motifs(
        statistics, detector_file, "sgcls", enabled=True, mask_ratio=0.0, target="both",
        mask_unit="element", projection_head=False,
    )  # fmt: skip
    assert model.train()(*batch)["loss_align"].item() == pytest.approx(0.0, abs=1e-9)


def test_without_alignment_no_random_numbers_are_drawn(statistics, detector_file, batch):
    """Each image has fewer pairs than the sampling limits, so only the mask could draw."""
    baseline = motifs(statistics, detector_file, "predcls").train()
    aligned = motifs(statistics, detector_file, "predcls", enabled=True).train()
    before = torch.get_rng_state()
    baseline(*batch)
    assert torch.equal(torch.get_rng_state(), before)
    aligned(*batch)
    assert not torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------- testing
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_eval_scores_every_ordered_pair(statistics, detector_file, batch, protocol):
    images, targets = batch
    model = motifs(statistics, detector_file, protocol).eval()
    with torch.no_grad():
        predictions = model(images, targets)
    assert len(predictions) == len(images)
    for prediction, target in zip(predictions, targets):
        assert isinstance(prediction, SceneGraphPrediction)
        n = len(prediction.boxes)
        assert prediction.labels.shape == prediction.label_scores.shape == (n,)
        assert torch.equal(prediction.pairs, all_ordered_pairs(n))
        assert prediction.predicate_scores.shape == (n * (n - 1), NUM_PREDICATES + 1)
        sums = prediction.predicate_scores.sum(dim=1)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
        assert (prediction.labels >= 1).all() and (prediction.labels <= NUM_OBJECTS).all()
        if protocol == "sgdet":
            continue
        assert torch.equal(prediction.boxes, target.boxes)
        if protocol == "predcls":
            assert torch.equal(prediction.labels, target.labels)
            assert torch.equal(prediction.label_scores, torch.ones(n))


def test_sgdet_eval_ignores_the_annotations(statistics, detector_file, batch):
    images, targets = batch
    model = motifs(statistics, detector_file, "sgdet").eval()
    moved = [
        SceneGraphTarget(
            t.image_id, t.image_size, t.boxes.flip(0) + 3, t.labels.flip(0), t.relations
        )
        for t in targets
    ]
    with torch.no_grad():
        first, second = model(images, targets), model(images, moved)
    for a, b in zip(first, second):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.predicate_scores, b.predicate_scores)
    assert len(first[0].boxes) > 2  # detections, not the 4 annotated boxes


# ---------------------------------------------------------------- building
def test_unknown_model_name_is_a_config_error(statistics):
    config = ModelConfig()
    object.__setattr__(config, "name", "no-such-model")  # past ModelConfig's own check
    with pytest.raises(ConfigError, match="no-such-model.*motifs"):
        build_model(config, statistics)
    assert "motifs" in MODEL_BUILDERS


def test_sgdet_without_detector_is_a_config_error(statistics):
    with pytest.raises(ConfigError, match="sgdet needs a trained detector: pass --detector"):
        build_model(ModelConfig(protocol="sgdet"), statistics)


def test_detector_of_other_classes_is_refused(statistics, tmp_path):
    path = tmp_path / "other.pt"
    save_detector(build_detector("tiny", 4), path, "tiny", 4, ["bg", "a", "b", "c"])
    config = ModelConfig(protocol="sgcls", detector_checkpoint=str(path))
    with pytest.raises(ConfigError, match="other.pt"):
        build_model(config, statistics)


def test_describe_reports_widths_detector_and_alignment(statistics, detector_file):
    model = motifs(
        statistics, detector_file, "predcls", enabled=True, masked_input="edge_context",
        mask_unit="element",
    )  # fmt: skip
    text = model.describe()
    assert text["motifs_preset"] == "tiny" and "pair 256" in text["motifs_widths"]
    assert "random frozen features" in text["motifs_detector"]
    assert text["align_masks"].startswith("edge-context output")
    assert all(isinstance(v, str) for v in text.values())


# ---------------------------------------------------------------- parts
def test_frequency_bias_starts_at_log_frequencies():
    counts = np.zeros((2, 2, 3), dtype=np.int64)
    counts[1, 1] = [3, 4, 0]  # 3 unrelated pairs, 4 with predicate 1
    counts[0, 1] = [0, 0, 2]
    bias = FrequencyBias(counts)
    got = bias(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 0])).detach()
    eps = 1e-3
    expected = torch.tensor(
        [
            [math.log(4 / 8 + eps), math.log(4 / 8 + eps), math.log(0 / 8 + eps)],
            [math.log(1 / 3 + eps), math.log(0 + eps), math.log(2 / 3 + eps)],
            [math.log(1.0 + eps), math.log(eps), math.log(eps)],  # never seen: background
        ]
    )
    assert torch.allclose(got, expected, atol=1e-6)
    assert bias.table.weight.requires_grad


def test_sampling_keeps_annotated_pairs_then_fills_with_background():
    matrix = torch.zeros(40, 40, dtype=torch.long)
    matrix[torch.arange(30), torch.arange(1, 31)] = torch.arange(30) % 5 + 1
    torch.manual_seed(0)
    pairs, labels = sample_training_pairs(matrix, max_foreground=20, max_pairs=100)
    assert len(pairs) == 100 and (labels[:20] > 0).all() and (labels[20:] == 0).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert torch.equal(matrix[pairs[:, 0], pairs[:, 1]], labels)
    assert len(set(map(tuple, pairs.tolist()))) == 100
    torch.manual_seed(0)
    again, _ = sample_training_pairs(matrix, max_foreground=20, max_pairs=100)
    assert torch.equal(pairs, again)  # reproducible from torch's RNG state
    small = relation_matrix(torch.tensor([[0, 1, 3], [2, 1, 2]]), 3)
    pairs, labels = sample_training_pairs(small)
    assert len(pairs) == 6 and sorted(labels.tolist()) == [0, 0, 0, 0, 2, 3]


def test_detections_take_the_relations_of_the_boxes_they_match():
    gt_boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    gt_matrix = relation_matrix(torch.tensor([[0, 1, 4]]), 2)
    detections = torch.tensor([[21.0, 21, 40, 40], [0, 0, 9, 10], [50, 50, 60, 60], [0, 0, 10, 4]])
    matches = match_to_annotations(detections, gt_boxes)
    assert matches.tolist() == [1, 0, -1, -1]  # the last one has IoU 0.4 with box 0
    matrix = detection_relation_matrix(matches, gt_matrix)
    assert matrix[1, 0] == 4 and matrix.sum() == 4


def test_per_class_nms_renames_a_duplicate_box():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [30, 30, 40, 40]])
    probabilities = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.8, 0.2], [0.1, 0.7, 0.2]])
    labels, scores = commit_labels_with_nms(probabilities, boxes)
    # Box 1 overlaps box 0, which took class 1 first, so it keeps its next class.
    assert labels.tolist() == [1, 2, 1]
    assert torch.allclose(scores, torch.tensor([0.9, 0.2, 0.7]))


def test_boxes_are_encoded_and_ordered_left_to_right():
    boxes = torch.tensor([[30.0, 0, 50, 20], [0, 10, 20, 30]])
    encoded = encode_boxes(boxes, (40, 100))
    assert torch.allclose(encoded[1], torch.tensor([0, 0.25, 0.2, 0.75, 0.1, 0.5, 0.2, 0.5, 0.1]))
    assert left_to_right(boxes).tolist() == [1, 0]


def test_union_rectangles_mark_subject_and_object():
    union = UnionFeatures(channels=4, resolution=2, out_dim=8)  # 7-px masks
    boxes = torch.tensor([[[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]]])
    masks = union.rectangles(boxes)
    assert masks.shape == (1, 2, 7, 7)
    # Subject: pixels floor(0) .. ceil(1.75) = 0..2; object: floor(3.5) .. ceil(7) = 3..6.
    assert masks[0, 0].sum() == 9 and masks[0, 0, :3, :3].all()
    assert masks[0, 1].sum() == 16 and masks[0, 1, 3:, 3:].all()
