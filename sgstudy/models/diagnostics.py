"""Collapse and balance diagnostics of a relation model, cheap enough to run every epoch.

- ``effective_rank``: how many directions the pair representation really uses (Roy & Vetterli,
  2007): exp of the entropy of the normalised singular values of the centred (rows, D) matrix.
  A representation that collapses towards a few directions falls from tens to a few.
- ``gradient_norm_ratio``: ‖∇ λ·L_align‖ / ‖∇ L_sup‖ on the shared encoder's parameters. Far
  above 1 the auxiliary loss, not the task, drives the encoder.

Models expose ``pair_representation_layer()`` (the layer whose input is the pair
representation) and ``shared_encoder_parameters()``; models without them get no diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

# Pair representation rows kept per batch for the rank: enough for a stable spectrum of a
# 256-wide representation over a val split, small enough for an SVD in milliseconds.
ROWS_PER_BATCH = 64


def effective_rank(features: Tensor) -> float:
    """exp(H(σ / Σσ)) of the singular values σ of the centred (N, D) ``features``; 0 for a
    matrix whose rows are all equal (nothing left after centring)."""
    centred = features.double() - features.double().mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    total = singular.sum()
    if total <= 1e-12 * max(1.0, features.abs().max().item()):
        return 0.0
    share = singular / total
    share = share[share > 0]
    return float(torch.exp(-(share * share.log()).sum()))


class RepresentationProbe:
    """Collects evenly strided rows of the input of ``layer`` while active (a context manager),
    at most ``rows_per_batch`` per forward call, and gives their ``effective_rank``."""

    def __init__(self, layer: nn.Module, rows_per_batch: int = ROWS_PER_BATCH) -> None:
        self.layer, self.rows_per_batch = layer, rows_per_batch
        self.rows: list[Tensor] = []
        self.handle = None

    def __enter__(self) -> RepresentationProbe:
        self.rows = []
        self.handle = self.layer.register_forward_pre_hook(self.collect)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def collect(self, _module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        features = inputs[0].detach()
        stride = max(1, -(-len(features) // self.rows_per_batch))  # ceil division
        self.rows.append(features[::stride].float().cpu())

    def effective_rank(self) -> float:
        rows = [r for r in self.rows if len(r)]
        return effective_rank(torch.cat(rows)) if rows else 0.0


def gradient_norm(loss: Tensor, parameters: Iterable[nn.Parameter]) -> float:
    """‖∂loss/∂parameters‖₂ over all ``parameters`` together; keeps the graph for backward."""
    parameters = list(parameters)
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    squares = [g.float().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def gradient_norm_ratio(
    losses: dict[str, Tensor],
    weights: dict[str, float],
    auxiliary: str,
    parameters: Iterable[nn.Parameter],
) -> float | None:
    """‖∇ w·losses[auxiliary]‖ / ‖∇ Σ other weighted losses‖ on ``parameters``; None when the
    auxiliary term is absent or the supervised gradient there is zero."""
    if auxiliary not in losses:
        return None
    parameters = list(parameters)
    supervised = sum(weights.get(n, 1.0) * v for n, v in losses.items() if n != auxiliary)
    denominator = gradient_norm(supervised, parameters)
    if denominator == 0.0:
        return None
    return gradient_norm(weights.get(auxiliary, 1.0) * losses[auxiliary], parameters) / denominator
