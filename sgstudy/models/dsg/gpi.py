"""The DSG generator: one Graph-Permutation-Invariant step (Herzig et al., NeurIPS 2018) with
attention replacing both sums (DSG supplement §1, Eqs. 1-2; public code ``lib/nets/gpi.py``).

For n entities with features z_i and relations z_ij (i subject, j object):

    phi_ij = ReLU(MLP_phi([z_j, z_i, z_ij]))                      (n, n, phi_out)
    m_i    = sum_{j != i} w_ij * phi_ij                            (n, phi_out)
    alpha_i = ReLU(MLP_alpha([z_i, m_i]))                          (n, alpha_out)
    g      = sum_i v_i * alpha_i                                   (alpha_out,)
    z'_i   = MLP_rho([z_i, g, m_i])                                (n, rho_out)
    relation logits_ij = Linear([z_j, z_i, z_ij, g]); entity logits_i = Linear(z'_i)

The weights w, v depend on ``aggregation``:
- ``feature-attention`` (DSG): w_ij = softmax over neighbours j of MLP([z_j, z_i, z_ij]),
  separately for every feature; v_i = softmax over entities i of MLP([z_i, m_i]), per feature.
- ``scalar-attention``: one weight per neighbour (an MLP to 1 output), the same softmaxes.
- ``sum``: w = v = 1, the plain sums of Eq. 1.

phi, alpha, rho and the attention networks are "two fully-connected layers with 512 hidden
units" (supplement): in -> hidden -> out, with outputs 512, 512 and 1024 in ``paper``. The
supplement sizes phi, alpha and rho only; each attention network mirrors its phi or alpha (same
input, hidden and output widths), as in the public code. Inputs are the 512 region features
plus 4 box coordinates (public code), so phi reads 3 x 516 = 1548 features.

Differences from the public code (``lib/nets/gpi.py``, ``lib/nets/network.py``), where we follow
the supplement:
- its networks have two hidden layers of 516 units before the output layer;
- its phi, alpha and rho all output 1,024 features (its ``Gpi`` is built with the default node
  width 1,024); the supplement says 512, 512 and 1,024;
- its neighbour sum runs over every j, the entity itself included (Eq. 1 has j != i);
- its plain-sum variant divides by a constant 64.
Where the supplement is silent or the public code is narrower, we follow the public code:
- one GPI step (its ``rnn_steps=1``);
- relation features are not updated: Eq. 2's rho^relation (z'_kl) is not built, the relation
  logits are one linear layer of [z_j, z_i, z_ij, g], and F_RRC reads z'_i only;
- its sigmoid "forget gate" network beside rho, whose output nothing uses, is left out.
Steps are permutation-equivariant in the entities (z'_i, logits) and g invariant.

Cost (``sgstudy complexity``): at n = 32 the ``paper`` step holds 5.25 M parameters and
2.41 G multiply-adds, against the supplement's < 4 M and < 1.5 G. phi, alpha and rho alone
are 3.16 M and 1.15 G; the two feature-attention networks add 1.85 M and 1.11 G, and the heads
0.25 M and 0.15 G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 1) -> nn.Sequential:
    """``layers`` hidden FC + ReLU of width ``hidden``, then a linear output."""
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


class Aggregation(nn.Module):
    """Attention (or plain) weights over one axis of ``values``.

    ``weights(inputs, axis, mask)``: inputs (..., in_dim) -> weights broadcastable to the values
    (..., out_dim) (feature attention), (..., 1) (scalar attention) or None (plain sum); masked
    positions (``mask`` False) get weight 0 and the rest sum to 1 along ``axis``.
    """

    def __init__(self, kind: str, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.kind = kind
        scores_dim = {"feature-attention": out_dim, "scalar-attention": 1}.get(kind)
        self.scores = mlp(in_dim, hidden, scores_dim) if scores_dim else None

    def weights(self, inputs: Tensor, axis: int, mask: Tensor | None = None) -> Tensor | None:
        if self.scores is None:
            return None
        scores = self.scores(inputs).float()
        if mask is not None:
            scores = scores.masked_fill(~mask[..., None], float("-inf"))
        return scores.softmax(dim=axis).to(inputs.dtype)

    def forward(self, values: Tensor, inputs: Tensor, axis: int, mask: Tensor | None = None):
        """sum over ``axis`` of weights * values (masked positions left out)."""
        weights = self.weights(inputs, axis, mask)
        if weights is None:
            weights = values.new_ones(1) if mask is None else mask[..., None].to(values.dtype)
        return (weights * values).sum(dim=axis)


@dataclass
class GraphOutput:
    """One image's differentiable scene graph.

    nodes:            (n, rho_out) z'_i
    graph:            (alpha_out,) g
    entity_logits:    (n, O + 1)
    relation_logits:  (n, n, C + 1), [i, j] for subject i and object j; the diagonal is no pair
    """

    nodes: Tensor
    graph: Tensor
    entity_logits: Tensor
    relation_logits: Tensor


class GpiStep(nn.Module):
    """z (n, entity_dim), r (n, n, relation_dim) -> GraphOutput; see the module docstring."""

    def __init__(
        self,
        entity_dim: int,
        relation_dim: int,
        hidden: int,
        phi_out: int,
        alpha_out: int,
        rho_out: int,
        num_entity_classes: int,
        num_relation_classes: int,
        aggregation: str,
    ) -> None:
        super().__init__()
        pair_dim = 2 * entity_dim + relation_dim
        node_dim = entity_dim + phi_out
        self.phi = mlp(pair_dim, hidden, phi_out)
        self.neighbours = Aggregation(aggregation, pair_dim, hidden, phi_out)
        self.alpha = mlp(node_dim, hidden, alpha_out)
        self.nodes = Aggregation(aggregation, node_dim, hidden, alpha_out)
        self.rho = mlp(entity_dim + alpha_out + phi_out, hidden, rho_out)
        self.relation_head = nn.Linear(pair_dim + alpha_out, num_relation_classes)
        self.entity_head = nn.Linear(rho_out, num_entity_classes)

    @staticmethod
    def pair_inputs(z: Tensor, r: Tensor) -> Tensor:
        """[z_j, z_i, z_ij] at [i, j]: (n, n, 2 entity_dim + relation_dim)."""
        n = len(z)
        return torch.cat([z[None, :, :].expand(n, n, -1), z[:, None, :].expand(n, n, -1), r], -1)

    def forward(self, z: Tensor, r: Tensor) -> GraphOutput:
        n = len(z)
        pairs = self.pair_inputs(z, r)  # (n, n, pair_dim)
        messages = torch.relu(self.phi(pairs))  # (n, n, phi_out)
        neighbours = ~torch.eye(n, dtype=torch.bool, device=z.device)  # j != i
        if n > 1:
            m = self.neighbours(messages, pairs, axis=1, mask=neighbours)  # (n, phi_out)
        else:  # no neighbour: an empty sum
            m = messages.new_zeros(n, messages.shape[-1])
        node_inputs = torch.cat([z, m], dim=1)  # (n, entity_dim + phi_out)
        alpha = torch.relu(self.alpha(node_inputs))  # (n, alpha_out)
        g = self.nodes(alpha, node_inputs, axis=0)  # (alpha_out,)
        nodes = self.rho(torch.cat([z, g.expand(n, -1), m], dim=1))  # (n, rho_out)
        relation_logits = self.relation_head(torch.cat([pairs, g.expand(n, n, -1)], dim=-1))
        return GraphOutput(nodes, g, self.entity_head(nodes), relation_logits)
