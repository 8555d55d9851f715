"""Motifs' predicate classifier (Zellers et al. §4.4; KT ``MotifPredictor``).

For an ordered pair (i, j): the edge context of i as subject and of j as object are concatenated
and projected to the pair width; that vector is multiplied element-wise by the union-box feature
of the pair, a linear layer maps the product to predicate logits (background included), and the
frequency bias of the pair's labels is added.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

# KT's FrequencyBias: log(p + eps) keeps unseen (subject, object, predicate) finite.
FREQUENCY_EPS = 1e-3


class UnionFeatures(nn.Module):
    """The visual feature of a pair: the ROI-pooled union box plus a conv over a two-channel mask
    that draws the subject's (channel 0) and object's (channel 1) rectangles, then two layers.

    The mask covers the whole image at ``4 R - 1`` pixels a side and the conv brings it to the
    pooled map's (C, R, R), as in KT's ``UnionBoxFeatureExtractor``; unlike KT, the conv has no
    batch norm, so a pair's feature does not depend on the rest of the batch.
    """

    def __init__(self, channels: int, resolution: int, out_dim: int) -> None:
        super().__init__()
        self.rect_size = 4 * resolution - 1
        self.rect_conv = nn.Sequential(
            nn.Conv2d(2, channels // 2, 7, stride=2, padding=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(channels // 2, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * resolution * resolution, out_dim),
            nn.ReLU(inplace=True),
            nn.Linear(out_dim, out_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, pooled_union: Tensor, relative_boxes: Tensor) -> Tensor:
        """pooled_union (P, C, R, R) from the frozen backbone; relative_boxes (P, 2, 4): subject
        and object xyxy as fractions of the image. Returns (P, out_dim)."""
        masks = self.rectangles(relative_boxes).to(pooled_union.dtype)
        return self.head(pooled_union + self.rect_conv(masks))

    def rectangles(self, relative_boxes: Tensor) -> Tensor:
        """(P, 2, 4) -> (P, 2, S, S) with 1 inside each box (edges included), S = rect_size."""
        size = self.rect_size
        grid = torch.arange(size, device=relative_boxes.device, dtype=relative_boxes.dtype)
        scaled = relative_boxes * size
        x1, y1 = scaled[..., 0].floor(), scaled[..., 1].floor()
        x2, y2 = scaled[..., 2].ceil(), scaled[..., 3].ceil()
        inside_x = (grid >= x1[..., None]) & (grid <= x2[..., None])  # (P, 2, S)
        inside_y = (grid >= y1[..., None]) & (grid <= y2[..., None])
        return (inside_y[..., :, None] & inside_x[..., None, :]).float()


class PairClassifier(nn.Module):
    """Edge contexts -> pair representation -> predicate logits (without the frequency bias).

    edge_dim: the edge context width; pair_dim: the pair representation width (SPEC: 4096).
    """

    def __init__(self, edge_dim: int, pair_dim: int, num_predicates: int) -> None:
        super().__init__()
        self.split_roles = nn.Linear(edge_dim, 2 * edge_dim)
        self.combine = nn.Linear(2 * edge_dim, pair_dim)
        self.classify = nn.Linear(pair_dim, num_predicates)

    def pair_context(self, edge_context: Tensor, pairs: Tensor) -> Tensor:
        """edge_context (sum N, E); pairs (P, 2) flat object indices. Returns each relation's
        context input (P, 2E): its subject's and its object's role-split edge contexts."""
        subject, object_ = self.split_roles(edge_context).chunk(2, dim=1)
        return torch.cat([subject[pairs[:, 0]], object_[pairs[:, 1]]], dim=1)

    def fuse(self, pair_context: Tensor, union: Tensor) -> Tensor:
        """(P, 2E) pair contexts x (P, pair_dim) union features -> the pair representation
        (P, pair_dim) that ``classify`` reads."""
        return self.combine(pair_context) * union

    def representation(self, edge_context: Tensor, pairs: Tensor, union: Tensor) -> Tensor:
        """``fuse(pair_context(edge_context, pairs), union)``, (P, pair_dim)."""
        return self.fuse(self.pair_context(edge_context, pairs), union)


def frequency_log_probabilities(pair_predicate_counts: np.ndarray | Tensor) -> Tensor:
    """log p(predicate | subject label, object label) from training counts.

    pair_predicate_counts: (O+1, O+1, C+1) int; column 0 counts training object pairs with no
    relation. As in Zellers et al.'s code, one is added to every background count (so a label
    pair never seen in training predicts background) and ``FREQUENCY_EPS`` to every
    probability before the log. Returns float32 (O+1, O+1, C+1).
    """
    counts = torch.as_tensor(np.asarray(pair_predicate_counts), dtype=torch.float64).clone()
    counts[..., 0] += 1.0
    probabilities = counts / counts.sum(dim=-1, keepdim=True)
    return torch.log(probabilities + FREQUENCY_EPS).float()


class FrequencyBias(nn.Module):
    """A trainable table of predicate logits per (subject label, object label), started at
    ``frequency_log_probabilities``."""

    def __init__(self, pair_predicate_counts: np.ndarray | Tensor) -> None:
        super().__init__()
        log_p = frequency_log_probabilities(pair_predicate_counts)
        self.num_labels = log_p.shape[0]
        self.table = nn.Embedding(self.num_labels * self.num_labels, log_p.shape[2])
        with torch.no_grad():
            self.table.weight.copy_(log_p.reshape(-1, log_p.shape[2]))

    def forward(self, subject_labels: Tensor, object_labels: Tensor) -> Tensor:
        """(P,), (P,) int64 labels -> (P, C+1) logits."""
        return self.table(subject_labels * self.num_labels + object_labels)
