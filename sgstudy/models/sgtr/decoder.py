"""SGTR's predicate node generator (SPEC §5): predicate encoder, dynamic queries, structural
decoder, and the four heads.

Per level l of the structural decoder (pre-norm):
1. predicate sub-decoder layer: self-attention over the predicate queries, cross-attention to
   the predicate encoder's memory (the image);
2. subject and object indicator sub-decoder layers (own weights): self-attention over their
   queries, cross-attention to the entity detector's last hidden states;
3. fusion: ``rel <- rel + ReLU(W_s · sub + W_o · obj)``.
Every level's states go through the same heads; levels before the last get auxiliary losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgstudy.models.sgtr.layers import (
    MLP,
    DecoderLayer,
    EncoderLayer,
    grid_position,
    sine_embedding,
)
from sgstudy.models.sgtr.settings import SgtrSettings


@dataclass
class DecoderContext:
    """What every pass of the structural decoder reads, computed once per batch.

    memory, memory_position (B, L, d), memory_padding (B, L); entities (B, E, d) the projected
    entity states, entity_position (B, E, d) the embedding of their box centres (added to the
    keys); initial (rel, sub, obj) contents and the static query positions, each (B, Q, d).
    """

    memory: Tensor
    memory_position: Tensor
    memory_padding: Tensor
    entities: Tensor
    entity_position: Tensor
    contents: tuple[Tensor, Tensor, Tensor]
    positions: tuple[Tensor, Tensor, Tensor]


@dataclass
class LevelStates:
    """Normalised states of one level: relation, subject and object streams, each (B, Q, d)."""

    relation: Tensor
    subject: Tensor
    object: Tensor


class StructuralLevel(nn.Module):
    def __init__(self, s: SgtrSettings) -> None:
        super().__init__()
        args = (s.d_model, s.heads, s.ffn, s.dropout)
        self.predicate = DecoderLayer(*args)
        self.subject = DecoderLayer(*args)
        self.object = DecoderLayer(*args)
        self.fuse_subject = nn.Linear(s.d_model, s.d_model)
        self.fuse_object = nn.Linear(s.d_model, s.d_model)

    def forward(
        self, states: tuple[Tensor, Tensor, Tensor], context: DecoderContext,
        attention_drop: float, renormalise: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        rel, sub, obj = states
        rel_pos, sub_pos, obj_pos = context.positions
        drop = (attention_drop, renormalise)
        rel = self.predicate(
            rel, rel_pos, context.memory, context.memory_position, context.memory_padding, *drop
        )
        entities = (context.entities, context.entity_position, None, *drop)
        sub = self.subject(sub, sub_pos, *entities)
        obj = self.object(obj, obj_pos, *entities)
        rel = rel + F.relu(self.fuse_subject(sub) + self.fuse_object(obj))
        return rel, sub, obj


class PredicateNodeGenerator(nn.Module):
    """Entity detector outputs -> per-level ``LevelStates``.

    ``prepare`` builds the ``DecoderContext`` (predicate encoder, entity keys, dynamic queries)
    once; ``decode`` runs the structural decoder, with ``attention_drop`` masking every
    cross-attention matrix (Align-SGTR's mirrored branch).
    """

    def __init__(self, s: SgtrSettings, entity_width: int, memory_width: int) -> None:
        super().__init__()
        self.settings = s
        d = s.d_model
        self.input_projection = nn.Conv2d(memory_width, d, kernel_size=1)
        self.encoder = nn.ModuleList(
            EncoderLayer(d, s.heads, s.ffn, s.dropout)
            for _ in range(s.encoder_layers if s.predicate_encoder else 0)
        )
        self.entity_projection = nn.Linear(entity_width, d)
        self.entity_box_embedding = nn.Linear(d, d)
        self.query_embeddings = nn.Parameter(torch.randn(3, s.num_queries, d))
        if s.dynamic_queries:
            self.dynamic_layer = DecoderLayer(d, s.heads, s.ffn, s.dropout)
            self.dynamic_split = nn.Linear(d, 3 * d)
        self.levels = nn.ModuleList(StructuralLevel(s) for _ in range(s.decoder_levels))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))

    def prepare(
        self, memory: Tensor, memory_padding: Tensor, entity_hidden: Tensor, entity_boxes: Tensor
    ) -> DecoderContext:
        """memory (B, D_m, H, W), memory_padding (B, H, W), entity_hidden (B, E, D_e),
        entity_boxes (B, E, 4) cxcywh normalised."""
        d = self.settings.d_model
        tokens = self.input_projection(memory).flatten(2).transpose(1, 2)  # (B, HW, d)
        padding = memory_padding.flatten(1)
        position = grid_position(memory_padding, d)
        for layer in self.encoder:
            tokens = layer(tokens, position, padding)
        entities = self.entity_projection(entity_hidden)
        entity_position = self.entity_box_embedding(sine_embedding(entity_boxes[..., :2], d // 2))
        batch = memory.shape[0]
        positions = tuple(e.expand(batch, -1, -1) for e in self.query_embeddings)
        if self.settings.dynamic_queries:
            static = positions[0]
            attended = self.dynamic_layer(
                static, torch.zeros_like(static), entities, entity_position
            )
            contents = tuple(self.dynamic_split(F.relu(attended)).split(d, dim=-1))
        else:
            contents = tuple(torch.zeros_like(p) for p in positions)
        return DecoderContext(
            tokens, position, padding, entities, entity_position, contents, positions
        )

    def decode(
        self, context: DecoderContext, attention_drop: float = 0.0, renormalise: bool = False
    ) -> list[LevelStates]:
        states = context.contents
        out = []
        for level in self.levels:
            states = level(states, context, attention_drop, renormalise)
            out.append(LevelStates(*(norm(x) for norm, x in zip(self.norms, states))))
        return out


class SgtrHeads(nn.Module):
    """The four heads, shared by all levels: predicate classes (sigmoid, no background),
    relation vector (sigmoid subject/object centres), and per indicator role a class head
    (O + 1, column 0 no-object) and a box MLP (sigmoid cxcywh)."""

    def __init__(self, d_model: int, num_predicates: int, num_entity_classes: int) -> None:
        super().__init__()
        self.predicate = nn.Linear(d_model, num_predicates)
        self.relation_vector = nn.Linear(d_model, 4)
        self.subject_class = nn.Linear(d_model, num_entity_classes)
        self.object_class = nn.Linear(d_model, num_entity_classes)
        self.subject_box = MLP(d_model, d_model, 4, 3)
        self.object_box = MLP(d_model, d_model, 4, 3)

    def forward(self, states: LevelStates) -> dict[str, Tensor]:
        """Returns (B, Q, ·) tensors: predicate_logits, relation_vectors, subject_logits,
        object_logits, subject_boxes, object_boxes."""
        return {
            "predicate_logits": self.predicate(states.relation),
            "relation_vectors": self.relation_vector(states.relation).sigmoid(),
            "subject_logits": self.subject_class(states.subject),
            "object_logits": self.object_class(states.object),
            "subject_boxes": self.subject_box(states.subject).sigmoid(),
            "object_boxes": self.object_box(states.object).sigmoid(),
        }
