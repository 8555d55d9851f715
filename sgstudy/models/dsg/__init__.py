"""DSG (Raboh et al., WACV 2020): differentiable scene graphs for referring relationships."""

from sgstudy.models.dsg.model import DsgModel, build_dsg

__all__ = ["DsgModel", "build_dsg"]
