"""Transformer pieces of SGTR's predicate node generator, built from ``torch.nn`` layers.

Attention is written out (not ``nn.MultiheadAttention``) because Align-SGTR masks the attention
*matrix* of the cross-attention blocks: ``Attention.forward`` takes an ``attention_drop`` ratio
and zeroes that share of the softmax weights (``sgstudy.models.align.keep_mask``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgstudy.models.align import keep_mask


class Attention(nn.Module):
    """Multi-head attention whose weights can be partly dropped.

    query (B, Lq, d), key (B, Lk, d), value (B, Lk, d), key_padding (B, Lk) bool True at padding
    -> (B, Lq, d). With ``attention_drop = p > 0`` each weight of the (B, heads, Lq, Lk) matrix is
    zeroed with probability p after the softmax (renormalised over the kept keys when
    ``renormalise``); the keep mask of the last such call stays in ``last_keep_mask``.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.last_keep_mask: Tensor | None = None

    def split(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding: Tensor | None = None,
        attention_drop: float = 0.0,
        renormalise: bool = False,
    ) -> Tensor:
        q, k, v = (
            self.split(self.query(query)),
            self.split(self.key(key)),
            self.split(self.value(value)),
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, Lq, Lk)
        if key_padding is not None:
            logits = logits.masked_fill(key_padding[:, None, None, :], float("-inf"))
        weights = logits.softmax(dim=-1)
        if attention_drop > 0.0:
            keep = keep_mask(weights, attention_drop)
            self.last_keep_mask = keep
            weights = weights * keep.to(weights.dtype)
            if renormalise:
                weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-6)
        context = self.dropout(weights) @ v  # (B, h, Lq, d/h)
        batch, _, length, _ = context.shape
        return self.out(context.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + FFN; positions are added to queries and keys (DETR)."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = Attention(d_model, heads, dropout)
        self.ffn = FeedForward(d_model, ffn, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, position: Tensor, padding: Tensor | None) -> Tensor:
        normed = self.norm1(x)
        x = x + self.dropout(self.attention(normed + position, normed + position, normed, padding))
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm self-attention over the queries, cross-attention to a memory, FFN.

    x, query_position (B, Q, d); memory, memory_position (B, L, d); memory_padding (B, L).
    ``attention_drop`` masks the cross-attention matrix only (Align-SGTR).
    """

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.self_attention = Attention(d_model, heads, dropout)
        self.cross_attention = Attention(d_model, heads, dropout)
        self.ffn = FeedForward(d_model, ffn, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        query_position: Tensor,
        memory: Tensor,
        memory_position: Tensor,
        memory_padding: Tensor | None = None,
        attention_drop: float = 0.0,
        renormalise: bool = False,
    ) -> Tensor:
        normed = self.norms[0](x)
        q = normed + query_position
        x = x + self.dropout(self.self_attention(q, q, normed))
        normed = self.norms[1](x)
        attended = self.cross_attention(
            normed + query_position, memory + memory_position, memory, memory_padding,
            attention_drop, renormalise,
        )  # fmt: skip
        x = x + self.dropout(attended)
        return x + self.dropout(self.ffn(self.norms[2](x)))


class MLP(nn.Module):
    """``layers`` linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, layers: int) -> None:
        super().__init__()
        widths = [d_in] + [hidden] * (layers - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def sine_embedding(values: Tensor, width: int, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine features of values in [0, 1]: (..., n) -> (..., n * width), width even
    (DETR's positional encoding with 2π scaling)."""
    half = width // 2
    frequencies = temperature ** (2 * torch.arange(half, device=values.device) / width)
    angles = values[..., None] * 2 * math.pi / frequencies  # (..., n, half)
    features = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., n, width)
    return features.flatten(-2)


def grid_position(padding: Tensor, width: int) -> Tensor:
    """2-D sine positions of a feature map with padding (B, H, W) True at padding
    -> (B, H*W, width): y and x of every cell, normalised by the image's own extent."""
    valid = (~padding).float()
    y = valid.cumsum(dim=1)
    x = valid.cumsum(dim=2)
    y = y / y[:, -1:, :].clamp(min=1.0)
    x = x / x[:, :, -1:].clamp(min=1.0)
    position = sine_embedding(torch.stack((y, x), dim=-1), width // 2)  # (B, H, W, width)
    return position.flatten(1, 2)
