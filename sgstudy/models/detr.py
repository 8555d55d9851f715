"""DETR, the entity detector SGTR builds on (SPEC §5; Carion et al., ECCV 2020).

A torchvision ResNet (cut after ``backbone_stage``) gives a feature map; a 1×1 convolution
projects it to d channels; the transformer encodes it with a sine positional embedding and
decodes ``num_queries`` learned object queries; every decoder layer has the same heads: a linear
class head over ``O + 1`` columns and a 3-layer box MLP with a sigmoid.

Project conventions, where facebookresearch/detr differs: column 0 of the class logits is
no-object (DETR puts it last), classes are 1..O; images arrive as (3, H, W) floats in [0, 1] and
the model normalises, resizes (shorter side ``min_size``, longer at most ``max_size``) and pads
them itself; boxes are (cx, cy, w, h) relative to each image's unpadded extent.

Presets (``DETR_PRESETS``):
- ``paper``: the authors' sizes (ResNet-101 C5, d 256, 8 heads, 6 + 6 layers, FFN 2048,
  100 queries), images at a shorter side of 600 and a longer side of at most 1000.
- ``tiny``: trains on a CPU on the 128-px synthetic images: a ResNet-10 (torchvision's ResNet
  class with one basic block per stage) cut after its stride-8 stage (a 16×16 map), d 128,
  4 heads, 2 + 3 layers, FFN 512, no dropout, 16 queries (synthetic images hold at most 8
  objects). Its schedule (``detector_training.SCHEDULES``) uses a higher learning rate than
  DETR's, for the whole network, since the backbone starts from scratch.

Nothing downloads: torchvision builds the ResNet with ``weights=None``; backbone weights come
only from a local file. Without them the batch norms train (a network from scratch); with them
they are frozen, as DETR does with its ImageNet backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import box_convert
from torchvision.ops.misc import FrozenBatchNorm2d

from sgstudy.errors import ConfigError
from sgstudy.models.detector import (
    load_backbone_weights,
    load_weights,
    read_detector_checkpoint,
    write_detector_checkpoint,
)
from sgstudy.models.detr_transformer import Transformer, sine_position_embedding

DETR_KIND = "detr"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ResNets, plus the shallowest one its ResNet class builds (one block per stage).
RESNETS = {
    "resnet10": partial(ResNet, BasicBlock, [1, 1, 1, 1]),
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}


@dataclass(frozen=True)
class DetrWidths:
    """Sizes of one DETR. ``backbone_stage`` k keeps the ResNet up to ``layer{k}`` (4 = C5,
    stride 32; 2 = stride 8). Images are resized so that the shorter side is ``min_size`` unless
    the longer would then exceed ``max_size``."""

    backbone: str
    backbone_stage: int
    hidden_dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    ffn_dim: int
    num_queries: int
    dropout: float
    min_size: int
    max_size: int

    def __post_init__(self) -> None:
        if self.backbone not in RESNETS:
            known = ", ".join(RESNETS)
            raise ConfigError(f"unknown DETR backbone {self.backbone!r}; choose one of {known}")
        if self.backbone_stage not in (1, 2, 3, 4):
            raise ConfigError(f"backbone_stage must be 1-4, got {self.backbone_stage}")
        if self.hidden_dim % self.heads or self.hidden_dim % 4:
            raise ConfigError("hidden_dim must be divisible by heads and by 4")
        if self.decoder_layers < 1 or self.num_queries < 1:
            raise ConfigError("DETR needs at least one decoder layer and one query")


DETR_PRESETS = {
    "paper": DetrWidths(
        backbone="resnet101",
        backbone_stage=4,
        hidden_dim=256,
        heads=8,
        encoder_layers=6,
        decoder_layers=6,
        ffn_dim=2048,
        num_queries=100,
        dropout=0.1,
        min_size=600,
        max_size=1000,
    ),
    "tiny": DetrWidths(
        backbone="resnet10",
        backbone_stage=2,
        hidden_dim=128,
        heads=4,
        encoder_layers=2,
        decoder_layers=3,
        ffn_dim=512,
        num_queries=16,
        dropout=0.0,
        min_size=128,
        max_size=128,
    ),
}


@dataclass
class DetrOutput:
    """What DETR sees in a batch of B images.

    logits:      (B, Q, O + 1) class logits of the last decoder layer; column 0 is no-object
    boxes:       (B, Q, 4) in [0, 1], (cx, cy, w, h) relative to each image's unpadded extent
    hidden:      (B, Q, d) last decoder layer states, after the decoder's final norm
    memory:      (B, d, H', W') encoder output map
    memory_mask: (B, H', W') bool, True at padding
    aux:         (logits, boxes) of decoder layers 0 .. L-2, shaped as above
    image_sizes: (height, width) of each image as given, in pixels
    """

    logits: Tensor
    boxes: Tensor
    hidden: Tensor
    memory: Tensor
    memory_mask: Tensor
    aux: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def to_xyxy_pixels(self, boxes: Tensor | None = None) -> Tensor:
        """(B, Q, 4) normalised (cx, cy, w, h) (default: ``self.boxes``) -> xyxy in each
        image's original pixels."""
        boxes = self.boxes if boxes is None else boxes
        scale = torch.tensor(
            [[w, h, w, h] for h, w in self.image_sizes], dtype=boxes.dtype, device=boxes.device
        )
        return box_convert(boxes, "cxcywh", "xyxy") * scale[:, None, :]


def detections(output: DetrOutput) -> list[dict[str, Tensor]]:
    """Per image, every query as a detection (DETR's post-processing; no NMS):
    ``{"boxes": (Q, 4) xyxy original pixels, "labels": (Q,) 1-based, "scores": (Q,)}`` with
    the best foreground class and its softmax probability."""
    probabilities = output.logits.softmax(-1)[..., 1:]
    scores, labels = probabilities.max(-1)
    boxes = output.to_xyxy_pixels()
    return [{"boxes": b, "labels": c + 1, "scores": s} for b, c, s in zip(boxes, labels, scores)]


class BoxMLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear: (..., d) -> (..., out)."""

    def __init__(self, dim: int, out: int, layers: int = 3) -> None:
        super().__init__()
        sizes = [dim] * layers + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


class ResNetBody(nn.Module):
    """A torchvision ResNet up to ``layer{stage}``: images (B, 3, H, W) -> (B, C, H/s, W/s)."""

    def __init__(self, name: str, stage: int, frozen_norm: bool) -> None:
        super().__init__()
        norm = FrozenBatchNorm2d if frozen_norm else nn.BatchNorm2d
        if name == "resnet10":
            resnet = RESNETS[name](norm_layer=norm)
        else:
            resnet = RESNETS[name](weights=None, norm_layer=norm)
        self.body = IntermediateLayerGetter(resnet, {f"layer{stage}": "out"})
        last_block = getattr(resnet, f"layer{stage}")[-1]
        last_norm = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
        self.out_channels = last_norm.num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images)["out"]


class DETR(nn.Module):
    """DETR for ``num_object_classes`` classes (plus no-object). ``forward`` returns a
    ``DetrOutput``; ``detr_loss.detr_losses`` turns it into named loss terms weighted by
    ``loss_weights``."""

    def __init__(
        self, widths: DetrWidths, num_object_classes: int, frozen_norm: bool = False
    ) -> None:
        super().__init__()
        if num_object_classes < 1:
            raise ConfigError(f"DETR needs at least one object class, got {num_object_classes}")
        self.widths = widths
        self.num_object_classes = num_object_classes
        d = widths.hidden_dim
        self.backbone = ResNetBody(widths.backbone, widths.backbone_stage, frozen_norm)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, d, kernel_size=1)
        self.transformer = Transformer(
            d,
            widths.heads,
            widths.encoder_layers,
            widths.decoder_layers,
            widths.ffn_dim,
            widths.dropout,
        )
        self.query_embed = nn.Embedding(widths.num_queries, d)
        self.class_embed = nn.Linear(d, num_object_classes + 1)
        self.bbox_embed = BoxMLP(d, 4)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN)[:, None, None], False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD)[:, None, None], False)
        from sgstudy.models.detr_loss import detr_loss_weights  # the loss imports this module

        self.loss_weights = detr_loss_weights(widths.decoder_layers)

    def forward(self, images: Sequence[Tensor]) -> DetrOutput:
        """images: B tensors (3, H_i, W_i), floats in [0, 1]."""
        image_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, pixel_mask = self.preprocess(images)
        features = self.backbone(batch)  # (B, C, H', W')
        mask = F.interpolate(pixel_mask[:, None].float(), size=features.shape[-2:])[:, 0] > 0.5
        pos = sine_position_embedding(mask, self.widths.hidden_dim).to(features.dtype)
        src = self.input_proj(features)
        states, memory = self.transformer(
            src.flatten(2).transpose(1, 2),
            mask.flatten(1),
            pos.flatten(2).transpose(1, 2),
            self.query_embed.weight,
        )  # states (L, B, Q, d); memory (B, H'W', d)
        logits = self.class_embed(states)
        boxes = self.bbox_embed(states).sigmoid()
        return DetrOutput(
            logits=logits[-1],
            boxes=boxes[-1],
            hidden=states[-1],
            memory=memory.transpose(1, 2).reshape(src.shape),
            memory_mask=mask,
            aux=list(zip(logits[:-1], boxes[:-1])),
            image_sizes=image_sizes,
        )

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Normalise, resize and pad: (B, 3, H, W) batch and (B, H, W) bool mask, True at
        padding."""
        resized = [self._resize((image - self.pixel_mean) / self.pixel_std) for image in images]
        height = max(image.shape[-2] for image in resized)
        width = max(image.shape[-1] for image in resized)
        batch = resized[0].new_zeros(len(resized), 3, height, width)
        mask = torch.ones(len(resized), height, width, dtype=torch.bool, device=batch.device)
        for index, image in enumerate(resized):
            batch[index, :, : image.shape[-2], : image.shape[-1]] = image
            mask[index, : image.shape[-2], : image.shape[-1]] = False
        return batch, mask

    def _resize(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        scale = min(
            self.widths.min_size / min(height, width), self.widths.max_size / max(height, width)
        )
        size = (round(height * scale), round(width * scale))
        if size == (height, width):
            return image
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def describe(self) -> dict[str, str]:
        """The detector's sizes as run params."""
        described = {f"detr_{k}": str(v) for k, v in asdict(self.widths).items()}
        described["detr_num_object_classes"] = str(self.num_object_classes)
        return described


# ---------------------------------------------------------------- building and checkpoints
def build_detr(
    preset: str | DetrWidths, num_object_classes: int, backbone_weights: str | None = None
) -> DETR:
    """A DETR of ``preset`` (a name of ``DETR_PRESETS`` or explicit widths) for
    ``num_object_classes`` foreground classes. ``backbone_weights``: a local state dict of the
    torchvision ResNet (``backbone.body.`` prefixes are stripped); its batch norms are then
    frozen."""
    widths = _widths(preset)
    model = DETR(widths, num_object_classes, frozen_norm=backbone_weights is not None)
    if backbone_weights is not None:
        load_backbone_weights(model.backbone.body, backbone_weights)
    return model


def _widths(preset: str | DetrWidths) -> DetrWidths:
    if isinstance(preset, DetrWidths):
        return preset
    if preset not in DETR_PRESETS:
        raise ConfigError(
            f"unknown DETR preset {preset!r}; choose one of {', '.join(DETR_PRESETS)}"
        )
    return DETR_PRESETS[preset]


def save_detr(model: DETR, path: str | Path, preset: str, class_names: Sequence[str] = ()) -> None:
    """Writes the weights plus what rebuilds the network: the widths, the class count and the
    class names (background first)."""
    write_detector_checkpoint(
        path,
        {
            "kind": DETR_KIND,
            "preset": preset,
            "widths": asdict(model.widths),
            "num_classes": model.num_object_classes + 1,
            "class_names": list(class_names),
            "frozen_norm": isinstance(model.backbone.body.bn1, FrozenBatchNorm2d),
            "state_dict": model.state_dict(),
        },
    )


def load_detr(path: str | Path, expected_classes: Sequence[str] | None = None) -> DETR:
    """Rebuilds a DETR written by ``sgstudy train-detector --kind detr``.

    ``expected_classes`` (background first) must equal the classes it was trained on.
    """
    return detr_from_payload(read_detector_checkpoint(path, DETR_KIND, expected_classes), path)


def detr_from_payload(payload: dict, path: str | Path) -> DETR:
    widths = DetrWidths(**payload["widths"])
    model = DETR(widths, payload["num_classes"] - 1, frozen_norm=payload["frozen_norm"])
    load_weights(model, payload, path)
    return model
