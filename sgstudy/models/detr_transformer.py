"""The transformer of DETR (Carion et al., ECCV 2020), built from ``torch.nn`` layers.

As in facebookresearch/detr: the positional embedding is added to the queries and keys of every
attention (never to the values), the object queries are learned positions added at every decoder
layer while the decoder's content starts at zero, and the decoder's final LayerNorm is applied to
every layer's output (the auxiliary heads read those). DETR's layers are post-norm;
``pre_norm=True`` gives the pre-norm variant (SGTR's predicate decoder uses it).

All tensors are batch-first: sequences (B, N, d), key padding masks (B, N) True at padding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def sine_position_embedding(mask: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2-D sine embedding of a padded feature map.

    mask: (B, H, W) bool, True at padding. Returns (B, dim, H, W): the first dim/2 channels encode
    y, the rest x, each as interleaved sin/cos of the cumulative position over the valid region
    scaled to [0, 2π].
    """
    if dim % 4:
        raise ValueError(f"the sine embedding needs a dimension divisible by 4, got {dim}")
    valid = (~mask).to(torch.float32)
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * 2 * math.pi
    x = x / (x[:, :, -1:] + eps) * 2 * math.pi
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=mask.device)
    frequencies = temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / half)
    pos_x, pos_y = x[..., None] / frequencies, y[..., None] / frequencies  # (B, H, W, dim/2)
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention + FFN over the flattened image features."""

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, dropout: float, pre_norm: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, src: Tensor, pos: Tensor | None, padding: Tensor | None) -> Tensor:
        """src, pos: (B, N, d); padding: (B, N) -> (B, N, d)."""
        x = self.norm1(src) if self.pre_norm else src
        q = k = _with_pos(x, pos)
        attended = self.self_attn(q, k, x, key_padding_mask=padding, need_weights=False)[0]
        src = src + self.dropout1(attended)
        if not self.pre_norm:
            src = self.norm1(src)
        x = self.norm2(src) if self.pre_norm else src
        src = src + self.dropout2(self.ffn(x))
        return src if self.pre_norm else self.norm2(src)


class DecoderLayer(nn.Module):
    """Self-attention over the queries, cross-attention to the memory, FFN."""

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, dropout: float, pre_norm: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))
        self.pre_norm = pre_norm

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Tensor | None,
        memory_pos: Tensor | None,
        memory_padding: Tensor | None,
    ) -> Tensor:
        """tgt, query_pos: (B, Q, d); memory, memory_pos: (B, N, d); memory_padding: (B, N)."""
        x = self.norm1(tgt) if self.pre_norm else tgt
        q = k = _with_pos(x, query_pos)
        tgt = tgt + self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])
        if not self.pre_norm:
            tgt = self.norm1(tgt)
        x = self.norm2(tgt) if self.pre_norm else tgt
        attended = self.cross_attn(
            _with_pos(x, query_pos),
            _with_pos(memory, memory_pos),
            memory,
            key_padding_mask=memory_padding,
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout2(attended)
        if not self.pre_norm:
            tgt = self.norm2(tgt)
        x = self.norm3(tgt) if self.pre_norm else tgt
        tgt = tgt + self.dropout3(self.ffn(x))
        return tgt if self.pre_norm else self.norm3(tgt)


class Transformer(nn.Module):
    """DETR's encoder-decoder.

    The encoder has a final LayerNorm only in the pre-norm variant (as in DETR); the decoder
    always has one, applied to every layer's output.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        encoder_layers: int,
        decoder_layers: int,
        ffn_dim: int,
        dropout: float,
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            EncoderLayer(dim, heads, ffn_dim, dropout, pre_norm) for _ in range(encoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(dim) if pre_norm else nn.Identity()
        self.decoder = nn.ModuleList(
            DecoderLayer(dim, heads, ffn_dim, dropout, pre_norm) for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(
        self, src: Tensor, padding: Tensor, pos: Tensor, query_pos: Tensor
    ) -> tuple[Tensor, Tensor]:
        """src, pos: (B, N, d); padding: (B, N); query_pos: (Q, d).

        Returns the decoder states of every layer after the final norm, (L, B, Q, d), and the
        encoder memory (B, N, d).
        """
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, padding)
        memory = self.encoder_norm(memory)
        query_pos = query_pos.unsqueeze(0).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        states = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, query_pos, pos, padding)
            states.append(self.decoder_norm(tgt))
        return torch.stack(states), memory
