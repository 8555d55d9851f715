"""Checkpoints load as tensors and plain values only: a crafted pickle is refused, never run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgstudy.config import RunConfig
from sgstudy.engine import load_checkpoint
from sgstudy.errors import UserError
from sgstudy.training import CHECKPOINT_NAME, CONFIG_NAME, TrainingSession

SGSTUDY = Path(sys.executable).parent / "sgstudy"


class Planted:
    """Unpickling this touches ``marker``: the code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    torch.save({"model": {}, "epoch": 1, "payload": Planted(marker)}, path)


def test_a_crafted_checkpoint_is_refused_by_evaluate_and_runs_nothing(tmp_path, synthetic_root):
    """``sgstudy evaluate`` on a run directory whose checkpoint.pt carries code: exit 2, one
    ``error:`` line saying it refuses the file, and the embedded code never ran."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig.from_flat({"data_root": str(synthetic_root), "device": "cpu"})
    (run_dir / CONFIG_NAME).write_text(json.dumps(config.to_params(), default=str))
    marker = tmp_path / "code-ran"
    plant(run_dir / CHECKPOINT_NAME, marker)
    done = subprocess.run(
        [str(SGSTUDY), "evaluate", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "refusing to load it" in lines[0]
    assert not marker.exists()


def test_load_checkpoint_refuses_code_in_process(tmp_path):
    marker = tmp_path / "code-ran"
    plant(tmp_path / "evil.pt", marker)
    with pytest.raises(UserError, match="refusing to load it"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_real_checkpoint_loads_with_weights_only_and_restores_the_rng(tmp_path, synthetic_root):
    """What ``save`` writes is tensors and plain values: it loads under ``weights_only=True``
    and restores Python's, NumPy's and torch's generators to the saved draw."""
    import random

    import numpy as np

    config = RunConfig.from_flat(
        {"data_root": str(synthetic_root), "device": "cpu", "epochs": 1, "preset": "tiny"}
    )
    session = TrainingSession.start(config)
    session.save(tmp_path / "ckpt.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    torch.load(tmp_path / "ckpt.pt", weights_only=True)  # raised UnpicklingError before
    TrainingSession.start(config, tmp_path / "ckpt.pt")
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
