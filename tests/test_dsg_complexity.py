"""The DSG supplement's Table 1 from code (``sgstudy complexity``): the generator's parameters
and multiply-adds against counts derived here from the supplement's stated widths, the
backbone rows, the command, and DSG's loss terms in the metric names."""

from __future__ import annotations

import pytest

from sgstudy import metric_names
from sgstudy.cli import main
from sgstudy.models.dsg.complexity import complexity_table
from sgstudy.models.dsg.model import LOSS_WEIGHTS

# The supplement's widths (§1) and SPEC §6's inputs and classes.
REGION = 512 + 4  # pooled region feature + 4 box coordinates (public code)
HIDDEN, PHI_OUT, ALPHA_OUT, RHO_OUT = 512, 512, 512, 1024
ENTITY_CLASSES, PREDICATES = 100 + 1, 70 + 1  # Visual Genome's, + background
PAIR = 3 * REGION  # [z_j, z_i, z_ij]
NODE = REGION + PHI_OUT  # [z_i, m_i]
N = 8  # entities: N^2 ordered pairs


def fc_parameters(*widths: int) -> int:
    """Weights and biases of a chain of fully-connected layers widths[0] -> ... -> widths[-1]."""
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def fc_multiply_adds(*widths: int) -> int:
    """Multiply-adds of one application of that chain (biases are additions only)."""
    return sum(a * b for a, b in zip(widths, widths[1:]))


# network: (its widths, how many times it runs: on every pair or every entity)
EXPECTED = {
    "φ (messages)": ((PAIR, HIDDEN, PHI_OUT), N * N),
    "φ's attention": ((PAIR, HIDDEN, PHI_OUT), N * N),  # feature-wise: one score per feature
    "α": ((NODE, HIDDEN, ALPHA_OUT), N),
    "α's attention": ((NODE, HIDDEN, ALPHA_OUT), N),
    "ρ (entity)": ((REGION + ALPHA_OUT + PHI_OUT, HIDDEN, RHO_OUT), N),  # [z_i, g, m_i]
    "relation head": ((PAIR + ALPHA_OUT, PREDICATES), N * N),  # [z_j, z_i, z_ij, g]
    "entity head": ((RHO_OUT, ENTITY_CLASSES), N),  # z'_i
}


@pytest.fixture(scope="module")
def paper_table():
    return complexity_table("paper", num_entities=N)


def test_the_generator_holds_the_parameters_its_stated_widths_give(paper_table):
    parts = {part.name: part for part in paper_table.parts}
    assert list(parts) == list(EXPECTED)
    for name, (widths, applications) in EXPECTED.items():
        assert parts[name].widths == widths, name
        assert parts[name].parameters == fc_parameters(*widths), name
        assert parts[name].multiply_adds == applications * fc_multiply_adds(*widths), name
        assert parts[name].applications == applications, name
    generator = paper_table.rows[0]
    assert generator.parameters == sum(fc_parameters(*w) for w, _ in EXPECTED.values())
    assert generator.multiply_adds == sum(a * fc_multiply_adds(*w) for w, a in EXPECTED.values())


def test_the_aggregations_differ_by_their_attention_networks_only(paper_table):
    counts = {name: (p, m) for name, p, m in paper_table.aggregations}
    full = counts["feature-attention"]
    assert full == (paper_table.rows[0].parameters, paper_table.rows[0].multiply_adds)
    attention = [EXPECTED["φ's attention"], EXPECTED["α's attention"]]
    assert counts["sum"] == (
        full[0] - sum(fc_parameters(*w) for w, _ in attention),
        full[1] - sum(a * fc_multiply_adds(*w) for w, a in attention),
    )
    # Scalar attention: the same networks with one output.
    scalar = [((w[0], w[1], 1), a) for w, a in attention]
    assert counts["scalar-attention"] == (
        counts["sum"][0] + sum(fc_parameters(*w) for w, _ in scalar),
        counts["sum"][1] + sum(a * fc_multiply_adds(*w) for w, a in scalar),
    )


def test_the_backbone_rows_and_the_operations_convention(paper_table):
    _, at_paper_size, at_imagenet_size = paper_table.rows
    assert at_paper_size.input == "one 600 x 1000 image"
    assert at_paper_size.parameters == at_imagenet_size.parameters > 40e6
    assert at_paper_size.multiply_adds > 15e9
    # At 224 x 224 only FLOPs (2 per multiply-add) pass 15 G: the common ResNet-101 figure.
    assert at_imagenet_size.multiply_adds < 15e9 < 2 * at_imagenet_size.multiply_adds
    # The union-box branch costs 49 x more on 7 x 7 crops than on 1 x 1 ones, same weights.
    (seven, p7, ops7), (one, p1, ops1) = paper_table.unions
    assert (seven, one, p7) == (7, 1, p1) and ops7 == 49 * ops1
    # The detector without DSG runs the same last stage on N entity crops: N / N^2 of the
    # union branch, plus the trunk and the RPN head.
    assert paper_table.detector > ops7 // N + at_paper_size.multiply_adds // 2


def test_complexity_command_prints_the_measured_table_1(capsys):
    assert main(["complexity", "--model", "dsg", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "| DSG generator | n = 32 entities" in out and "| ResNet-101 | one 600 x 1000" in out
    assert "multiply-adds" in out and "< 4M params, < 1.5G ops" in out
    assert "| φ's attention | 1548 -> 512 -> 512 | 1024 x | 1,055,744 |" in out


def test_complexity_refuses_an_empty_graph(capsys):
    assert main(["complexity", "--num-entities", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --num-entities must be >= 1, got 0"


def test_dsg_loss_terms_are_the_metric_names_loss_terms():
    terms = {name for weights in LOSS_WEIGHTS.values() for name in weights}
    assert terms == set(metric_names.DSG_LOSS_TERMS)
    assert terms <= set(metric_names.LOSS_TERMS)
