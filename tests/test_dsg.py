"""DSG: forward/backward of every variant, the GPI's symmetries and attention weights, box
refinement, proposal labels and the two-step reasoning on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from sgstudy.config import GPI_AGGREGATIONS, DsgConfig, ModelConfig, OptimConfig, RunConfig
from sgstudy.data.referring import ReferringDataset, compute_referring_statistics
from sgstudy.data.referring_synth import derive_referring_dataset
from sgstudy.errors import ConfigError
from sgstudy.models import build_model
from sgstudy.models.dsg.gpi import Aggregation, GpiStep
from sgstudy.models.dsg.heads import answer_from_scene_graph, query_one_hot
from sgstudy.models.dsg.targets import (
    IGNORE,
    OBJECT,
    OTHER,
    SUBJECT,
    match_boxes,
    refine_boxes,
    refinement_targets,
    relation_labels,
    role_labels,
)
from sgstudy.structures import ReferringPrediction, ReferringTarget

VARIANTS = [("dsg", a) for a in GPI_AGGREGATIONS] + [("no-dsg", "sum"), ("two-step", "sum")]


@pytest.fixture(scope="module")
def referring_root(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("referring") / "rr"
    derive_referring_dataset(synthetic_root, out, None)
    return out


@pytest.fixture(scope="module")
def batch_and_statistics(referring_root):
    train = ReferringDataset(referring_root, "train")
    image, target = train[0]
    return [image], [target], compute_referring_statistics(train)


@pytest.mark.parametrize(("variant", "aggregation"), VARIANTS)
def test_every_variant_trains_and_answers(batch_and_statistics, variant, aggregation):
    images, targets, statistics = batch_and_statistics
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="dsg", dsg=DsgConfig(variant, aggregation)), statistics)
    model.train()
    losses = model(images, targets)
    assert set(losses) == set(model.loss_weights)
    total = sum(model.loss_weights[name] * value for name, value in losses.items())
    assert torch.isfinite(total)
    total.backward()
    # The detector is trained with the rest (not frozen): its trunk and RPN get gradients.
    trunk_grad = next(model.detector.trunk.parameters()).grad
    assert trunk_grad is not None and trunk_grad.abs().sum() > 0
    assert model.detector.rpn.head.conv[0][0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        predictions = model(images, targets)
    assert len(predictions) == len(targets)
    for prediction, image in zip(predictions, images):
        assert isinstance(prediction, ReferringPrediction)
        assert len(prediction.boxes) >= 1 and prediction.role_scores.shape == (
            len(prediction.boxes),
            4,
        )
        assert torch.allclose(prediction.role_scores.sum(dim=1), torch.ones(len(prediction.boxes)))
        assert (prediction.boxes[:, 2:] <= torch.tensor(image.shape[:0:-1]) + 1e-3).all()
    described = model.describe()
    assert described["dsg_variant"] == variant and "dsg_tiny_simplifications" in described


def test_dsg_refuses_a_frozen_detector_checkpoint(batch_and_statistics):
    with pytest.raises(ConfigError, match="trains its own detector"):
        build_model(ModelConfig(name="dsg", detector_checkpoint="det.pt"), batch_and_statistics[2])


# ---------------------------------------------------------------- the GPI
def random_graph(n: int = 5, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator), torch.randn(n, n, dim, generator=generator)


@pytest.mark.parametrize("aggregation", GPI_AGGREGATIONS)
def test_gpi_is_permutation_equivariant(aggregation):
    torch.manual_seed(0)
    step = GpiStep(6, 6, 16, 8, 8, 12, 4, 3, aggregation).double()
    z, r = (x.double() for x in random_graph())
    permutation = torch.tensor([3, 0, 4, 1, 2])
    out = step(z, r)
    permuted = step(z[permutation], r[permutation][:, permutation])
    assert torch.allclose(permuted.graph, out.graph)  # g is invariant
    assert torch.allclose(permuted.nodes, out.nodes[permutation])
    assert torch.allclose(permuted.entity_logits, out.entity_logits[permutation])
    assert torch.allclose(
        permuted.relation_logits, out.relation_logits[permutation][:, permutation]
    )
    assert out.nodes.shape == (5, 12) and out.relation_logits.shape == (5, 5, 3)


def test_gpi_outputs_depend_on_the_relations():
    torch.manual_seed(0)
    step = GpiStep(6, 6, 16, 8, 8, 12, 4, 3, "feature-attention").double()
    z, r = (x.double() for x in random_graph())
    changed = r.clone()
    changed[0, 1] += 1.0
    assert not torch.allclose(step(z, r).nodes[0], step(z, changed).nodes[0])


def test_gpi_with_one_entity_has_an_empty_neighbour_sum():
    step = GpiStep(6, 6, 16, 8, 8, 12, 4, 3, "feature-attention")
    z, r = random_graph(n=1)
    out = step(z, r)
    assert out.nodes.shape == (1, 12) and torch.isfinite(out.nodes).all()


@pytest.mark.parametrize(
    ("aggregation", "width"), [("feature-attention", 8), ("scalar-attention", 1)]
)
def test_attention_weights_sum_to_one_over_neighbours_and_over_entities(aggregation, width):
    torch.manual_seed(0)
    n, features = 5, 8
    neighbours = Aggregation(aggregation, 10, 16, features)
    inputs = torch.randn(n, n, 10)
    mask = ~torch.eye(n, dtype=torch.bool)
    weights = neighbours.weights(inputs, axis=1, mask=mask)  # over j for every i (and feature)
    assert weights.shape == (n, n, width)
    assert torch.allclose(weights.sum(dim=1), torch.ones(n, width), atol=1e-6)
    assert (weights[torch.arange(n), torch.arange(n)] == 0).all()  # no message from i to i
    if aggregation == "feature-attention":  # a separate softmax per feature
        assert not torch.allclose(weights[..., 0], weights[..., 1])
    nodes = Aggregation(aggregation, 10, 16, features)
    node_weights = nodes.weights(torch.randn(n, 10), axis=0)  # over the entities i
    assert torch.allclose(node_weights.sum(dim=0), torch.ones(width), atol=1e-6)


def test_plain_sum_adds_the_neighbours():
    values = torch.arange(12.0).view(2, 2, 3)
    mask = ~torch.eye(2, dtype=torch.bool)
    summed = Aggregation("sum", 4, 8, 3)(values, torch.zeros(2, 2, 4), axis=1, mask=mask)
    assert torch.equal(summed, torch.stack([values[0, 1], values[1, 0]]))


# ---------------------------------------------------------------- boxes and labels
def test_box_refinement_follows_the_supplement_and_inverts_its_targets():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), size (20, 40)
    deltas = torch.tensor([[0.5, -0.25, math.log(2.0), 0.0]])
    # [dx w + x, dy h + y, e^dw w, e^dh h] = [30, 30, 40, 40]
    assert torch.allclose(refine_boxes(box, deltas), torch.tensor([[10.0, 10.0, 50.0, 50.0]]))
    gt = torch.tensor([[5.0, 7.0, 41.0, 33.0]])
    assert torch.allclose(refine_boxes(box, refinement_targets(box, gt)), gt, atol=1e-4)


def test_roles_entities_and_relations_of_proposals():
    annotated = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]], dtype=torch.float)
    target = ReferringTarget(
        1, (40, 40), annotated, torch.tensor([1, 2, 3]), torch.tensor([[0, 1, 4], [2, 1, 5]]),
        torch.tensor([1, 4, 2]), torch.tensor([0]), torch.tensor([1]),
    )  # fmt: skip
    proposals = torch.tensor(
        [[0, 0, 10, 10], [20, 0, 30, 9], [0, 20, 10, 30], [0, 0, 10, 4], [32, 32, 40, 40]],
        dtype=torch.float,
    )  # exact subject, object at IoU 0.9, the "other" box, IoU 0.4 (ignored), background
    matched, background = match_boxes(proposals, annotated)
    assert matched.tolist() == [0, 1, 2, -1, -1]
    assert role_labels(matched, background, target).tolist() == [SUBJECT, OBJECT, OTHER, IGNORE, 0]
    relations = relation_labels(matched, target.relations, 3)
    assert relations[0, 1] == 4 and relations[2, 1] == 5 and relations[1, 0] == 0
    assert relations[0, 0] == IGNORE and relations[3, 0] == IGNORE and relations[0, 4] == IGNORE


# ---------------------------------------------------------------- two-step reasoning
def test_query_one_hot_marks_subject_predicate_and_object():
    code = query_one_hot(torch.tensor([2, 1, 3]), num_entity_classes=3, num_predicates=2)
    assert code.tolist() == [0, 1, 0, 1, 0, 0, 0, 1]


def test_two_step_returns_the_nodes_of_a_predicted_matching_triplet():
    entity = torch.full((3, 3), -9.0)  # classes: 0 background, 1, 2
    entity[0, 1] = entity[1, 2] = entity[2, 1] = 9.0
    relation = torch.full((3, 3, 2), -9.0)
    relation[..., 0] = 9.0  # no relation ...
    relation[0, 1] = relation[2, 1] = torch.tensor([-9.0, 9.0])  # ... except 0->1 and 2->1
    roles = answer_from_scene_graph(entity, relation, torch.tensor([1, 1, 2]))
    assert roles.argmax(dim=1).tolist() == [SUBJECT, OBJECT, SUBJECT]


def test_two_step_falls_back_to_the_most_probable_triplet():
    entity = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    relation = torch.zeros(3, 3, 2)
    relation[..., 0] = 5.0  # the predicted graph has no relation at all
    relation[0, 2, 1] = 4.0  # but 0 -> 2 is the likeliest, and 0 -> 1 has a more likely object
    relation[0, 1, 1] = 1.0
    roles = answer_from_scene_graph(entity, relation, torch.tensor([1, 1, 2]))
    assert roles.argmax(dim=1).tolist() == [SUBJECT, 0, OBJECT]
    assert torch.equal(roles.sum(dim=1), torch.ones(3))


# ---------------------------------------------------------------- training defaults
def test_dsg_trains_with_the_papers_sgd_defaults_unless_told_otherwise():
    paper = RunConfig.from_flat({"model": "dsg", "preset": "paper"}).optim
    assert (paper.optimizer, paper.lr, paper.momentum, paper.batch_size) == ("sgd", 1e-3, 0.9, 1)
    assert paper.epochs == 20
    assert RunConfig.from_flat({"model": "dsg", "preset": "paper", "lr": 0.05}).optim.lr == 0.05
    # tiny: the CPU budget of the README's learnability runs; flags still override it.
    tiny = RunConfig.from_flat({"model": "dsg", "preset": "tiny"}).optim
    assert (tiny.optimizer, tiny.lr, tiny.batch_size, tiny.epochs) == ("sgd", 0.02, 4, 2)
    assert RunConfig.from_flat({"model": "dsg", "epochs": 5}).optim.epochs == 5
    assert RunConfig.from_flat({"model": "motifs"}).optim.lr == OptimConfig().lr
