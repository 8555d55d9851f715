"""SGTR: the transformer SGDet family and its relation alignment (SPEC §5, Align supplement §2)."""

from sgstudy.models.sgtr.model import SgtrModel, build_sgtr

__all__ = ["SgtrModel", "build_sgtr"]
