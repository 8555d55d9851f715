"""SGTR (Li, Zhang, He, CVPR 2022) with optional self-supervised relation alignment (Align-SGTR).

The forward pass, top to bottom (SPEC §5):
1. the frozen DETR gives entities (class distributions, boxes, last hidden states) and its
   encoder memory, without gradient;
2. the predicate node generator (``decoder``) encodes the memory, builds the predicate queries
   from the entity states and runs the structural decoder; the four heads read every level;
3. eval: graph assembling of the last level (``assembling``) -> one ``SceneGraphPrediction``
   per image; train: Hungarian matching and set losses at every level (``criterion``).

Align-SGTR (``align.enabled``; Align supplement §2, Figure 1). A mirrored structural decoder
re-runs the same levels with the same weights (the predicate encoder, entity keys and dynamic
queries are computed once and shared), but a Bernoulli(p) share of the weights of every
cross-attention matrix (predicate→image, subject→entities, object→entities) is zeroed, drawn
independently per block, level and element. Its last level goes through untied projection heads
(relation, subject, object: the only parameters the supervised branch lacks) and is aligned
with the supervised branch's last level, detached, query i with query i. Where the supplement
is silent, our choices (run params ``align_*``):
- zeroed attention weights are not renormalised (as Motifs' masks do not rescale);
  ``SgtrModel.renormalise_masked_attention`` switches to renormalising over the kept keys;
- ``align.target="representation"``: 2 − 2 cos between each projected student stream and the
  teacher's stream, summed over the three streams; ``"distribution"``: KL(teacher ‖ student)
  of the predicate distributions (softmax over the C predicate logits, the shared predicate
  head applied to the projected relation stream) plus that of the two indicator class
  distributions; ``"both"`` sums them. The untied heads start as identities.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sgstudy.config import AlignConfig, ModelConfig
from sgstudy.errors import ConfigError
from sgstudy.models.align import (
    describe_alignment,
    distribution_alignment,
    representation_alignment,
)
from sgstudy.models.detector import freeze
from sgstudy.models.sgtr.assembling import Entities, assemble_pairs, role_scores, scene_graph
from sgstudy.models.sgtr.criterion import deep_supervision_losses, loss_weights
from sgstudy.models.sgtr.decoder import LevelStates, PredicateNodeGenerator, SgtrHeads
from sgstudy.models.sgtr.matcher import TripletTargets
from sgstudy.models.sgtr.settings import SGTR_PRESETS, SgtrSettings
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget

STREAMS = ("relation", "subject", "object")
_UNTIED = "untied projection heads (relation, subject, object) on the last level's states"
ALIGNED_TEXT = {
    "representation": f"2 - 2 cos of unit vectors between {_UNTIED} and the teacher's states",
    "distribution": (
        f"KL(teacher || student) on predicate and indicator class distributions read through {_UNTIED}"
    ),
    "both": f"2 - 2 cos and KL(teacher || student), both through {_UNTIED}",
}


class SgtrModel(nn.Module):
    """Train mode: ``forward(images, targets) -> {"loss_predicate", ..., "loss_aux_*",
    ["loss_align"]}``, unweighted; ``loss_weights`` says how they sum. Eval mode: one
    ``SceneGraphPrediction`` per image. images: (3, H, W) floats in [0, 1]."""

    renormalise_masked_attention = False

    def __init__(
        self,
        detector: nn.Module,
        num_predicates: int,
        settings: SgtrSettings,
        align: AlignConfig,
        preset: str = "tiny",
        detector_source: str = "",
    ) -> None:
        super().__init__()
        self.detector = freeze(detector)
        self.settings, self.align, self.preset = settings, align, preset
        self.detector_source = detector_source
        width = detector.class_embed.in_features
        num_entity_classes = detector.class_embed.out_features
        self.generator = PredicateNodeGenerator(settings, width, width)
        self.heads = SgtrHeads(settings.d_model, num_predicates, num_entity_classes)
        self.loss_weights = {**loss_weights(), "loss_align": align.weight}
        if align.enabled:
            # Built last, so that the shared parameters start as the plain model's for a seed.
            self.untied_heads = nn.ModuleDict(
                {name: identity_linear(settings.d_model) for name in STREAMS}
            )

    def train(self, mode: bool = True) -> SgtrModel:
        super().train(mode)
        self.detector.eval()  # frozen: DETR's batch norms and dropout stay in eval mode
        return self

    def forward(
        self, images: list[Tensor], targets: list[SceneGraphTarget]
    ) -> dict[str, Tensor] | list[SceneGraphPrediction]:
        with torch.no_grad():
            detected = self.detector(images)
        entities = [
            Entities(logits.float().softmax(dim=1), boxes.float(), size)
            for logits, boxes, size in zip(detected.logits, detected.boxes, detected.image_sizes)
        ]
        context = self.generator.prepare(
            detected.memory, detected.memory_mask, detected.hidden, detected.boxes
        )
        levels = self.generator.decode(context)
        outputs = [self.heads(states) for states in levels]
        if not self.training:
            return self.predictions(outputs[-1], entities)
        s = self.settings
        triplets = [TripletTargets.from_target(t) for t in targets]
        losses = deep_supervision_losses(outputs, entities, triplets, s.train_topk, s.score_shaping)
        if self.align.enabled:
            # After the supervised branch, so that its computation and RNG use are untouched.
            student = self.generator.decode(
                context, self.align.mask_ratio, self.renormalise_masked_attention
            )[-1]
            losses["loss_align"] = self.alignment(student, levels[-1], outputs[-1])
        return losses

    def alignment(
        self, student: LevelStates, teacher: LevelStates, teacher_outputs: dict[str, Tensor]
    ) -> Tensor:
        """Unweighted L_align of the last level (module docstring), teacher detached."""
        projected = {name: self.untied_heads[name](getattr(student, name)) for name in STREAMS}
        losses = []
        target = self.align.target
        if target in ("representation", "both"):
            for name in STREAMS:
                losses.append(
                    representation_alignment(
                        projected[name].flatten(0, 1), getattr(teacher, name).flatten(0, 1)
                    )
                )
        if target in ("distribution", "both"):
            student_logits = {
                "predicate_logits": self.heads.predicate(projected["relation"]),
                "subject_logits": self.heads.subject_class(projected["subject"]),
                "object_logits": self.heads.object_class(projected["object"]),
            }
            for key, logits in student_logits.items():
                losses.append(
                    distribution_alignment(logits.flatten(0, 1), teacher_outputs[key].flatten(0, 1))
                )
        return sum(losses[1:], losses[0])

    def predictions(
        self, outputs: dict[str, Tensor], entities: list[Entities]
    ) -> list[SceneGraphPrediction]:
        s = self.settings
        predictions = []
        for i, image_entities in enumerate(entities):
            vectors = outputs["relation_vectors"][i]
            scores = [
                role_scores(
                    outputs[f"{role}_logits"][i], outputs[f"{role}_boxes"][i], centres,
                    image_entities, s.score_shaping,
                )
                for role, centres in (("subject", vectors[:, :2]), ("object", vectors[:, 2:]))
            ]  # fmt: skip
            pairs = assemble_pairs(*scores, s.test_topk)
            probs = outputs["predicate_logits"][i].float().sigmoid()
            predictions.append(
                scene_graph(probs, pairs, image_entities, s.duplicate_filter, s.output_caps)
            )
        return predictions

    def describe(self) -> dict[str, str]:
        """Run parameters: sizes, the tiny simplifications' switches, detector and alignment."""
        s = self.settings
        switches = ", ".join(f"{name} {'on' if on else 'off'}" for name, on in s.switches().items())
        described = {
            "sgtr_preset": self.preset,
            "sgtr_sizes": (
                f"d {s.d_model}, heads {s.heads}, FFN {s.ffn}, dropout {s.dropout}, predicate "
                f"encoder layers {s.encoder_layers if s.predicate_encoder else 0}, decoder levels "
                f"{s.decoder_levels}, queries {s.num_queries}, top-k {s.test_topk} test / "
                f"{s.train_topk} matching"
            ),
            "sgtr_switches": switches,
            "sgtr_detector": self.detector_source,
            **describe_alignment(self.align, "", ""),
        }
        if self.align.enabled:
            # SGTR masks attention matrices, not relational input rows: AlignConfig's
            # masked_input and mask unit are Motifs' and do not apply here.
            kept = "renormalised" if self.renormalise_masked_attention else "not renormalised"
            described["align_masks"] = (
                f"attention weights of every cross-attention block (predicate->image, "
                f"subject->entities, object->entities) at every level, each element zeroed with "
                f"probability p={self.align.mask_ratio}, drawn independently, kept weights {kept}"
            )
            described["align_aligns"] = ALIGNED_TEXT[self.align.target] + (
                ", last level only, query i with query i, teacher detached"
            )
        return described


def identity_linear(width: int) -> nn.Linear:
    """A square linear layer that starts as the identity."""
    layer = nn.Linear(width, width)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(width))
        layer.bias.zero_()
    return layer


def build_sgtr(config: ModelConfig, statistics) -> SgtrModel:
    """SGTR on a dataset described by ``statistics`` (reads ``object_classes`` and
    ``predicate_classes``), with the frozen DETR of ``config.detector_checkpoint``."""
    if config.protocol != "sgdet":
        raise ConfigError(
            f"sgtr detects its own entities: it runs the sgdet protocol only, not {config.protocol}"
        )
    if not config.detector_checkpoint:
        raise ConfigError(
            "sgtr needs a trained DETR: pass --detector (sgstudy train-detector --kind detr)"
        )
    from sgstudy.models.detr import load_detr

    object_classes = list(statistics.object_classes)
    detector = load_detr(config.detector_checkpoint, expected_classes=object_classes)
    num_predicates = len(statistics.predicate_classes) - 1
    return SgtrModel(
        detector, num_predicates, SGTR_PRESETS[config.preset], config.align, config.preset,
        f"checkpoint {config.detector_checkpoint}",
    )  # fmt: skip
