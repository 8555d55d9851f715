"""What DSG reads off its node features: the referring-relationship classifier, the box
refinement, the ground-truth-box scene-graph heads, and the two-step ablation's reasoning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgstudy.models.dsg.gpi import mlp
from sgstudy.models.dsg.targets import BACKGROUND, NUM_ROLES, OBJECT, SUBJECT


def query_one_hot(query: Tensor, num_entity_classes: int, num_predicates: int) -> Tensor:
    """(3,) 1-based (subject class, predicate, object class) -> (2 O + C,) the concatenated
    one-hot codes (public code: no learned embedding of the query)."""
    s, p, o = (int(v) - 1 for v in query)
    code = query.new_zeros(2 * num_entity_classes + num_predicates, dtype=torch.float32)
    code[s] = code[num_entity_classes + p] = code[num_entity_classes + num_predicates + o] = 1.0
    return code


class ReferringClassifier(nn.Module):
    """F_RRC: [node feature ; one-hot query] -> two FC layers of ``hidden`` (512) -> 4 roles
    (background, subject, object, other). nodes (n, D), query (Q,) -> logits (n, 4).

    The public code has one hidden layer of 500 units; the supplement's two of 512 are used."""

    def __init__(self, node_dim: int, query_dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = mlp(node_dim + query_dim, hidden, NUM_ROLES, layers=2)

    def forward(self, nodes: Tensor, query: Tensor) -> Tensor:
        return self.layers(torch.cat([nodes, query.to(nodes.dtype).expand(len(nodes), -1)], 1))


class BoxRefinement(nn.Linear):
    """A linear map of the node feature to class-agnostic deltas [dx, dy, dw, dh], (n, 4);
    started near zero (the public code's 0.001 standard deviation) so boxes start as proposed."""

    def __init__(self, node_dim: int) -> None:
        super().__init__(node_dim, 4)
        nn.init.normal_(self.weight, std=0.001)
        nn.init.zeros_(self.bias)


class AnnotatedGraphHeads(nn.Module):
    """Partial scene-graph supervision on the annotated boxes themselves (public code's
    ``gt_ent_score``, ``gt_rel_score``): linear classifiers of their raw region features, so the
    detector learns entity and relation features directly.

    entity (N, D) -> (N, O + 1); pairs [f_i, f_j, f_ij] (N, N, 2 D + D_r) -> (N, N, C + 1).
    Here D includes the 4 box coordinates, as for the proposals; the public code gives these
    heads the 512 pooled features without coordinates.
    """

    def __init__(self, entity_dim: int, relation_dim: int, num_entities: int, num_predicates: int):
        super().__init__()
        self.entity = nn.Linear(entity_dim, num_entities)
        self.relation = nn.Linear(2 * entity_dim + relation_dim, num_predicates)

    def forward(self, entity: Tensor, relation: Tensor) -> tuple[Tensor, Tensor]:
        n = len(entity)
        pairs = [entity[:, None, :].expand(n, n, -1), entity[None, :, :].expand(n, n, -1), relation]
        return self.entity(entity), self.relation(torch.cat(pairs, dim=-1))


def answer_from_scene_graph(
    entity_logits: Tensor, relation_logits: Tensor, query: Tensor
) -> Tensor:
    """The two-step ablation's reasoning (supplement §2): role scores (n, 4) from a predicted
    scene graph. entity_logits (n, O + 1), relation_logits (n, n, C + 1), query (3,).

    If the predicted graph (argmax labels) holds the query's triplet, its nodes are the answer;
    otherwise the triplet with the highest probability P(s | i) P(p | i, j) P(o | j). Chosen
    subjects (objects) get role "subject" ("object") with probability 1, the rest background;
    a node chosen as both takes the role of its more probable triplet.
    """
    s, p, o = (int(v) for v in query)
    n = len(entity_logits)
    entities, relations = entity_logits.float().softmax(-1), relation_logits.float().softmax(-1)
    probability = entities[:, s, None] * relations[:, :, p] * entities[None, :, o]  # (n, n)
    if n > 1:
        self_pairs = torch.eye(n, dtype=torch.bool, device=probability.device)
        probability = probability.masked_fill(self_pairs, -1.0)  # no pair; never chosen
    labels, predicates = entities.argmax(-1), relations.argmax(-1)
    chosen = (
        (labels[:, None] == s) & (predicates == p) & (labels[None, :] == o) & (probability >= 0)
    )
    if not chosen.any():
        chosen = probability == probability.max()
    as_subject = torch.where(chosen, probability, -1.0).amax(dim=1)  # (n,) best chosen triplet
    as_object = torch.where(chosen, probability, -1.0).amax(dim=0)
    role = torch.full((n,), BACKGROUND, dtype=torch.long, device=entity_logits.device)
    role[as_object >= 0] = OBJECT
    role[(as_subject >= 0) & (as_subject >= as_object)] = SUBJECT
    return F.one_hot(role, NUM_ROLES).float()
