"""DSG: Differentiable Scene Graphs for referring relationships (Raboh et al., WACV 2020).

The forward pass, top to bottom (DSG supplement §1, SPEC §6):
1. the detector's trunk and RPN propose up to 32 boxes (NMS 0.5, objectness > 0.8); in training
   the annotated boxes join them, as Faster R-CNN trains its second stage;
2. region features: entity f_i of every box and relation f_ij of every ordered pair's union box
   (ROI-Align 7 x 7 -> last ResNet stage -> 1 x 1 conv 512 -> average pool, + 4 coordinates);
3. the DSG generator (``gpi.GpiStep``) turns them into node features z'_i, a graph vector g and
   entity / relation logits (the differentiable scene graph);
4. the referring-relationship classifier F_RRC reads [z'_i ; one-hot query] -> background /
   subject / object / other, and a linear box refinement reads z'_i.
Losses (SPEC §6; unweighted terms, ``loss_weights`` sums them): RPN objectness and box;
smooth-L1 box refinement of boxes standing for annotations; 0.1 x RRC cross-entropy (background
boxes weighted 0.5 x #subject-and-object boxes / #background boxes) + 0.1 x 0.5 x the same loss
of a second classifier on the raw features f_i (the public code's "baseline" branch); 0.01 each
for entity and relation cross-entropy on the boxes and on the annotated boxes' raw features
(partial scene-graph supervision). The detector is trained with the rest.

Ablations (``DsgConfig.variant``), on the same detector:
- ``no-dsg``: no generator; F_RRC and the box refinement read the raw f_i (loss: RPN, boxes,
  0.1 x RRC);
- ``two-step``: no F_RRC; the generator's scene graph is trained (0.1 each for entity and
  relation cross-entropy, 0.01 each on the annotated boxes) and the query is answered from it
  (``heads.answer_from_scene_graph``, supplement §2).
``DsgConfig.gpi_aggregation`` picks the generator's aggregation (feature / scalar attention, sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgstudy.config import DsgConfig, ModelConfig
from sgstudy.errors import ConfigError
from sgstudy.models.detector import BackboneOutput
from sgstudy.models.dsg.detector import (
    DsgDetector,
    build_paper_detector,
    build_tiny_detector,
)
from sgstudy.models.dsg.gpi import GpiStep, GraphOutput
from sgstudy.models.dsg.heads import (
    AnnotatedGraphHeads,
    BoxRefinement,
    ReferringClassifier,
    answer_from_scene_graph,
    query_one_hot,
)
from sgstudy.models.dsg.targets import (
    BACKGROUND,
    IGNORE,
    OBJECT,
    SUBJECT,
    entity_labels,
    match_boxes,
    refine_boxes,
    refinement_targets,
    relation_labels,
    role_labels,
)
from sgstudy.models.motifs.sampling import relation_matrix
from sgstudy.structures import ReferringPrediction, ReferringTarget


@dataclass(frozen=True)
class DsgWidths:
    """Layer widths. ``paper`` is the supplement's; ``tiny`` trains on a CPU."""

    feature: int  # f_i and f_ij after the 1 x 1 convolution (4 box coordinates are added)
    hidden: int  # hidden units of phi, alpha, rho and the attention networks
    phi_out: int
    alpha_out: int
    rho_out: int  # z'_i
    rrc_hidden: int  # F_RRC's two hidden layers


DSG_PRESETS = {
    "paper": DsgWidths(512, 512, 512, 512, 1024, 512),
    "tiny": DsgWidths(64, 64, 64, 64, 128, 64),
}

_DETECTION_WEIGHTS = {"loss_rpn_objectness": 1.0, "loss_rpn_box": 1.0, "loss_box": 1.0}
_ANNOTATED_GRAPH_WEIGHTS = {"loss_entity_gt": 0.01, "loss_relation_gt": 0.01}
LOSS_WEIGHTS = {
    "dsg": {
        **_DETECTION_WEIGHTS, "loss_rrc": 0.1, "loss_rrc_raw": 0.05,
        "loss_entity": 0.01, "loss_relation": 0.01, **_ANNOTATED_GRAPH_WEIGHTS,
    },
    "no-dsg": {**_DETECTION_WEIGHTS, "loss_rrc": 0.1},
    "two-step": {
        **_DETECTION_WEIGHTS, "loss_entity": 0.1, "loss_relation": 0.1, **_ANNOTATED_GRAPH_WEIGHTS,
    },
}  # fmt: skip


@dataclass
class ImageOutputs:
    """One image's heads. n boxes (proposals, then the annotated boxes in training).

    boxes:       (n, 4) resized pixels
    entity:      (n, D) raw region features f_i
    relation:    (n, n, D) raw union-box features f_ij; None in ``no-dsg``
    graph:       the generator's output, None in ``no-dsg``
    role_logits: (n, 4) F_RRC on z'_i (``dsg``) or on f_i (``no-dsg``); None in ``two-step``
    raw_role_logits: (n, 4) ``dsg`` only: the second classifier on f_i
    deltas:      (n, 4) box refinement
    """

    boxes: Tensor
    entity: Tensor
    relation: Tensor | None
    graph: GraphOutput | None
    role_logits: Tensor | None
    raw_role_logits: Tensor | None
    deltas: Tensor


class DsgModel(nn.Module):
    """Train mode: ``forward(images, targets) -> {loss_* terms}`` (unweighted; see
    ``loss_weights``). Eval mode: one ``ReferringPrediction`` per target (one query per image).
    images: (3, H, W) floats in [0, 1]."""

    def __init__(
        self,
        detector: DsgDetector,
        widths: DsgWidths,
        dsg: DsgConfig,
        num_entity_classes: int,
        num_predicates: int,
        preset: str = "tiny",
    ) -> None:
        super().__init__()
        self.detector, self.widths, self.dsg, self.preset = detector, widths, dsg, preset
        self.num_entity_classes, self.num_predicates = num_entity_classes, num_predicates
        self.loss_weights = dict(LOSS_WEIGHTS[dsg.variant])
        w, variant = widths, dsg.variant
        region_dim = w.feature + 4
        query_dim = 2 * (num_entity_classes - 1) + num_predicates - 1
        self.generator = self.annotated_heads = self.classifier = self.raw_classifier = None
        if variant != "two-step":
            self.raw_classifier = ReferringClassifier(region_dim, query_dim, w.rrc_hidden)
        if variant == "no-dsg":
            self.refinement = BoxRefinement(region_dim)
            return
        self.generator = GpiStep(
            region_dim, region_dim, w.hidden, w.phi_out, w.alpha_out, w.rho_out,
            num_entity_classes, num_predicates, dsg.gpi_aggregation,
        )  # fmt: skip
        self.annotated_heads = AnnotatedGraphHeads(
            region_dim, region_dim, num_entity_classes, num_predicates
        )
        self.refinement = BoxRefinement(w.rho_out)
        if variant == "dsg":
            self.classifier = ReferringClassifier(w.rho_out, query_dim, w.rrc_hidden)

    # ------------------------------------------------------------ forward
    def forward(
        self, images: list[Tensor], targets: list[ReferringTarget]
    ) -> dict[str, Tensor] | list[ReferringPrediction]:
        view = self.detector.backbone(images)
        proposals, losses = self.detector.propose(view, targets)
        annotated = view.to_resized([t.boxes.float() for t in targets])
        if self.training:  # annotated boxes join the proposals (Faster R-CNN's second stage)
            boxes = [torch.cat([p, a]) for p, a in zip(proposals, annotated)]
        else:
            boxes = proposals
        outputs = self.heads(view, boxes, targets)
        if not self.training:
            return self.predictions(view, outputs, targets)
        per_image = [self.image_losses(o, a, t) for o, a, t in zip(outputs, annotated, targets)]
        for name in per_image[0]:
            losses[name] = torch.stack([terms[name] for terms in per_image]).mean()
        return losses

    def heads(
        self, view: BackboneOutput, boxes: list[Tensor], targets: list[ReferringTarget]
    ) -> list[ImageOutputs]:
        counts = [len(b) for b in boxes]
        entity = self.detector.entity_features(view, boxes).split(counts)
        relation = self.union_features(view, boxes) if self.generator is not None else None
        outputs = []
        for i, target in enumerate(targets):
            query = query_one_hot(
                target.query, self.num_entity_classes - 1, self.num_predicates - 1
            )
            raw_logits = self.raw_classifier(entity[i], query) if self.raw_classifier else None
            if self.generator is None:  # no-dsg: everything on the raw features
                deltas = self.refinement(entity[i])
                outputs.append(
                    ImageOutputs(boxes[i], entity[i], None, None, raw_logits, None, deltas)
                )
                continue
            graph = self.generator(entity[i], relation[i])
            logits = self.classifier(graph.nodes, query) if self.classifier else None
            deltas = self.refinement(graph.nodes)
            outputs.append(
                ImageOutputs(boxes[i], entity[i], relation[i], graph, logits, raw_logits, deltas)
            )
        return outputs

    def union_features(self, view: BackboneOutput, boxes: list[Tensor]) -> list[Tensor]:
        """Relation features f_ij of the union box of every ordered pair: per image (n, n, D)."""
        unions = []
        for b in boxes:
            top_left = torch.minimum(b[:, None, :2], b[None, :, :2])  # (n, n, 2)
            bottom_right = torch.maximum(b[:, None, 2:], b[None, :, 2:])
            unions.append(torch.cat([top_left, bottom_right], dim=-1).flatten(0, 1))
        features = self.detector.union_features(view, unions)  # (sum n^2, D)
        pieces = features.split([len(b) ** 2 for b in boxes])
        return [f.view(len(b), len(b), -1) for f, b in zip(pieces, boxes)]

    # ------------------------------------------------------------ losses
    def image_losses(
        self, out: ImageOutputs, annotated: Tensor, target: ReferringTarget
    ) -> dict[str, Tensor]:
        matched, background = match_boxes(out.boxes, annotated)
        foreground = matched >= 0
        deltas = refinement_targets(out.boxes[foreground], annotated[matched[foreground]])
        losses = {"loss_box": _smooth_l1(out.deltas[foreground], deltas)}
        if out.role_logits is not None:
            roles = role_labels(matched, background, target)
            losses["loss_rrc"] = referring_loss(out.role_logits, roles)
            if out.raw_role_logits is not None:
                losses["loss_rrc_raw"] = referring_loss(out.raw_role_logits, roles)
        if out.graph is None:
            return losses
        entities = entity_labels(matched, background, target.labels)
        relations = relation_labels(matched, target.relations, len(annotated))
        losses["loss_entity"] = _cross_entropy(out.graph.entity_logits, entities)
        losses["loss_relation"] = _cross_entropy(out.graph.relation_logits, relations)
        losses.update(self.annotated_graph_losses(out, annotated, target))
        return losses

    def annotated_graph_losses(
        self, out: ImageOutputs, annotated: Tensor, target: ReferringTarget
    ) -> dict[str, Tensor]:
        """Partial scene-graph supervision on the annotated boxes' raw features: they are the
        last N boxes of training (appended after the proposals)."""
        n = len(annotated)
        entity_logits, relation_logits = self.annotated_heads(
            out.entity[-n:], out.relation[-n:, -n:]
        )
        matrix = relation_matrix(target.relations, n)
        matrix = matrix.masked_fill(torch.eye(n, dtype=torch.bool, device=matrix.device), IGNORE)
        return {
            "loss_entity_gt": _cross_entropy(entity_logits, target.labels),
            "loss_relation_gt": _cross_entropy(relation_logits, matrix),
        }

    # ------------------------------------------------------------ outputs
    def predictions(
        self, view: BackboneOutput, outputs: list[ImageOutputs], targets: list[ReferringTarget]
    ) -> list[ReferringPrediction]:
        predictions = []
        for i, (out, target) in enumerate(zip(outputs, targets)):
            if out.role_logits is not None:
                roles = out.role_logits.float().softmax(dim=1)
            else:
                graph = out.graph
                roles = answer_from_scene_graph(
                    graph.entity_logits, graph.relation_logits, target.query
                )
            refined = refine_boxes(out.boxes.float(), out.deltas.float())
            height, width = view.image_sizes[i]
            refined[:, 0::2] = refined[:, 0::2].clamp(0, width)
            refined[:, 1::2] = refined[:, 1::2].clamp(0, height)
            predictions.append(ReferringPrediction(view.to_original([refined])[0], roles))
        return predictions

    def describe(self) -> dict[str, str]:
        """Run parameters: variant, widths, detector, loss weights, and what ``tiny`` changes."""
        w, settings = self.widths, self.detector.settings
        described = {
            "dsg_preset": self.preset,
            "dsg_variant": self.dsg.variant,
            "dsg_gpi_aggregation": self.dsg.gpi_aggregation,
            "dsg_widths": (
                f"region features {w.feature}+4, phi/alpha/rho/attention hidden {w.hidden}, outputs "
                f"{w.phi_out}/{w.alpha_out}/{w.rho_out}, RRC hidden {w.rrc_hidden} x 2"
            ),
            "dsg_detector": (
                f"{_TRUNKS[self.preset]}, "
                f"anchors {settings.anchor_sizes} px x ratios {settings.aspect_ratios}, "
                f"proposals NMS {settings.nms_iou}, score > {settings.score_threshold}, "
                f"at most {settings.max_proposals}; trained, not frozen"
            ),
            "dsg_loss_weights": ", ".join(f"{k} {v:g}" for k, v in self.loss_weights.items()),
        }
        if self.preset == "tiny":
            described["dsg_tiny_simplifications"] = TINY_SIMPLIFICATIONS
        return described


_TRUNKS = {
    "paper": "ResNet-101 to layer3 (stride 16) + its own layer4 per region (stride 1)",
    "tiny": "tiny conv trunk (stride 8) + its own conv block per region",
}
TINY_SIMPLIFICATIONS = (
    "trunk: 3 small conv stages (stride 8, 64 channels) instead of ResNet-101 to layer3; "
    "per-region last stage: one 1x1 conv block (64) instead of ResNet layer4 (2048); "
    "widths 64 (region features, hidden units, phi/alpha outputs, RRC) and 128 (rho) instead of "
    "512/1024; images resized to 128 px instead of 600/1000; anchors 8-64 px (scales 1-8 x an "
    "8-px base) instead of 64-512 px; proposals: objectness > 0.5 instead of 0.8, at most 12 "
    "instead of 32, 600/300 pre-NMS candidates instead of 12000/6000; ROI-Align with 1 sampling point "
    "per bin side instead of 2"
)


def referring_loss(logits: Tensor, roles: Tensor) -> Tensor:
    """Cross-entropy of role logits (n, 4) against roles (n,) (IGNORE left out), background boxes
    weighted 0.5 x #subject-and-object boxes / #background boxes (public code) so that the many
    background proposals do not drown the few the query is about."""
    positives = ((roles == SUBJECT) | (roles == OBJECT)).sum()
    background = roles == BACKGROUND
    weight = (roles != IGNORE).float()
    weight[background] = 0.5 * positives.float() / background.sum().clamp(min=1)
    ce = F.cross_entropy(logits.float(), roles.clamp(min=0), reduction="none")
    return (weight * ce).sum() / weight.sum().clamp(min=1.0)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over labelled entries (IGNORE left out); a graph-keeping zero when there is none."""
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)


def _smooth_l1(deltas: Tensor, targets: Tensor) -> Tensor:
    """Smooth-L1 (beta 1) summed over the 4 deltas, mean over the boxes."""
    if len(targets) == 0:
        return deltas.sum() * 0.0
    return F.smooth_l1_loss(deltas.float(), targets, reduction="sum") / len(targets)


def build_dsg(config: ModelConfig, statistics) -> DsgModel:
    """DSG (``config.dsg`` picks the variant and the aggregation) for a dataset whose
    ``statistics`` give ``object_classes`` and ``predicate_classes`` (background first). The
    detector is built fresh for the preset (``backbone_weights``: a local file) and trained."""
    if config.detector_checkpoint:
        raise ConfigError(
            "DSG trains its own detector end to end; detector_checkpoint applies to motifs only"
        )
    widths = DSG_PRESETS[config.preset]
    with_unions = config.dsg.variant != "no-dsg"
    build = build_paper_detector if config.preset == "paper" else build_tiny_detector
    detector = build(widths.feature, with_unions, config.backbone_weights)
    return DsgModel(
        detector,
        widths,
        config.dsg,
        len(statistics.object_classes),
        len(statistics.predicate_classes),
        config.preset,
    )
