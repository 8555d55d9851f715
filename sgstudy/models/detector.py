"""The object detector (torchvision Faster R-CNN) and the frozen views relation models take of it.

Two presets:
- ``paper``: ResNet-50-FPN (ResNet-101 with ``backbone="resnet101"``), 1024-d box head, images
  resized to a shorter side of 600 and a longer side of at most 1000 (KT's VG150 setting),
  up to 80 detections per image.
- ``tiny``: four small conv stages + a 64-channel FPN, sized for the synthetic 128-px images
  on a CPU: no resizing beyond a 128-px shorter side, anchors of 8-64 px for objects of 10-60 px,
  a 256-d box head.

Nothing downloads: torchvision builds every network with ``weights=None`` and backbone weights
come only from a local file (``backbone_weights``).

The helpers at the bottom (``run_backbone``, ``pool_boxes``, ``box_features``, ``detect``) are how
relation models read ROI features, class distributions and detections from a frozen detector;
call them under ``torch.no_grad()`` with the detector in eval mode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from sgstudy.errors import ConfigError, UserError

DETECTOR_PRESETS = ("tiny", "paper")
RESNET_BACKBONES = ("resnet50", "resnet101")
CHECKPOINT_FORMAT = "sgstudy-detector-v1"
FASTER_RCNN_KIND = "faster-rcnn"
DETECTOR_KINDS = (FASTER_RCNN_KIND, "detr")


# ---------------------------------------------------------------- building
def build_detector(
    preset: str,
    num_classes: int,
    backbone_weights: str | None = None,
    backbone: str = "resnet50",
) -> FasterRCNN:
    """A Faster R-CNN with ``num_classes`` outputs (background included).

    ``backbone`` picks ResNet-50 or ResNet-101 for the ``paper`` preset; the ``tiny`` preset has
    its own small backbone. ``backbone_weights`` is a local state-dict file for the backbone body
    (a torchvision ResNet's ImageNet weights, or a ``backbone.body.*`` dict).
    """
    if preset not in DETECTOR_PRESETS:
        raise ConfigError(f"unknown detector preset {preset!r}; choose one of tiny, paper")
    if num_classes < 2:
        raise ConfigError(f"a detector needs at least one object class, got {num_classes - 1}")
    if preset == "tiny":
        return _build_tiny(num_classes, backbone_weights)
    return _build_paper(num_classes, backbone_weights, backbone)


def _build_paper(num_classes: int, backbone_weights: str | None, backbone: str) -> FasterRCNN:
    if backbone not in RESNET_BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of resnet50, resnet101")
    # Without pretrained weights the batch norms must keep learning, as torchvision does;
    # with them, they are frozen and the first stages stay fixed (trainable_layers=3).
    pretrained = backbone_weights is not None
    body = resnet_fpn_backbone(
        backbone_name=backbone,
        weights=None,
        norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d,
        trainable_layers=3 if pretrained else 5,
    )
    if pretrained:
        load_backbone_weights(body.body, backbone_weights)
    return FasterRCNN(
        body, num_classes=num_classes, min_size=600, max_size=1000, box_detections_per_img=80
    )


class TinyBackbone(nn.Module):
    """Four stride-2 conv stages (16, 32, 64, 128 channels); returns strides 4, 8 and 16.

    images (B, 3, H, W) -> {"0": (B, 32, H/4, W/4), "1": (B, 64, H/8, W/8), "2": (B, 128, H/16, W/16)}
    """

    channels = (32, 64, 128)

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, stride=2)
        self.stage1 = nn.Sequential(_conv_bn(16, 32, stride=2), _conv_bn(32, 32))
        self.stage2 = nn.Sequential(_conv_bn(32, 64, stride=2), _conv_bn(64, 64))
        self.stage3 = nn.Sequential(_conv_bn(64, 128, stride=2), _conv_bn(128, 128))

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        c2 = self.stage1(self.stem(images))
        c3 = self.stage2(c2)
        c4 = self.stage3(c3)
        return OrderedDict([("0", c2), ("1", c3), ("2", c4)])


class _TinyBackboneWithFPN(nn.Module):
    def __init__(self, fpn_channels: int = 64) -> None:
        super().__init__()
        self.body = TinyBackbone()
        self.fpn = FeaturePyramidNetwork(
            list(TinyBackbone.channels), fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = fpn_channels  # FasterRCNN reads this attribute

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(images))


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _build_tiny(num_classes: int, backbone_weights: str | None) -> FasterRCNN:
    body = _TinyBackboneWithFPN(fpn_channels=64)
    if backbone_weights is not None:
        load_backbone_weights(body.body, backbone_weights)
    # One anchor size per level ("0", "1", "2", "pool"): objects of 10-60 px on 128-px images.
    anchors = AnchorGenerator(
        sizes=((8,), (16,), (32,), (64,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4
    )
    # Map boxes of ~56 px to the stride-8 level, so small objects pool from the finest level.
    roi_pool = MultiScaleRoIAlign(
        ["0", "1", "2"], output_size=7, sampling_ratio=2, canonical_scale=56, canonical_level=3
    )
    return FasterRCNN(
        body,
        min_size=128,
        max_size=128,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=300,
        rpn_post_nms_top_n_test=100,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(64 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        box_batch_size_per_image=128,
        box_detections_per_img=32,
    )


def load_backbone_weights(body: nn.Module, path: str) -> None:
    """Loads a local state dict into a backbone body; keys may carry a ``backbone.body.`` prefix.

    Keys the body lacks (a classifier's ``fc.*``, a ResNet's ``layer4`` when cut) are skipped;
    a file that matches none of the body's keys is an error.
    """
    state = _read_file(Path(path), "backbone weights")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"backbone weights {path} do not hold a state dict")
    prefix = "backbone.body."
    state = {k.removeprefix(prefix): v for k, v in state.items() if isinstance(v, Tensor)}
    own = body.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"backbone weights {path} match none of the backbone's parameters")
    body.load_state_dict(usable, strict=False)


# ---------------------------------------------------------------- checkpoints
def save_detector(
    model: FasterRCNN,
    path: str | Path,
    preset: str,
    num_classes: int,
    class_names: Sequence[str] = (),
    backbone: str = "resnet50",
) -> None:
    """Writes weights plus what rebuilds the network: preset, backbone, class count and names."""
    payload = {
        "kind": FASTER_RCNN_KIND,
        "preset": preset,
        "backbone": backbone,
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "state_dict": model.state_dict(),
    }
    write_detector_checkpoint(path, payload)


def load_detector(path: str | Path, expected_classes: Sequence[str] | None = None) -> FasterRCNN:
    """Rebuilds a detector saved by ``save_detector``.

    ``expected_classes`` (background first) is checked against the classes the checkpoint
    recorded, so a detector trained on another dataset is refused with a clear message.
    """
    payload = read_detector_checkpoint(path, FASTER_RCNN_KIND, expected_classes)
    return faster_rcnn_from_payload(payload, path)


def faster_rcnn_from_payload(payload: dict, path: str | Path) -> FasterRCNN:
    model = build_detector(payload["preset"], payload["num_classes"], None, payload["backbone"])
    load_weights(model, payload, path)
    return model


def load_weights(model: nn.Module, payload: dict, path: str | Path) -> None:
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"detector checkpoint {path} does not fit its own network: {exc}") from exc


def load_any_detector(path: str | Path, expected_classes: Sequence[str] | None = None) -> nn.Module:
    """The detector of a ``sgstudy train-detector`` checkpoint, whichever its kind (one read)."""
    from sgstudy.models.detr import DETR_KIND, detr_from_payload

    payload = read_detector_checkpoint(path, None, expected_classes)
    if payload.get("kind", FASTER_RCNN_KIND) == DETR_KIND:
        return detr_from_payload(payload, path)
    return faster_rcnn_from_payload(payload, path)


def write_detector_checkpoint(path: str | Path, payload: dict) -> None:
    """Saves ``payload`` (with its ``kind``) under this project's checkpoint format, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, partial)
    partial.replace(path)


def read_detector_checkpoint(
    path: str | Path, kind: str | None, expected_classes: Sequence[str] | None = None
) -> dict:
    """The payload of a checkpoint written by ``sgstudy train-detector`` for a ``kind`` detector
    (``None``: any kind).

    A checkpoint of another kind, of another dataset's classes (``expected_classes``, background
    first) or not written by sgstudy is refused with one clear message. Checkpoints written
    before detectors had kinds are Faster R-CNN ones.
    """
    path = Path(path)
    payload = _read_file(path, "detector checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"detector checkpoint {path} was not written by sgstudy train-detector")
    saved_kind = payload.get("kind", FASTER_RCNN_KIND)
    if kind is not None and saved_kind != kind:
        raise UserError(
            f"detector checkpoint {path} holds a {saved_kind} detector, not the {kind} this "
            f"model needs (train one with sgstudy train-detector --kind {kind})"
        )
    saved = list(payload["class_names"])
    if expected_classes is not None:
        expected = list(expected_classes)
        if saved and saved != expected or payload["num_classes"] != len(expected):
            raise ConfigError(
                f"detector checkpoint {path} was trained on {payload['num_classes'] - 1} object "
                f"classes that differ from the dataset's {len(expected) - 1}"
            )
    return payload


def _read_file(path: Path, what: str) -> object:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged zip or pickle
        raise UserError(f"{what} {path} could not be read: {exc}") from exc


def freeze(model: nn.Module) -> nn.Module:
    """No gradients and eval mode (batch norms keep their statistics)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------- frozen views
@dataclass
class BackboneOutput:
    """The detector's view of a batch.

    image_list:     the resized, normalised, padded batch (B, 3, H', W') and each image's size
    features:       FPN maps by name, each (B, C, h, w)
    original_sizes: (height, width) of each image as given
    """

    image_list: ImageList
    features: OrderedDict[str, Tensor]
    original_sizes: list[tuple[int, int]]

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of each image after resizing: the frame ROI pooling works in."""
        return [(int(h), int(w)) for h, w in self.image_list.image_sizes]

    def to_resized(self, boxes: Sequence[Tensor]) -> list[Tensor]:
        """(N_i, 4) boxes in original pixels -> the same boxes in resized-image pixels."""
        return [_rescale(b, o, r) for b, o, r in zip(boxes, self.original_sizes, self.image_sizes)]

    def to_original(self, boxes: Sequence[Tensor]) -> list[Tensor]:
        return [_rescale(b, r, o) for b, o, r in zip(boxes, self.original_sizes, self.image_sizes)]


def _rescale(boxes: Tensor, source: tuple[int, int], target: tuple[int, int]) -> Tensor:
    scale_y, scale_x = target[0] / source[0], target[1] / source[1]
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def run_backbone(detector: FasterRCNN, images: Sequence[Tensor]) -> BackboneOutput:
    """images: (3, H_i, W_i) floats in [0, 1]. Resizes and normalises as the detector was trained."""
    original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    image_list, _ = detector.transform(list(images))
    features = detector.backbone(image_list.tensors)
    return BackboneOutput(image_list, features, original_sizes)


def pool_boxes(
    detector: FasterRCNN, view: BackboneOutput, resized_boxes: Sequence[Tensor]
) -> Tensor:
    """ROI-Align of boxes in resized-image pixels -> (sum N_i, C, R, R), R the pooler resolution."""
    return detector.roi_heads.box_roi_pool(view.features, list(resized_boxes), view.image_sizes)


def box_features(detector: FasterRCNN, pooled: Tensor) -> tuple[Tensor, Tensor]:
    """Pooled boxes (N, C, R, R) -> box-head features (N, D) and class logits (N, num_classes)."""
    features = detector.roi_heads.box_head(pooled)
    class_logits, _ = detector.roi_heads.box_predictor(features)
    return features, class_logits


def detect(
    detector: FasterRCNN, view: BackboneOutput, max_detections: int, score_threshold: float
) -> list[Tensor]:
    """The detector's final boxes per image, (N_i, 4) in resized-image pixels.

    Torchvision's own post-processing runs (per-class NMS, top ``max_detections``) with the
    given score threshold; labels and scores are left to the caller, who re-classifies.
    """
    heads = detector.roi_heads
    saved = heads.detections_per_img, heads.score_thresh
    heads.detections_per_img, heads.score_thresh = max_detections, score_threshold
    try:
        proposals, _ = detector.rpn(view.image_list, view.features)
        detections, _ = heads(view.features, proposals, view.image_sizes)
    finally:
        heads.detections_per_img, heads.score_thresh = saved
    return [d["boxes"] for d in detections]
