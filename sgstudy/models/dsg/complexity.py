"""The DSG supplement's Table 1 from code: trainable parameters and operations of the DSG
generator at n entities, against the ResNet-101 backbone at the paper's input size.

"Operations" are multiply-adds: ``torch.utils.flop_counter`` counts a multiply-add as two
FLOPs (matrix products 2 m n k, convolutions likewise), so multiply-adds = FLOPs / 2. Both
networks run on the meta device: shapes only, no memory and no arithmetic, so the table is
instant even for ResNet-101 at 600 x 1000.

What is counted:
- DSG generator: one ``GpiStep`` with the preset's widths and feature-wise attention (phi and
  its attention network on the n^2 ordered pairs, alpha and its attention network on the n
  entities, rho, and the entity and relation heads) for Visual Genome's referring-relationship
  classes (100 entity, 70 predicate classes; SPEC §6), inputs of 512 + 4 features.
- ResNet-101: torchvision's network up to ``layer4`` (no classifier), on one 600 x 1000 image
  (tf-faster-rcnn's shorter side 600, longer side at most 1000).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet101

from sgstudy.models.dsg.gpi import GpiStep
from sgstudy.models.dsg.model import DSG_PRESETS

VG_ENTITY_CLASSES = 100
VG_PREDICATES = 70
PAPER_IMAGE_SIZE = (600, 1000)  # (height, width)
# The supplement's Table 1 bounds: (parameters, multiply-adds).
SUPPLEMENT_BOUNDS = {"DSG generator": ("< 4M", "< 1.5G"), "ResNet-101": ("> 40M", "> 15G")}


@dataclass(frozen=True)
class ComplexityRow:
    component: str
    input: str
    parameters: int  # trainable
    multiply_adds: int  # flop_counter FLOPs / 2
    supplement_parameters: str
    supplement_operations: str


def count(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, int]:
    """(trainable parameters, multiply-adds of one forward pass) of ``module`` on ``inputs``."""
    parameters = sum(p.numel() for p in module.parameters() if p.requires_grad)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return parameters, counter.get_total_flops() // 2


def complexity_table(preset: str = "paper", num_entities: int = 32) -> list[ComplexityRow]:
    """The DSG generator at ``num_entities`` and ResNet-101 at 600 x 1000, as rows."""
    w = DSG_PRESETS[preset]
    region_dim = w.feature + 4
    n = num_entities
    with torch.device("meta"):
        generator = GpiStep(
            region_dim, region_dim, w.hidden, w.phi_out, w.alpha_out, w.rho_out,
            VG_ENTITY_CLASSES + 1, VG_PREDICATES + 1, "feature-attention",
        )  # fmt: skip
        entities, relations = torch.empty(n, region_dim), torch.empty(n, n, region_dim)
        backbone = nn.Sequential(*list(resnet101(weights=None).children())[:-2])
        image = torch.empty(1, 3, *PAPER_IMAGE_SIZE)
    rows = []
    for name, module, inputs, shown in (
        ("DSG generator", generator, (entities, relations), f"n = {n} entities, {n}^2 relations"),
        ("ResNet-101", backbone, (image,), f"one {PAPER_IMAGE_SIZE[0]} x {PAPER_IMAGE_SIZE[1]} image"),
    ):  # fmt: skip
        parameters, multiply_adds = count(module, *inputs)
        rows.append(ComplexityRow(name, shown, parameters, multiply_adds, *SUPPLEMENT_BOUNDS[name]))
    return rows


def format_complexity_table(rows: list[ComplexityRow]) -> str:
    """A markdown table: measured parameters and multiply-adds next to the supplement's bounds,
    and the generator's share of the backbone."""
    lines = [
        "| component | input | trainable parameters | multiply-adds | supplement |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.component} | {row.input} | {row.parameters / 1e6:.2f} M | "
            f"{row.multiply_adds / 1e9:.2f} G | {row.supplement_parameters} params, "
            f"{row.supplement_operations} ops |"
        )
    if len(rows) == 2:
        generator, backbone = rows
        lines.append(
            f"\nDSG generator / ResNet-101: {generator.parameters / backbone.parameters:.1%} of "
            f"the parameters, {generator.multiply_adds / backbone.multiply_adds:.1%} of the "
            "multiply-adds (operations = multiply-adds = torch.utils.flop_counter FLOPs / 2)."
        )
    return "\n".join(lines)
