"""DSG's detector: a single-map Faster R-CNN trunk, its RPN, and the region features of DSG.

As in tf-faster-rcnn (the public DSG code's base), the network is split at the last ResNet
stage: the trunk (ResNet-101 up to ``layer3``, stride 16, 1,024 channels) feeds the RPN, and
every region is ROI-Aligned from that one map and passed through its own copy of the last
stage (``layer4`` at stride 1: 7 x 7 x 2,048 per region). DSG then reduces the 2,048 channels to
512 with a 1 x 1 convolution and average-pools (supplement §1). Entities and union boxes
(relations) have separate copies of the last stage and of the 1 x 1 convolution, as in the
public code.

Union boxes are cropped 7 x 7 like entities, as the supplement says ("both f_i and f_ij ... as
7 x 7 x 2048 features"). The public code differs: with its default ``RESNET.MAX_POOL = False``
it crops every union box to 1 x 1 before its copy of the last stage. At n = 32 that is 1,024
union boxes per image, so the choice dominates DSG's cost in ``paper``: about 802 G
multiply-adds at 7 x 7 against 16 G at 1 x 1 (``sgstudy complexity --preset paper``).

``tiny`` keeps the structure at CPU size: ``sgstudy.models.detector.TinyBackbone``'s first
stages as the trunk (stride 8, 64 channels), one 1 x 1 conv block as the "last stage".

Proposals (supplement §1): NMS at IoU 0.5, objectness probability above a threshold (0.8 in
``paper``), at most ``max_proposals`` (32), at least one (the best) so that every image gets an
answer.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import resnet101
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import roi_align
from torchvision.ops.misc import FrozenBatchNorm2d

from sgstudy.models.detector import BackboneOutput, TinyBackbone, load_backbone_weights
from sgstudy.structures import ReferringTarget

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROI_SIZE = 7


@dataclass(frozen=True)
class DetectorSettings:
    """What differs between the presets' detectors.

    anchor_sizes:   pixel sizes on the resized image (tf-faster-rcnn scales x the base anchor)
    min_size, max_size: resizing of the shorter / longer image side
    pre_nms_top_n:  RPN candidates before NMS (train, test)
    """

    anchor_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...]
    min_size: int
    max_size: int
    pre_nms_top_n: tuple[int, int]
    nms_iou: float
    score_threshold: float
    max_proposals: int
    roi_sampling: int  # ROI-Align sampling points per bin side


DETECTOR_SETTINGS = {
    # Scales {4, 8, 16, 32} x the 16-px base anchor; tf-faster-rcnn's 600/1000 resizing and
    # 12,000/6,000 pre-NMS candidates.
    "paper": DetectorSettings((64, 128, 256, 512), (0.5, 1.0, 2.0), 600, 1000, (12000, 6000),
                              0.5, 0.8, 32, 2),
    # Objects of 10-60 px on 128-px images: scales {1, 2, 4, 8} x an 8-px base (the trunk's
    # stride); a lower objectness threshold, since a CPU-sized training leaves the RPN less sure.
    "tiny": DetectorSettings((8, 16, 32, 64), (0.5, 1.0, 2.0), 128, 128, (600, 300),
                             0.5, 0.5, 12, 1),
}  # fmt: skip


class RegionFeatures(nn.Module):
    """ROI-Align 7 x 7 -> last stage -> 1 x 1 conv -> average pool, plus the box coordinates.

    regions (sum N, 4) in resized pixels -> (sum N, width + 4): the pooled feature followed by
    (x1, y1, x2, y2) divided by the resized image's width and height.
    """

    def __init__(
        self, last_stage: nn.Module, stage_channels: int, width: int, stride: int, sampling: int
    ) -> None:
        super().__init__()
        self.last_stage = last_stage
        self.reduce = nn.Conv2d(stage_channels, width, kernel_size=1)
        self.stride, self.sampling = stride, sampling

    def forward(self, view: BackboneOutput, boxes: list[Tensor]) -> Tensor:
        pooled = roi_align(
            view.features["0"], [b.to(view.features["0"].dtype) for b in boxes], ROI_SIZE,
            spatial_scale=1.0 / self.stride, sampling_ratio=self.sampling, aligned=True,
        )  # (sum N, C, 7, 7)  # fmt: skip
        feature = self.reduce(self.last_stage(pooled)).mean(dim=(2, 3))  # (sum N, width)
        coordinates = torch.cat([b / _frame(size, b) for b, size in zip(boxes, view.image_sizes)])
        return torch.cat([feature, coordinates.to(feature.dtype)], dim=1)


def _frame(size: tuple[int, int], boxes: Tensor) -> Tensor:
    height, width = size
    return boxes.new_tensor([width, height, width, height])


class DsgDetector(nn.Module):
    """Trunk + RPN + entity and (optionally) union-box region features.

    ``backbone(images)`` -> BackboneOutput (one map, name "0");
    ``propose(view, targets)`` -> proposals per image (n_i, 4) in resized pixels, and the RPN
    losses in training.
    """

    def __init__(
        self,
        trunk: nn.Module,
        trunk_channels: int,
        stride: int,
        last_stage: nn.Module,
        stage_channels: int,
        feature_width: int,
        settings: DetectorSettings,
        with_unions: bool,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.transform = GeneralizedRCNNTransform(
            settings.min_size, settings.max_size, list(IMAGENET_MEAN), list(IMAGENET_STD)
        )
        self.trunk = trunk
        anchors = AnchorGenerator((settings.anchor_sizes,), (settings.aspect_ratios,))
        top_n = settings.pre_nms_top_n
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(trunk_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": top_n[0], "testing": top_n[1]},
            post_nms_top_n={"training": settings.max_proposals, "testing": settings.max_proposals},
            nms_thresh=settings.nms_iou,
        )  # fmt: skip
        union_stage = copy.deepcopy(last_stage) if with_unions else None
        regions = (stage_channels, feature_width, stride, settings.roi_sampling)
        self.entity_features = RegionFeatures(last_stage, *regions)
        self.union_features = RegionFeatures(union_stage, *regions) if with_unions else None

    def backbone(self, images: list[Tensor]) -> BackboneOutput:
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, _ = self.transform(list(images))
        features = OrderedDict([("0", self.trunk(image_list.tensors))])
        return BackboneOutput(image_list, features, original_sizes)

    def propose(
        self, view: BackboneOutput, targets: list[ReferringTarget]
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Filtered proposals per image (n_i, 4), resized pixels; RPN losses when training.

        torchvision's ``RegionProposalNetwork.forward`` drops the objectness scores, which the
        score threshold needs, so its steps are called one by one here.
        """
        rpn, feature_maps = self.rpn, list(view.features.values())
        objectness, deltas = rpn.head(feature_maps)
        anchors = rpn.anchor_generator(view.image_list, feature_maps)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        decoded = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = rpn.filter_proposals(
            decoded, objectness, view.image_list.image_sizes, per_level
        )
        proposals = [self.keep_confident(b, s) for b, s in zip(boxes, scores)]
        if not self.training:
            return proposals, {}
        gt_boxes = view.to_resized([t.boxes.float() for t in targets])
        labels, matched = rpn.assign_targets_to_anchors(anchors, [{"boxes": b} for b in gt_boxes])
        regression_targets = rpn.box_coder.encode(matched, anchors)
        loss_objectness, loss_box = rpn.compute_loss(objectness, deltas, labels, regression_targets)
        return proposals, {"loss_rpn_objectness": loss_objectness, "loss_rpn_box": loss_box}

    def keep_confident(self, boxes: Tensor, scores: Tensor) -> Tensor:
        """Boxes (sorted by score after NMS) above the threshold; the best one at least."""
        keep = scores > self.settings.score_threshold
        keep[:1] = True
        return boxes[keep].detach()


def build_paper_detector(
    feature_width: int, with_unions: bool, backbone_weights: str | None
) -> DsgDetector:
    """ResNet-101: trunk to ``layer3`` (stride 16, 1,024 channels), ``layer4`` at stride 1 as
    the per-region last stage (2,048 channels). Batch norms frozen with local weights, as
    ``sgstudy.models.detector`` does; trained from scratch they keep learning."""
    pretrained = backbone_weights is not None
    net = resnet101(weights=None, norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    if pretrained:
        load_backbone_weights(net, backbone_weights)
    # tf-faster-rcnn runs the last block at stride 1 on the 7 x 7 crops.
    net.layer4[0].conv2.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
    )
    settings = DETECTOR_SETTINGS["paper"]
    return DsgDetector(trunk, 1024, 16, net.layer4, 2048, feature_width, settings, with_unions)


def build_tiny_detector(
    feature_width: int, with_unions: bool, backbone_weights: str | None
) -> DsgDetector:
    """``TinyBackbone``'s stem and first two stages (stride 8, 64 channels) as the trunk."""
    body = TinyBackbone()
    if backbone_weights is not None:
        load_backbone_weights(body, backbone_weights)
    trunk = nn.Sequential(body.stem, body.stage1, body.stage2)
    # A 1 x 1 conv block as the per-region last stage: n^2 union boxes go through it.
    last_stage = nn.Sequential(nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
    settings = DETECTOR_SETTINGS["tiny"]
    return DsgDetector(trunk, 64, 8, last_stage, 64, feature_width, settings, with_unions)
