"""Relation models, looked up by name in one flat mapping.

Every model follows one contract. Train mode: ``model(images, targets)`` returns a dict of
unweighted loss terms (``loss_rel``, ``loss_obj`` in SGCls/SGDet, ``loss_align`` with
alignment) and ``model.loss_weights`` says how they sum. Eval mode: one prediction per target,
``sgstudy.structures.SceneGraphPrediction`` for scene-graph models and
``ReferringPrediction`` for the referring-relationship task (DSG). The frozen detector's parameters have
``requires_grad=False``; ``model.describe()`` gives strings for the run's params.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sgstudy.config import ModelConfig
from sgstudy.errors import ConfigError
from sgstudy.models.dsg import build_dsg
from sgstudy.models.motifs import build_motifs
from sgstudy.models.sgtr import build_sgtr

MODEL_BUILDERS: dict[str, Callable[[ModelConfig, object], nn.Module]] = {
    "motifs": build_motifs,
    "sgtr": build_sgtr,
    "dsg": build_dsg,
}


def build_model(config: ModelConfig, statistics) -> nn.Module:
    """The relation model ``config.name`` for a dataset described by ``statistics``
    (``sgstudy.data.statistics.DatasetStatistics``)."""
    builder = MODEL_BUILDERS.get(config.name)
    if builder is None:
        known = ", ".join(sorted(MODEL_BUILDERS))
        raise ConfigError(f"model {config.name!r} is not available; known models: {known}")
    return builder(config, statistics)
