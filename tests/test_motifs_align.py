"""Align-Motifs: the default masks whole relations and aligns those relations only; the
projection head is the student's alone; the first implementation stays reachable by switches;
the collapse and balance diagnostics reach an epoch's results."""

from __future__ import annotations

import pytest
import torch

from sgstudy.config import AlignConfig, ModelConfig, RunConfig
from sgstudy.engine import build_optimizer, build_scheduler, train_one_epoch, weighted_total
from sgstudy.metric_names import ALIGN_GRAD_RATIO
from sgstudy.models import build_model
from sgstudy.models import motifs as motifs_package
from sgstudy.models.align import representation_alignment
from sgstudy.models.diagnostics import RepresentationProbe, effective_rank
from tests.test_motifs import batch, statistics  # noqa: F401  (fixtures)

model_module = motifs_package.model


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def build(statistics, **align):  # noqa: F811
    torch.manual_seed(0)
    return build_model(ModelConfig(align=AlignConfig(enabled=True, **align)), statistics).train()


def record_calls(monkeypatch, model, name):
    """Wrap ``model.<name>`` so that each call's outputs are kept, in order."""
    calls, original = [], getattr(model, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(model, name, wrapper)
    return calls


def test_alignment_compares_the_masked_relations_only(monkeypatch, statistics, batch):  # noqa: F811
    model = build(statistics, mask_ratio=0.4)
    branches = record_calls(monkeypatch, model, "predict_predicates")  # teacher, then student
    masks = []
    original_mask = model_module.mask_relations

    def mask_and_keep(*args, **kwargs):
        masked, rows = original_mask(*args, **kwargs)
        masks.append(rows)
        return masked, rows

    monkeypatch.setattr(model_module, "mask_relations", mask_and_keep)
    loss = model(*batch)["loss_align"]
    (_, teacher), (_, student) = branches
    (rows,) = masks
    assert int(rows.sum()) == round(0.4 * len(rows)) and 0 < rows.sum() < len(rows)
    # Only the masked relations changed, and only they enter the KL.
    assert torch.equal(student[~rows], teacher[~rows])
    assert not torch.allclose(student[rows], teacher[rows])
    expected = torch.nn.functional.kl_div(
        student[rows].log_softmax(1), teacher[rows].log_softmax(1),
        reduction="batchmean", log_target=True,
    )  # fmt: skip
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_projection_head_is_read_by_the_student_only(statistics, batch):  # noqa: F811
    # Element masks: at initialisation a relation-masked pair representation is exactly zero
    # (the combine layer's bias starts at zero), which would leave the head without gradient.
    model = build(statistics, target="representation", mask_ratio=0.3, mask_unit="element")
    calls = []
    model.align_projection.register_forward_hook(lambda *_: calls.append(1))
    head = list(model.align_projection.parameters())
    losses = model(*batch)
    assert len(calls) == 1  # the alignment branch
    supervised = torch.autograd.grad(losses["loss_rel"], head, allow_unused=True)
    assert all(g is None for g in supervised)
    aligned = torch.autograd.grad(losses["loss_align"], head, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in aligned)
    model.eval()
    with torch.no_grad():
        model(*batch)
    assert len(calls) == 1  # predicting never reads it


def test_first_implementation_is_reachable_by_switches(monkeypatch, statistics, batch):  # noqa: F811
    """Bernoulli(p) elements of the edge-context input, 2 − 2 cos on the shared classifier
    input of every relation, no projection head: the variant that collapsed at λ = 10."""
    flat = {
        "align": True, "align_mask_unit": "element", "masked_input": "edge_input",
        "align_target": "representation", "align_projection_head": False, "mask_ratio": 0.3,
    }  # fmt: skip
    torch.manual_seed(0)
    model = build_model(RunConfig.from_flat(flat).model, statistics).train()
    assert model.align_projection is None
    edge_inputs = []
    contextualise = model.edge_context.contextualise
    monkeypatch.setattr(
        model.edge_context, "contextualise",
        lambda x, order: edge_inputs.append(x) or contextualise(x, order),
    )  # fmt: skip
    classifier_inputs = []
    model.pair_classifier.classify.register_forward_pre_hook(
        lambda _m, inputs: classifier_inputs.append(inputs[0])
    )
    torch.manual_seed(11)  # this batch samples no pairs: the mask is the first draw
    loss = model(*batch)["loss_align"]
    torch.manual_seed(11)
    keep = torch.rand(edge_inputs[0].shape) >= 0.3
    assert torch.equal(edge_inputs[1], edge_inputs[0] * keep)
    teacher, student = classifier_inputs
    assert len(student) == len(teacher)  # every relation aligned
    assert loss.item() == pytest.approx(representation_alignment(student, teacher).item())


def test_effective_rank_counts_used_directions():
    torch.manual_seed(0)
    assert effective_rank(torch.randn(4000, 8)) == pytest.approx(8.0, rel=0.05)
    line = torch.randn(500, 1) @ torch.randn(1, 16)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(torch.ones(10, 4)) == 0.0


def test_diagnostics_reach_an_epochs_results(statistics, batch):  # noqa: F811
    model = build(statistics, mask_ratio=0.2)
    optim = RunConfig().optim
    optimizer = build_optimizer(model, optim)
    loader = [batch] * 3
    scheduler = build_scheduler(optimizer, optim, len(loader))
    losses = train_one_epoch(model, loader, optimizer, scheduler, torch.device("cpu"), 5.0)
    assert losses[ALIGN_GRAD_RATIO] > 0
    # The ratio is the one of the weighted terms, measured on the shared encoder.
    terms = model(*batch)
    encoder = model.shared_encoder_parameters()
    assert model.pair_classifier.classify.weight not in set(encoder)

    def norm(loss):
        grads = torch.autograd.grad(loss, encoder, retain_graph=True, allow_unused=True)
        return torch.stack([g.pow(2).sum() for g in grads if g is not None]).sum().sqrt()

    weights = model.loss_weights
    ratio = norm(weights["loss_align"] * terms["loss_align"]) / norm(terms["loss_rel"])
    assert ratio > 0 and torch.isfinite(ratio)
    plain = build_model(ModelConfig(), statistics).train()
    optimizer = build_optimizer(plain, optim)
    scheduler = build_scheduler(optimizer, optim, len(loader))
    assert ALIGN_GRAD_RATIO not in train_one_epoch(
        plain, loader, optimizer, scheduler, torch.device("cpu"), 5.0
    )
    with RepresentationProbe(plain.pair_representation_layer()) as probe, torch.no_grad():
        plain.eval()(*batch)
    assert 1.0 <= probe.effective_rank() <= 256
    assert weighted_total(terms, weights).requires_grad
