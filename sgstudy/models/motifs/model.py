"""Neural Motifs (Zellers et al., CVPR 2018) with optional self-supervised relation alignment.

The forward pass, top to bottom:
1. the frozen detector gives each box its ROI feature and class distribution (no gradient); in
   SGDet it first detects the boxes;
2. object context: a BiLSTM over [ROI feature, class embedding, box embedding] of the objects
   sorted left to right;
3. object decoder (SGCls, SGDet): names each object from its context;
4. edge context: a BiLSTM over [label embedding, ROI feature, object context];
5. per ordered pair: subject and object edge contexts -> pair representation x union-box
   feature -> predicate logits + frequency bias.
6. alignment (training only, ``align.enabled``): step 5 (with ``masked_input="edge_input"``
   steps 4-5) runs again, same parameters, on masked relational input; the masked branch's
   predicate distribution (or representation) is pulled to the supervised one's, which is
   detached. Detector, object context and union features are computed once and shared.

Which tensor is masked, and why (SPEC §4). The abstract masks "relational input features ...
prior to message passing and predicate prediction" and aligns "the predictions for masked
relations". Motifs' message passing (the two BiLSTMs) runs over objects, so a relation exists
only after it: its inputs to the predicate predictor are its pair context (the subject's and the
object's edge contexts, ``PairClassifier.pair_context``) and its union-box feature, fused as
``combine(pair context) * union``. The default masks a share p of the relations by zeroing their
pair context row: a masked relation keeps only its own visual evidence (union box) and the label
frequency bias, and its predicate distribution must match the one the full model predicts from
context. Zeroing the union feature or the fused product instead would zero the product itself,
so the masked prediction would be the frequency bias alone and no shared layer would learn from
the alignment. ``masked_input="edge_input"`` with ``mask_unit="element"`` is the first
implementation: Bernoulli(p) elements of the edge-context BiLSTM input (before message passing),
every relation aligned.

Without a detector checkpoint (PredCls and SGCls) the ROI features come from a freshly
initialised detector of the preset, frozen: fixed random features, or backbone features when
``backbone_weights`` is given. SGDet needs a trained detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from sgstudy.config import AlignConfig, ModelConfig
from sgstudy.errors import ConfigError
from sgstudy.models.align import (
    AlignmentProjection,
    alignment_loss,
    describe_alignment,
    mask_features,
    mask_relations,
)
from sgstudy.models.detector import (
    BackboneOutput,
    box_features,
    build_detector,
    detect,
    freeze,
    load_detector,
    pool_boxes,
    run_backbone,
)
from sgstudy.models.motifs.context import (
    BoxEmbedding,
    EdgeContext,
    ObjectContext,
    ObjectDecoder,
    SortedSequences,
    commit_labels_with_nms,
    encode_boxes,
)
from sgstudy.models.motifs.predictor import FrequencyBias, PairClassifier, UnionFeatures
from sgstudy.models.motifs.sampling import (
    all_ordered_pairs,
    detection_relation_matrix,
    match_to_annotations,
    relation_matrix,
    sample_training_pairs,
)
from sgstudy.structures import SceneGraphPrediction, SceneGraphTarget


@dataclass(frozen=True)
class MotifsWidths:
    """Layer widths. ``paper`` is SPEC §3; ``tiny`` trains on a CPU in seconds."""

    embed_dim: int  # class embeddings (object context, decoder, edge context)
    box_hidden: int  # box embedding: 9 -> box_hidden -> box_dim
    box_dim: int
    context_hidden: int  # object-context BiLSTM per direction, and its projection
    edge_hidden: int  # edge-context BiLSTM per direction, and its projection
    pair_dim: int  # pair representation and union-box feature
    max_detections: int  # SGDet: boxes per image taken from the detector


MOTIFS_PRESETS: dict[str, MotifsWidths] = {
    "paper": MotifsWidths(200, 32, 128, 512, 512, 4096, 80),
    "tiny": MotifsWidths(32, 16, 32, 64, 64, 256, 20),
}


@dataclass
class DetectedObjects:
    """The detector's view of the batch's objects, flat over images (sum N_i rows).

    boxes:     per image (N_i, 4) xyxy in original pixels
    resized:   per image (N_i, 4) the same boxes in the detector's resized frame
    roi:       (sum N, D) box-head features
    class_logits: (sum N, O+1) the detector's class scores of the boxes
    labels:    (sum N,) annotated labels (PredCls, SGCls), or in SGDet training the label of the
               matched annotation (0 when none); None in SGDet testing
    matches:   SGDet training only: per image (N_i,) index of the matched annotation or -1
    """

    boxes: list[Tensor]
    resized: list[Tensor]
    roi: Tensor
    class_logits: Tensor
    labels: Tensor | None
    matches: list[Tensor] | None = None


class MotifsModel(nn.Module):
    """Train mode: ``forward(images, targets) -> {"loss_rel", ["loss_obj"], ["loss_align"]}``,
    unweighted; ``loss_weights`` says how they sum. Eval mode: one ``SceneGraphPrediction`` per
    image, every ordered pair scored. images: (3, H, W) floats in [0, 1]."""

    def __init__(
        self,
        detector: FasterRCNN,
        pair_predicate_counts: Tensor,
        protocol: str,
        widths: MotifsWidths,
        align: AlignConfig,
        preset: str = "tiny",
        detector_source: str = "",
    ) -> None:
        super().__init__()
        self.detector = freeze(detector)
        self.protocol, self.widths, self.align = protocol, widths, align
        self.preset, self.detector_source = preset, detector_source
        self.loss_weights = {"loss_rel": 1.0, "loss_obj": 1.0, "loss_align": align.weight}
        num_objects, _, num_predicates = pair_predicate_counts.shape
        roi_dim = detector.roi_heads.box_head.fc7.out_features
        channels = detector.backbone.out_channels
        resolution = detector.roi_heads.box_roi_pool.output_size[0]
        w = widths
        self.object_embedding = nn.Embedding(num_objects, w.embed_dim)
        self.box_embedding = BoxEmbedding(w.box_hidden, w.box_dim)
        self.object_context = ObjectContext(roi_dim, w.embed_dim, w.box_dim, w.context_hidden)
        self.decoder = ObjectDecoder(w.context_hidden, w.embed_dim, w.context_hidden, num_objects)
        self.edge_context = EdgeContext(
            num_objects, w.embed_dim, roi_dim, w.context_hidden, w.edge_hidden
        )
        self.union_features = UnionFeatures(channels, resolution, w.pair_dim)
        self.pair_classifier = PairClassifier(w.edge_hidden, w.pair_dim, num_predicates)
        self.frequency_bias = FrequencyBias(pair_predicate_counts)
        # The student's own head for representation alignment; the supervised branch never
        # reads it (``AlignmentProjection``).
        reads_representation = align.enabled and align.target in ("representation", "both")
        self.align_projection = (
            AlignmentProjection(w.pair_dim) if reads_representation and align.projection_head
            else None
        )  # fmt: skip
        self.initialise_relation_layers()

    def initialise_relation_layers(self) -> None:
        """He-normal weights and zero biases for the linear and conv layers outside the detector.

        PyTorch's default init shrinks activations by about sqrt(3) at every ReLU layer, and the
        pair representation is the product of two such stacks (edge contexts x union feature):
        at default init it starts near 1e-3 and its gradients vanish, so only the frequency bias
        learns. He init keeps both factors near unit scale. The classifier itself starts near
        zero, so the first predictions are the frequency bias's.
        """
        for name, module in self.named_modules():
            if name.startswith("detector") or not isinstance(module, nn.Linear | nn.Conv2d):
                continue
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
        nn.init.normal_(self.pair_classifier.classify.weight, std=0.01)

    def train(self, mode: bool = True) -> MotifsModel:
        super().train(mode)
        self.detector.eval()  # frozen: its batch norms keep their statistics
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------ forward
    def forward(
        self, images: list[Tensor], targets: list[SceneGraphTarget]
    ) -> dict[str, Tensor] | list[SceneGraphPrediction]:
        with torch.no_grad():
            view = run_backbone(self.detector, images)
            objects = self.detect_objects(view, targets)
        order = SortedSequences(objects.boxes)
        object_context = self.object_context(self.object_input(objects, view), order)
        object_logits, labels = self.name_objects(object_context, objects, order)
        if self.training:
            pairs, predicates = self.training_pairs(objects, targets)
        else:
            pairs = [all_ordered_pairs(len(b), b.device) for b in objects.boxes]
        flat_pairs = _flatten_pairs(pairs, objects.boxes)
        union = self.union_of_pairs(view, objects, pairs)
        edge_input = self.edge_context.encode(labels, objects.roi, object_context)
        edge_context = self.edge_context.contextualise(edge_input, order)
        bias = self.frequency_bias(labels[flat_pairs[:, 0]], labels[flat_pairs[:, 1]])
        pair_context = self.pair_classifier.pair_context(edge_context, flat_pairs)
        representation, logits = self.predict_predicates(pair_context, union, bias)
        if not self.training:
            return self.predictions(objects, object_logits, labels, pairs, logits)
        losses = {"loss_rel": _cross_entropy(logits, predicates)}
        if self.protocol != "predcls":
            losses["loss_obj"] = _cross_entropy(object_logits, objects.labels)
        if self.align.enabled:
            # Drawn after the supervised branch, so that branch and its RNG use are untouched.
            inputs = edge_input, edge_context, pair_context, order, flat_pairs
            losses["loss_align"] = self.alignment(inputs, union, bias, representation, logits)
        return losses

    def predict_predicates(
        self, pair_context: Tensor, union: Tensor, bias: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Pair contexts (P, 2E), union features (P, pair_dim), frequency bias (P, C+1) -> pair
        representation (P, pair_dim) and predicate logits (P, C+1)."""
        representation = self.pair_classifier.fuse(pair_context, union)
        return representation, self.pair_classifier.classify(representation) + bias

    def alignment(
        self,
        inputs: tuple[Tensor, Tensor, Tensor, SortedSequences, Tensor],
        union: Tensor,
        bias: Tensor,
        teacher_representation: Tensor,
        teacher_logits: Tensor,
    ) -> Tensor:
        """The unweighted L_align: the masked branch against the detached supervised branch.

        inputs: the supervised branch's edge input (sum N, D_in), edge context (sum N, E), pair
        contexts (P, 2E), object order and flat pairs (P, 2); the one named by
        ``align.masked_input`` is masked and what follows it recomputed. With
        ``mask_unit="relation"`` only the masked relations are aligned.
        """
        edge_input, edge_context, pair_context, order, pairs = inputs
        a = self.align
        aligned = torch.ones(len(pairs), dtype=torch.bool, device=union.device)
        if a.masked_input == "edge_input":
            edge_context = self.edge_context.contextualise(
                mask_features(edge_input, a.mask_ratio), order
            )
        elif a.masked_input == "edge_context":
            edge_context = mask_features(edge_context, a.mask_ratio)
        if a.masked_input != "pair_context":
            pair_context = self.pair_classifier.pair_context(edge_context, pairs)
        elif a.mask_unit == "relation":
            pair_context, aligned = mask_relations(pair_context, a.mask_ratio)
        else:
            pair_context = mask_features(pair_context, a.mask_ratio)
        representation, logits = self.predict_predicates(pair_context, union, bias)
        student = representation[aligned]
        if self.align_projection is not None:
            student = self.align_projection(student)
        return alignment_loss(
            a.target,
            student,
            teacher_representation[aligned],
            logits[aligned],
            teacher_logits[aligned],
        )

    def pair_representation_layer(self) -> nn.Module:
        """The layer whose input is the pair representation (P, pair_dim): the classifier.
        Diagnostics hook it to measure the representation's effective rank."""
        return self.pair_classifier.classify

    def shared_encoder_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters both branches run through before the classifier (object and
        edge context, pair and union layers): where the alignment and supervised gradients
        meet, so where their balance is measured."""
        own = ("pair_classifier.classify", "frequency_bias", "decoder", "align_projection")
        return [
            p for name, p in self.named_parameters()
            if p.requires_grad and not name.startswith(own)
        ]  # fmt: skip

    # ------------------------------------------------------------ objects
    def detect_objects(
        self, view: BackboneOutput, targets: list[SceneGraphTarget]
    ) -> DetectedObjects:
        """Boxes (annotated, or detected in SGDet), their ROI features and class logits."""
        labels, matches = None, None
        if self.protocol == "sgdet":
            # Float32 boxes even under autocast: they are outputs and are matched by IoU.
            detected = detect(self.detector, view, self.widths.max_detections, 0.0)
            resized = [boxes.float() for boxes in detected]
            boxes = view.to_original(resized)
            if self.training:
                matches = [match_to_annotations(b, t.boxes) for b, t in zip(boxes, targets)]
                labels = torch.cat(
                    [
                        torch.where(m >= 0, t.labels[m.clamp(min=0)], 0)
                        for m, t in zip(matches, targets)
                    ]
                )
        else:
            boxes = [t.boxes.float() for t in targets]
            resized = view.to_resized(boxes)
            labels = torch.cat([t.labels for t in targets])
        roi, class_logits = box_features(self.detector, pool_boxes(self.detector, view, resized))
        return DetectedObjects(boxes, resized, roi, class_logits, labels, matches)

    def object_input(self, objects: DetectedObjects, view: BackboneOutput) -> Tensor:
        """[ROI feature, class embedding, box embedding] per object, (sum N, D_in). The class
        embedding is the annotated label's in PredCls, the detector-probability-weighted mean
        of all class embeddings otherwise."""
        if self.protocol == "predcls":
            class_embedding = self.object_embedding(objects.labels)
        else:
            class_embedding = objects.class_logits.softmax(dim=1) @ self.object_embedding.weight
        encoded = [encode_boxes(b, s) for b, s in zip(objects.boxes, view.original_sizes)]
        box_embedding = self.box_embedding(torch.cat(encoded))
        return torch.cat([objects.roi, class_embedding, box_embedding], dim=1)

    def name_objects(
        self, context: Tensor, objects: DetectedObjects, order: SortedSequences
    ) -> tuple[Tensor | None, Tensor]:
        """Decoder logits (None in PredCls) and the labels the edge context and frequency bias
        use: annotated in PredCls and in training (teacher forcing; an SGDet box matching no
        annotation takes the detector's best foreground class), decoded when testing."""
        if self.protocol == "predcls":
            return None, objects.labels
        if self.training:
            detector_best = objects.class_logits[:, 1:].argmax(dim=1) + 1
            forced = torch.where(objects.labels > 0, objects.labels, detector_best)
            return self.decoder.teacher_forced(context, forced, order), forced
        logits = self.decoder.greedy(context, order)
        if self.protocol == "sgcls":
            return logits, logits[:, 1:].argmax(dim=1) + 1
        probabilities = logits.softmax(dim=1)
        labels = [
            commit_labels_with_nms(probs, boxes)[0]
            for probs, boxes in zip(probabilities.split(order.counts), objects.boxes)
        ]
        return logits, torch.cat(labels) if labels else logits.new_zeros(0, dtype=torch.long)

    # ------------------------------------------------------------ pairs
    def training_pairs(
        self, objects: DetectedObjects, targets: list[SceneGraphTarget]
    ) -> tuple[list[Tensor], Tensor]:
        """Sampled pairs per image (P_i, 2) and their predicates, flat (sum P,)."""
        pairs, predicates = [], []
        for i, target in enumerate(targets):
            matrix = relation_matrix(target.relations, len(target.boxes))
            if objects.matches is not None:
                matrix = detection_relation_matrix(objects.matches[i], matrix)
            image_pairs, image_predicates = sample_training_pairs(matrix)
            pairs.append(image_pairs)
            predicates.append(image_predicates)
        return pairs, torch.cat(predicates)

    def union_of_pairs(
        self, view: BackboneOutput, objects: DetectedObjects, pairs: list[Tensor]
    ) -> Tensor:
        """Union-box features of every pair, (sum P, pair_dim)."""
        unions, relative = [], []
        for resized, boxes, size, image_pairs in zip(
            objects.resized, objects.boxes, view.original_sizes, pairs
        ):
            subject, object_ = resized[image_pairs[:, 0]], resized[image_pairs[:, 1]]
            unions.append(
                torch.cat(
                    [
                        torch.minimum(subject, object_)[:, :2],
                        torch.maximum(subject, object_)[:, 2:],
                    ],
                    dim=1,
                )
            )
            scale = boxes.new_tensor([size[1], size[0], size[1], size[0]])
            relative.append(boxes[image_pairs] / scale)  # (P_i, 2, 4)
        with torch.no_grad():
            pooled = pool_boxes(self.detector, view, unions)
        return self.union_features(pooled, torch.cat(relative))

    # ------------------------------------------------------------ outputs
    def predictions(
        self,
        objects: DetectedObjects,
        object_logits: Tensor | None,
        labels: Tensor,
        pairs: list[Tensor],
        logits: Tensor,
    ) -> list[SceneGraphPrediction]:
        if object_logits is None:
            scores = torch.ones(len(labels), device=labels.device)
        else:
            scores = object_logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        counts = [len(b) for b in objects.boxes]
        predicate_scores = logits.float().softmax(dim=1).split([len(p) for p in pairs])
        return [
            SceneGraphPrediction(b, lab, s.float(), p, ps)
            for b, lab, s, p, ps in zip(
                objects.boxes, labels.split(counts), scores.split(counts), pairs, predicate_scores
            )
        ]

    def describe(self) -> dict[str, str]:
        """Run parameters: widths, detector and what the alignment branch masks and aligns."""
        w = self.widths
        masked = {
            "pair_context": "pair context [subject edge context, object edge context] of each "
            "relation (its union-box feature and frequency bias are kept)",
            "edge_input": "edge-context BiLSTM input [label embedding, ROI feature, object "
            "context] of every object",
            "edge_context": "edge-context output (after BiLSTM and projection) of every object",
        }[self.align.masked_input]
        representation = "projected pair representation x union feature (classifier input)"
        return {
            "motifs_preset": self.preset,
            "motifs_widths": (
                f"class embedding {w.embed_dim}, box 9->{w.box_hidden}->{w.box_dim}, object "
                f"context BiLSTM {w.context_hidden}, edge context BiLSTM {w.edge_hidden}, "
                f"pair {w.pair_dim}, SGDet boxes {w.max_detections}"
            ),
            "motifs_detector": self.detector_source,
            **describe_alignment(self.align, masked, representation),
        }


def _flatten_pairs(pairs: list[Tensor], boxes: list[Tensor]) -> Tensor:
    """Per-image pairs (P_i, 2) of local indices -> (sum P, 2) indices into flat objects."""
    offset, flat = 0, []
    for image_pairs, image_boxes in zip(pairs, boxes):
        flat.append(image_pairs + offset)
        offset += len(image_boxes)
    return torch.cat(flat) if flat else torch.zeros(0, 2, dtype=torch.long)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    if labels.numel() == 0:  # no pair (or object) in the batch: a zero that keeps the graph
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


def build_motifs(config: ModelConfig, statistics) -> MotifsModel:
    """Motifs for ``config.protocol`` on a dataset described by ``statistics`` (reads
    ``object_classes`` and ``pair_predicate_counts``). The detector is ``detector_checkpoint``
    when given, else a fresh one of the preset (with ``backbone_weights``), frozen either way."""
    object_classes = list(statistics.object_classes)
    counts = torch.as_tensor(statistics.pair_predicate_counts)
    if config.detector_checkpoint:
        detector = load_detector(config.detector_checkpoint, expected_classes=object_classes)
        source = f"checkpoint {config.detector_checkpoint}"
    elif config.protocol == "sgdet":
        raise ConfigError("sgdet needs a trained detector: pass --detector")
    else:
        detector = build_detector(config.preset, len(object_classes), config.backbone_weights)
        weights = config.backbone_weights
        source = f"fresh {config.preset}, " + (
            f"backbone weights {weights}" if weights else "random frozen features"
        )
    if counts.shape[0] != len(object_classes):
        raise ConfigError(
            f"pair_predicate_counts has {counts.shape[0]} object rows for "
            f"{len(object_classes)} object classes"
        )
    widths = MOTIFS_PRESETS[config.preset]
    return MotifsModel(
        detector, counts, config.protocol, widths, config.align, config.preset, source
    )
