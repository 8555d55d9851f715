"""Relation alignment, the generic parts: the masks, the two alignment losses, the projection
head, the config switches and the description."""

import math

import pytest
import torch

from sgstudy.config import AlignConfig, RunConfig
from sgstudy.errors import ConfigError
from sgstudy.models.align import (
    AlignmentProjection,
    alignment_loss,
    describe_alignment,
    distribution_alignment,
    keep_mask,
    mask_features,
    mask_relations,
    masked_relation_rows,
    representation_alignment,
)


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.6])
def test_mask_drops_the_configured_share_of_elements(ratio):
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(100, 1000, generator=generator) + 1.0  # no element is zero before
    masked = mask_features(features, ratio, torch.Generator().manual_seed(1))
    dropped = (masked == 0).double().mean().item()
    assert abs(dropped - ratio) < 0.01
    kept = masked != 0
    # Kept elements are passed through unscaled.
    assert torch.equal(masked[kept], features[kept])


def test_mask_with_ratio_zero_keeps_everything():
    features = torch.randn(50, 20)
    assert torch.equal(mask_features(features, 0.0), features)


def test_mask_is_reproducible_from_the_generator_state():
    like = torch.zeros(30, 30)
    first = keep_mask(like, 0.4, torch.Generator().manual_seed(7))
    second = keep_mask(like, 0.4, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    assert first.dtype == torch.bool and first.shape == like.shape


def test_representation_alignment_is_two_minus_two_cos_and_moves_only_the_student():
    student = torch.tensor([[3.0, 0.0], [0.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 2.0], [0.0, -5.0]], requires_grad=True)
    loss = representation_alignment(student, teacher)
    # Pair 1 is orthogonal (2 - 2 cos = 2), pair 2 points the same way (0): mean 1.
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert teacher.grad is None
    assert student.grad[0].abs().sum() > 0
    assert torch.allclose(student.grad[1], torch.zeros(2), atol=1e-7)


def test_representation_alignment_cannot_be_met_by_shrinking():
    """Scaling both branches down leaves the loss unchanged: collapsing to zero gains nothing."""
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 16), torch.randn(8, 16)
    full = representation_alignment(student, teacher)
    assert representation_alignment(student * 1e-3, teacher * 1e-3).item() == pytest.approx(
        full.item(), rel=1e-5
    )


def test_distribution_alignment_is_kl_teacher_to_student():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 0.0]], requires_grad=True)
    loss = distribution_alignment(student, teacher)
    # Pair 1: KL([3/4, 1/4] || [1/2, 1/2]); pair 2: identical distributions, KL 0.
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0


def test_both_is_the_sum_and_identical_branches_align_perfectly():
    torch.manual_seed(0)
    rep_s, rep_t, log_s, log_t = (torch.randn(6, 4) for _ in range(4))
    both = alignment_loss("both", rep_s, rep_t, log_s, log_t)
    parts = representation_alignment(rep_s, rep_t) + distribution_alignment(log_s, log_t)
    assert both.item() == pytest.approx(parts.item())
    assert alignment_loss("both", rep_t, rep_t, log_t, log_t).item() == pytest.approx(0.0, abs=1e-6)


def test_no_pairs_gives_a_zero_loss():
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = alignment_loss("both", empty, empty, empty, empty)
    assert loss.item() == 0.0
    loss.backward()


def test_describe_names_mask_and_target():
    config = AlignConfig(enabled=True, mask_ratio=0.2, weight=5.0, target="distribution")
    text = describe_alignment(config, "edge inputs", "pair representation")
    assert "edge inputs" in text["align_masks"] and "p=0.2" in text["align_masks"]
    assert text["align_aligns"].startswith("KL")
    assert "5.0" in text["align_loss"]
    assert describe_alignment(AlignConfig(), "x", "y") == {"align_branch": "off"}


# ---------------------------------------------------------------- relation masks
@pytest.mark.parametrize(("ratio", "relations"), [(0.05, 400), (0.1, 73), (0.4, 10), (0.6, 1000)])
def test_relation_mask_zeroes_whole_rows_of_exactly_a_share_p(ratio, relations):
    features = torch.rand(relations, 12) + 1.0  # no element is zero before
    masked, rows = mask_relations(features, ratio, torch.Generator().manual_seed(3))
    assert rows.dtype == torch.bool and rows.shape == (relations,)
    assert int(rows.sum()) == round(ratio * relations)
    assert torch.equal(masked[rows], torch.zeros_like(masked[rows]))  # whole rows
    assert torch.equal(masked[~rows], features[~rows])  # the others untouched


def test_relation_masks_differ_between_draws_and_repeat_from_a_seed():
    first = masked_relation_rows(100, 0.3, generator=torch.Generator().manual_seed(1))
    again = masked_relation_rows(100, 0.3, generator=torch.Generator().manual_seed(1))
    other = masked_relation_rows(100, 0.3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_projection_head_keeps_the_width():
    head = AlignmentProjection(16)
    assert head(torch.randn(5, 16)).shape == (5, 16)


def test_default_is_relation_masks_and_distribution_alignment():
    config = AlignConfig()
    assert (config.mask_unit, config.masked_input, config.target) == (
        "relation", "pair_context", "distribution",
    )  # fmt: skip
    assert config.projection_head
    text = describe_alignment(AlignConfig(enabled=True), "pair contexts", "rep")
    assert "round(p=0.1" in text["align_masks"] and "masked relations only" in text["align_aligns"]


def test_relation_masks_need_a_tensor_with_one_row_per_relation():
    with pytest.raises(ConfigError, match="holds objects, not relations"):
        AlignConfig(masked_input="edge_input")  # mask_unit defaults to relation
    with pytest.raises(ConfigError, match="align_mask_unit"):
        AlignConfig(mask_unit="pixel")


def test_flat_keys_reach_the_first_implementation():
    flat = {
        "align": True, "align_mask_unit": "element", "masked_input": "edge_input",
        "align_target": "representation", "align_projection_head": False,
    }  # fmt: skip
    config = RunConfig.from_flat(flat)
    align = config.model.align
    assert (align.mask_unit, align.masked_input, align.target, align.projection_head) == (
        "element", "edge_input", "representation", False,
    )  # fmt: skip
    params = config.to_params()
    assert params["align_mask_unit"] == "element" and params["align_projection_head"] is False
    assert RunConfig.from_flat(params) == config
