"""The DSG supplement's Table 1 from code: trainable parameters and operations of the DSG
generator at n entities, against the ResNet-101 backbone, network by network.

"Operations" are multiply-adds: ``torch.utils.flop_counter`` counts a multiply-add as two
FLOPs (matrix products 2 m n k, convolutions likewise; bias additions, softmaxes and sums are
not counted), so multiply-adds = FLOPs / 2. The table prints both. Both networks run on the
meta device: shapes only, no memory and no arithmetic, so the table is instant even for
ResNet-101 at 600 x 1000.

What is counted:
- DSG generator: one ``GpiStep`` (the public code runs one step) with the preset's widths, for
  Visual Genome's referring-relationship classes (100 entity, 70 predicate classes; SPEC §6),
  inputs of 512 + 4 box coordinates: phi and its attention network on the n^2 ordered pairs,
  alpha and its attention network on the n entities, rho, and the entity and relation heads of
  the partial scene-graph supervision. The breakdown lists every network, and the generator is
  also counted with the other two aggregations (scalar attention, plain sums), because the
  supplement gives the sizes of phi, alpha and rho only, not of the attention networks.
- ResNet-101: torchvision's network up to ``layer4`` (no classifier) on one 600 x 1000 image
  (tf-faster-rcnn's and the public DSG code's shorter side 600, longer side at most 1000), and
  on one 224 x 224 image for reference: ImageNet's size, where the common ResNet-101 figures
  (7.8 G multiply-adds, 15.6 G FLOPs) come from.
- Beyond Table 1, what else DSG adds to the detector: the union-box branch (its own last stage
  and 1 x 1 convolution on the n^2 union boxes) on the supplement's 7 x 7 crops and on the
  public code's 1 x 1 crops, next to the detector without DSG (trunk, RPN head, entity branch)
  on one image of the preset's largest size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet101

from sgstudy.models.dsg.detector import (
    DETECTOR_SETTINGS,
    ROI_SIZE,
    build_paper_detector,
    build_tiny_detector,
)
from sgstudy.models.dsg.gpi import GpiStep
from sgstudy.models.dsg.model import DSG_PRESETS

VG_ENTITY_CLASSES = 100
VG_PREDICATES = 70
PAPER_IMAGE_SIZE = (600, 1000)  # (height, width)
IMAGENET_SIZE = (224, 224)
PUBLIC_CODE_UNION_CROP = 1  # its ROI crop of union boxes (``RESNET.MAX_POOL`` False, the default)
DSG_AGGREGATION = "feature-attention"  # the supplement's "integrated attention mechanism"
AGGREGATIONS = (DSG_AGGREGATION, "scalar-attention", "sum")
# The supplement's Table 1 bounds: (parameters, operations).
SUPPLEMENT_BOUNDS = {"DSG generator": ("< 4M", "< 1.5G"), "ResNet-101": ("> 40M", "> 15G")}
# What the supplement says of each network of the generator (``GpiStep`` child names).
GENERATOR_PARTS = {
    "phi": ("φ (messages)", "2 FC, 512 hidden, out 512"),
    "neighbours": ("φ's attention", "replaces the sum over j; size not given"),
    "alpha": ("α", "2 FC, 512 hidden, out 512"),
    "nodes": ("α's attention", "replaces the sum over i; size not given"),
    "rho": ("ρ (entity)", "2 FC, 512 hidden, out 1024"),
    "relation_head": ("relation head", "partial scene-graph supervision"),
    "entity_head": ("entity head", "partial scene-graph supervision"),
}
SUPPLEMENT_SIZED = ("phi", "alpha", "rho")  # the three networks whose sizes it states


@dataclass(frozen=True)
class ComplexityRow:
    component: str
    input: str
    parameters: int  # trainable
    multiply_adds: int  # flop_counter FLOPs / 2
    supplement_parameters: str
    supplement_operations: str


@dataclass(frozen=True)
class PartRow:
    """One network of the generator: ``widths`` in -> hidden -> out, applied ``applications``
    times (n^2 pairs or n entities)."""

    child: str  # the ``GpiStep`` attribute
    name: str
    widths: tuple[int, ...]
    applications: int
    parameters: int
    multiply_adds: int
    supplement: str


@dataclass(frozen=True)
class Complexity:
    """rows: the generator (DSG's aggregation) and ResNet-101 at 600 x 1000 and 224 x 224;
    parts: the generator network by network; aggregations: the generator per aggregation;
    unions: the detector's union-box branch (relation features f_ij), which DSG adds to the
    detector besides the generator: (ROI crop side, parameters, multiply-adds) on n^2 boxes;
    detector: multiply-adds of the detector without DSG on one image (``detector_cost``)."""

    preset: str
    num_entities: int
    rows: tuple[ComplexityRow, ...]
    parts: tuple[PartRow, ...]
    aggregations: tuple[tuple[str, int, int], ...]  # (aggregation, parameters, multiply-adds)
    unions: tuple[tuple[int, int, int], ...]
    detector: int


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, dict[str, int]]:
    """(trainable parameters, multiply-adds of one forward pass of ``module`` on ``inputs`` per
    module path: "Global" for the whole, "<Class>.<child>" for each submodule)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    return trainable_parameters(module), per_module


def generator_on_meta(preset: str, num_entities: int, aggregation: str):
    """(the preset's ``GpiStep`` for VG's classes, entities (n, 516), relations (n, n, 516)),
    all on the meta device."""
    w = DSG_PRESETS[preset]
    region_dim = w.feature + 4
    with torch.device("meta"):
        generator = GpiStep(
            region_dim, region_dim, w.hidden, w.phi_out, w.alpha_out, w.rho_out,
            VG_ENTITY_CLASSES + 1, VG_PREDICATES + 1, aggregation,
        )  # fmt: skip
        n = num_entities
        return generator, torch.empty(n, region_dim), torch.empty(n, n, region_dim)


def linear_widths(module: nn.Module) -> tuple[int, ...]:
    """in -> ... -> out of the chain of ``nn.Linear`` layers in ``module``."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return (linears[0].in_features, *(m.out_features for m in linears))


def generator_parts(generator: GpiStep, per_module: dict[str, int]) -> tuple[PartRow, ...]:
    """The generator's networks with parameters; a plain sum's aggregation has none."""
    parts = []
    for child, (name, supplement) in GENERATOR_PARTS.items():
        module = getattr(generator, child)
        parameters = trainable_parameters(module)
        if parameters == 0:
            continue
        widths = linear_widths(module)
        per_application = sum(a * b for a, b in zip(widths, widths[1:]))
        multiply_adds = per_module[f"GpiStep.{child}"]
        parts.append(
            PartRow(child, name, widths, multiply_adds // per_application, parameters,
                    multiply_adds, supplement)
        )  # fmt: skip
    return tuple(parts)


@cache  # the same for every preset; a study's launch logs two presets
def resnet_row(size: tuple[int, int], bounds: tuple[str, str]) -> ComplexityRow:
    with torch.device("meta"):
        backbone = nn.Sequential(*list(resnet101(weights=None).children())[:-2])
        image = torch.empty(1, 3, *size)
    parameters, per_module = count(backbone, image)
    shown = f"one {size[0]} x {size[1]} image"
    return ComplexityRow("ResNet-101", shown, parameters, per_module["Global"], *bounds)


def detector_on_meta(preset: str, with_unions: bool):
    build = build_paper_detector if preset == "paper" else build_tiny_detector
    with torch.device("meta"):
        return build(DSG_PRESETS[preset].feature, with_unions, None)


def detector_cost(preset: str, num_entities: int) -> int:
    """Forward multiply-adds of the preset's detector without DSG (what ``no-dsg`` runs) on one
    image of the preset's largest size (600 x 1000 in ``paper``): the trunk, the RPN head and
    the entity branch (own last stage and 1 x 1 convolution) on n 7 x 7 crops."""
    detector, settings = detector_on_meta(preset, False), DETECTOR_SETTINGS[preset]
    image = torch.empty(1, 3, settings.min_size, settings.max_size, device="meta")
    entity = detector.entity_features
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        features = detector.trunk(image)
        detector.rpn.head([features])
        crops = features.new_empty(num_entities, features.shape[1], ROI_SIZE, ROI_SIZE)
        entity.reduce(entity.last_stage(crops))
    return counter.get_total_flops() // 2


def union_branch(preset: str, num_entities: int) -> tuple[tuple[int, int, int], ...]:
    """(crop side, parameters, multiply-adds) of the preset's union-box branch (its own last
    stage and 1 x 1 convolution) on the n^2 union boxes of one image, at the supplement's 7 x 7
    ROI-Align crops (this build) and at the public code's 1 x 1 crops."""
    branch = detector_on_meta(preset, True).union_features
    with torch.device("meta"):
        module = nn.Sequential(branch.last_stage, branch.reduce)
        channels = next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels
        crops = [torch.empty(num_entities**2, channels, side, side)
                 for side in (ROI_SIZE, PUBLIC_CODE_UNION_CROP)]  # fmt: skip
    counted = [(c.shape[-1], *count(module, c)) for c in crops]
    return tuple((side, parameters, ops["Global"]) for side, parameters, ops in counted)


def complexity_table(preset: str = "paper", num_entities: int = 32) -> Complexity:
    """The generator at ``num_entities`` (in full, per network, per aggregation) and
    ResNet-101 at 600 x 1000 and at 224 x 224."""
    n = num_entities
    aggregations, parts, generator_row = [], (), None
    for aggregation in AGGREGATIONS:
        generator, entities, relations = generator_on_meta(preset, n, aggregation)
        parameters, per_module = count(generator, entities, relations)
        aggregations.append((aggregation, parameters, per_module["Global"]))
        if aggregation == DSG_AGGREGATION:
            parts = generator_parts(generator, per_module)
            generator_row = ComplexityRow(
                "DSG generator", f"n = {n} entities, {n}^2 relations", parameters,
                per_module["Global"], *SUPPLEMENT_BOUNDS["DSG generator"],
            )  # fmt: skip
    rows = (
        generator_row,
        resnet_row(PAPER_IMAGE_SIZE, SUPPLEMENT_BOUNDS["ResNet-101"]),
        resnet_row(IMAGENET_SIZE, ("reference", "reference")),
    )
    unions, detector = union_branch(preset, n), detector_cost(preset, n)
    return Complexity(preset, n, rows, parts, tuple(aggregations), unions, detector)


def _millions(value: int) -> str:
    return f"{value / 1e6:.2f} M"


def _billions(value: int) -> str:
    return f"{value / 1e9:.2f} G"


def format_complexity_table(table: Complexity) -> str:
    """Markdown: the measured Table 1 next to the supplement's bounds and the generator's share
    of the backbone; the generator network by network; the generator per aggregation; the
    union-box branch."""
    sections = (_table_1, _generator_parts, _aggregations, _union_branch)
    return "\n\n".join("\n".join(section(table)) for section in sections)


def _table_1(table: Complexity) -> list[str]:
    lines = [
        "| component | input | trainable parameters | multiply-adds | FLOPs | supplement |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in table.rows:
        bounds = f"{row.supplement_parameters} params, {row.supplement_operations} ops"
        if row.supplement_parameters == "reference":
            bounds = "reference: ImageNet input size"
        lines.append(
            f"| {row.component} | {row.input} | {_millions(row.parameters)} | "
            f"{_billions(row.multiply_adds)} | {_billions(2 * row.multiply_adds)} | {bounds} |"
        )
    generator, backbone = table.rows[0], table.rows[1]
    lines.append(
        f"\nDSG generator / ResNet-101 ({backbone.input}): "
        f"{generator.parameters / backbone.parameters:.1%} of the parameters, "
        f"{generator.multiply_adds / backbone.multiply_adds:.1%} of the operations. "
        "Operations are multiply-adds (torch.utils.flop_counter FLOPs / 2); FLOPs = 2 x that."
    )
    return lines


def _generator_parts(table: Complexity) -> list[str]:
    lines = [
        f"The generator network by network (n = {table.num_entities}, {DSG_AGGREGATION}):",
        "",
        "| network | widths | applied | trainable parameters | multiply-adds | supplement |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for part in table.parts:
        lines.append(
            f"| {part.name} | {' -> '.join(map(str, part.widths))} | {part.applications} x | "
            f"{part.parameters:,} | {part.multiply_adds / 1e9:.3f} G | {part.supplement} |"
        )
    sized = [part for part in table.parts if part.child in SUPPLEMENT_SIZED]
    generator = table.rows[0]
    lines += [
        f"| φ + α + ρ | | | {sum(p.parameters for p in sized):,} | "
        f"{sum(p.multiply_adds for p in sized) / 1e9:.3f} G | the networks it sizes |",
        f"| total | | | {generator.parameters:,} | {generator.multiply_adds / 1e9:.3f} G | |",
    ]
    return lines


def _aggregations(table: Complexity) -> list[str]:
    lines = [
        "The generator with each GPI aggregation:",
        "",
        "| aggregation | trainable parameters | multiply-adds |",
        "| --- | ---: | ---: |",
    ]
    for aggregation, parameters, multiply_adds in table.aggregations:
        lines.append(f"| {aggregation} | {_millions(parameters)} | {_billions(multiply_adds)} |")
    return lines


def _union_branch(table: Complexity) -> list[str]:
    n, generator = table.num_entities, table.rows[0].multiply_adds
    settings = DETECTOR_SETTINGS[table.preset]
    lines = [
        "Not in Table 1: DSG also adds the detector's union-box branch (relation features f_ij: "
        f"its own last stage and 1 x 1 convolution on the {n**2} union boxes of an image). "
        f"Forward multiply-adds of one {settings.min_size} x {settings.max_size} image at n = {n}: "
        f"the detector without DSG (trunk, RPN head, entity branch on {n} boxes) "
        f"{_billions(table.detector)}; what DSG adds:",
        "",
        "| union-box ROI crop | union branch parameters | union branch multiply-adds | "
        "+ generator, share of the detector without DSG |",
        "| --- | ---: | ---: | ---: |",
    ]
    for side, parameters, multiply_adds in table.unions:
        source = "supplement, this build" if side == ROI_SIZE else "public code's default"
        added = (multiply_adds + generator) / table.detector
        lines.append(
            f"| {side} x {side} ({source}) | {_millions(parameters)} | "
            f"{_billions(multiply_adds)} | +{added:.0%} |"
        )
    return lines
