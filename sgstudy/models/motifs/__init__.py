"""Neural Motifs (Zellers et al., CVPR 2018) with optional self-supervised relation alignment.

``context``: object context, object decoder, edge context; ``predictor``: union features, pair
classifier, frequency bias; ``sampling``: which pairs are trained and tested; ``model``: the
assembled model and ``build_motifs``.
"""

from sgstudy.models.motifs.model import MOTIFS_PRESETS, MotifsModel, MotifsWidths, build_motifs

__all__ = ["MOTIFS_PRESETS", "MotifsModel", "MotifsWidths", "build_motifs"]
