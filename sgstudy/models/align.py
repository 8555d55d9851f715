"""Self-supervised relation alignment (Xu, Liao, Sigal, WACV 2024; SPEC §4), model-agnostic parts.

During training an auxiliary branch re-runs a relation model's relation head on a masked copy of
its relational input features, with the same parameters, and its output is pulled towards the
supervised branch's output, which acts as a teacher without gradient (a distillation):
``L = L_sgg + λ · L_align``.

The public text gives neither the mask nor the loss in equations; our choices, configurable in
``AlignConfig``: a Bernoulli(p) mask per feature element that zeroes it, without rescaling the
kept ones (the teacher never saw rescaled inputs either); alignment of the projected pair
representations by the squared distance of their unit vectors (``representation``), of the
predicate distributions by KL(teacher ‖ student) (``distribution``), or both summed.

Each model decides which of its features are the relational inputs; Motifs' choice is in
``sgstudy.models.motifs.model``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sgstudy.config import AlignConfig


def keep_mask(like: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """A mask of ``like``'s shape, True where an element is kept; each element is dropped
    independently with probability ``ratio``. Draws from ``generator`` (torch's global one for
    ``like``'s device when None)."""
    uniform = torch.rand(like.shape, generator=generator, device=like.device)
    return uniform >= ratio


def mask_features(
    features: Tensor, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """``features`` with a Bernoulli(``ratio``) share of its elements set to zero, no rescaling."""
    return features * keep_mask(features, ratio, generator).to(features.dtype)


def representation_alignment(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared distance between the L2-normalised (P, D) representations, ``2 - 2 cos`` per pair,
    averaged over pairs; the teacher gets no gradient.

    Normalised because student and teacher share their parameters: a plain MSE is smallest when
    every representation shrinks to zero, and at λ = 10 that trivial solution beats the
    supervised loss (the model collapses to predicting background).
    """
    if student.numel() == 0:
        return student.sum() * 0.0
    student = F.normalize(student.float(), dim=1)
    teacher = F.normalize(teacher.detach().float(), dim=1)
    return (student - teacher).pow(2).sum(dim=1).mean()


def distribution_alignment(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(teacher ‖ student) between (P, C) predicate distributions given as logits, summed over
    classes and averaged over pairs; the teacher gets no gradient."""
    if student_logits.numel() == 0:
        return student_logits.sum() * 0.0
    student = F.log_softmax(student_logits.float(), dim=1)
    teacher = F.log_softmax(teacher_logits.detach().float(), dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True)


def alignment_loss(
    target: str,
    student_representation: Tensor,
    teacher_representation: Tensor,
    student_logits: Tensor,
    teacher_logits: Tensor,
) -> Tensor:
    """The unweighted L_align for ``target`` in representation / distribution / both."""
    losses = []
    if target in ("representation", "both"):
        losses.append(representation_alignment(student_representation, teacher_representation))
    if target in ("distribution", "both"):
        losses.append(distribution_alignment(student_logits, teacher_logits))
    if not losses:
        raise ValueError(f"unknown alignment target {target!r}")
    return sum(losses[1:], losses[0])


def describe_alignment(config: AlignConfig, masked: str, representation: str) -> dict[str, str]:
    """Run parameters saying what the branch masks and aligns. ``masked`` names the features
    masked under ``config.masked_input``; ``representation`` names the aligned representation."""
    if not config.enabled:
        return {"align_branch": "off"}
    aligned = {
        "representation": f"squared distance of unit vectors (2 - 2 cos) on {representation}",
        "distribution": "KL(teacher || student) on predicate distributions",
        "both": f"2 - 2 cos on {representation} + KL(teacher || student) on predicate distributions",
    }[config.target]
    return {
        "align_branch": "parameter-shared relation head re-run on masked input, teacher detached",
        "align_masks": f"{masked}, Bernoulli(p={config.mask_ratio}) per element, no rescaling",
        "align_aligns": aligned,
        "align_loss": f"L_sgg + {config.weight} * loss_align",
    }
