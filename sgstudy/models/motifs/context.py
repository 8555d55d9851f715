"""Motifs' context: object context, object decoder and edge context (Zellers et al. §4.2-4.3).

Objects of an image form a sequence sorted left to right by box centre; bidirectional LSTMs
read it, so every object's state sees every other object of its image. Tensors are flat over the
batch, (sum N_i, D), with ``counts`` giving N_i, in the images' own object order; the LSTMs
permute into the sorted order and back.

Where the public description leaves choices (KT runs alternating highway LSTMs with recurrent
dropout), these are plain ``nn.LSTM``s without dropout, so a forward pass draws no random
numbers besides pair sampling and the alignment mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence, pad_sequence
from torchvision.ops import box_iou

LATER_NMS_IOU = 0.3


def encode_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(N, 4) xyxy pixels -> (N, 9): corners, centre, width, height (all relative to the image)
    and relative area; the 9 box numbers of KT's ``encode_box_info``."""
    height, width = image_size
    scale = boxes.new_tensor([width, height, width, height])
    x1, y1, x2, y2 = (boxes / scale).unbind(dim=1)
    w, h = x2 - x1, y2 - y1
    return torch.stack([x1, y1, x2, y2, x1 + w / 2, y1 + h / 2, w, h, w * h], dim=1)


def left_to_right(boxes: Tensor) -> Tensor:
    """(N,) permutation sorting boxes (N, 4) by x-centre, ties kept in their given order."""
    return torch.argsort(boxes[:, 0] + boxes[:, 2], stable=True)


class SortedSequences:
    """Moves flat per-object features (sum N_i, D) to per-image sequences in left-to-right order
    and back. Built once per batch from the boxes."""

    def __init__(self, boxes: Sequence[Tensor]) -> None:
        self.counts = [len(b) for b in boxes]
        offsets = torch.tensor([0, *self.counts[:-1]]).cumsum(0).tolist()
        self.orders = [left_to_right(b) + o for b, o in zip(boxes, offsets)]

    def split(self, flat: Tensor) -> list[Tensor]:
        """(sum N_i, D) -> per image (N_i, D), sorted; images without objects are left out."""
        return [flat[order] for order in self.orders if len(order)]

    def merge(self, sequences: list[Tensor], like: Tensor) -> Tensor:
        """Inverse of ``split``: per-image sorted (N_i, D') -> flat (sum N_i, D')."""
        out = like.new_zeros(sum(self.counts), sequences[0].shape[-1]) if sequences else like[:0]
        orders = [order for order in self.orders if len(order)]
        for order, sequence in zip(orders, sequences):
            out[order] = sequence.to(out.dtype)
        return out


def run_lstm(lstm: nn.LSTM, sequences: list[Tensor]) -> list[Tensor]:
    """A batch_first LSTM over variable-length sequences (N_i, D) -> (N_i, H·directions)."""
    if not sequences:
        return []
    packed = pack_sequence(sequences, enforce_sorted=False)
    output, _ = lstm(packed)
    padded, lengths = pad_packed_sequence(output, batch_first=True)
    return [padded[i, :n] for i, n in enumerate(lengths.tolist())]


class BoxEmbedding(nn.Module):
    """9 box numbers -> hidden -> out (SPEC: 9 -> 32 -> 128), ReLU after each layer."""

    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(9, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out), nn.ReLU()
        )

    def forward(self, encoded: Tensor) -> Tensor:
        return self.layers(encoded)


class ObjectContext(nn.Module):
    """[ROI feature, class embedding, box embedding] -> BiLSTM -> linear: (sum N, hidden)."""

    def __init__(self, roi_dim: int, embed_dim: int, box_dim: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            roi_dim + embed_dim + box_dim, hidden, batch_first=True, bidirectional=True
        )
        self.project = nn.Linear(2 * hidden, hidden)

    def forward(self, inputs: Tensor, order: SortedSequences) -> Tensor:
        states = run_lstm(self.lstm, order.split(inputs))
        return self.project(order.merge(states, like=inputs))


class ObjectDecoder(nn.Module):
    """An LSTM over the sorted objects that names each one, fed the previous object's label.

    Training uses teacher forcing (one parallel pass); testing decodes greedily, step by step.
    Label embedding index 0 (background) doubles as the start token.
    """

    def __init__(self, context_dim: int, embed_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, embed_dim)
        self.lstm = nn.LSTM(context_dim + embed_dim, hidden, batch_first=True)
        self.classify = nn.Linear(hidden, num_classes)

    def teacher_forced(self, context: Tensor, labels: Tensor, order: SortedSequences) -> Tensor:
        """context (sum N, D), labels (sum N,) -> logits (sum N, num_classes)."""
        inputs = []
        for ctx, lab in zip(order.split(context), order.split(labels[:, None])):
            previous = torch.cat([lab.new_zeros(1), lab[:-1, 0]])
            inputs.append(torch.cat([ctx, self.label_embedding(previous)], dim=1))
        states = run_lstm(self.lstm, inputs)
        return self.classify(order.merge(states, like=context))

    def greedy(self, context: Tensor, order: SortedSequences) -> Tensor:
        """context (sum N, D) -> logits (sum N, num_classes); each step is fed the previous
        step's most likely foreground label."""
        sequences = order.split(context)
        if not sequences:
            return self.classify.weight.new_zeros(0, self.classify.out_features)
        padded = pad_sequence(sequences, batch_first=True)  # (B, T, D)
        previous = torch.zeros(len(sequences), dtype=torch.long, device=context.device)
        state, steps = None, []
        for t in range(padded.shape[1]):
            step_input = torch.cat([padded[:, t], self.label_embedding(previous)], dim=1)
            output, state = self.lstm(step_input[:, None], state)
            logits = self.classify(output[:, 0])
            previous = logits[:, 1:].argmax(dim=1) + 1
            steps.append(logits)
        logits = torch.stack(steps, dim=1)  # (B, T, num_classes)
        return order.merge([logits[i, : len(s)] for i, s in enumerate(sequences)], like=context)


class EdgeContext(nn.Module):
    """[label embedding, ROI feature, object context] -> BiLSTM -> linear: (sum N, hidden).

    ``encode`` and ``contextualise`` are separate so that the alignment branch can mask the
    BiLSTM's input (``edge_input``) or its output (``edge_context``) in between.
    """

    def __init__(
        self, num_classes: int, embed_dim: int, roi_dim: int, context_dim: int, hidden: int
    ) -> None:
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, embed_dim)
        self.lstm = nn.LSTM(
            embed_dim + roi_dim + context_dim, hidden, batch_first=True, bidirectional=True
        )
        self.project = nn.Linear(2 * hidden, hidden)

    def encode(self, labels: Tensor, roi_features: Tensor, object_context: Tensor) -> Tensor:
        """The BiLSTM's input, (sum N, embed + roi + context)."""
        return torch.cat([self.label_embedding(labels), roi_features, object_context], dim=1)

    def contextualise(self, edge_input: Tensor, order: SortedSequences) -> Tensor:
        states = run_lstm(self.lstm, order.split(edge_input))
        return self.project(order.merge(states, like=edge_input))


def commit_labels_with_nms(
    probabilities: Tensor, boxes: Tensor, iou_threshold: float = LATER_NMS_IOU
) -> tuple[Tensor, Tensor]:
    """Per-class NMS on the decoder's output for detected boxes of one image (SGDet testing).

    Repeatedly commits the most probable (box, foreground class) left, then forbids that class
    to the boxes overlapping the committed one by IoU >= ``iou_threshold``, so one object is not
    named twice with the same class. probabilities (N, C) with column 0 background; boxes (N, 4).
    Returns labels (N,) int64 >= 1 and their probabilities (N,).
    """
    remaining = probabilities.detach().clone()
    remaining[:, 0] = 0.0
    overlaps = box_iou(boxes, boxes) >= iou_threshold
    labels = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    for _ in range(len(boxes)):
        flat = int(remaining.argmax())
        box, label = divmod(flat, remaining.shape[1])
        if label == 0:  # every class of this box was suppressed: keep its own best guess
            label = int(probabilities[box, 1:].argmax()) + 1
        labels[box] = label
        remaining[overlaps[box], label] = 0.0
        remaining[box] = -1.0
    return labels, probabilities.gather(1, labels[:, None]).squeeze(1)
