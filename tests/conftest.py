"""Shared fixtures: small synthetic datasets, generated once per test session.

Tests must treat the generated folders as read-only (copy one before damaging it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sgstudy.data.synthetic import EARLIER_VAL_FRACTION, generate_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root_factory(tmp_path_factory) -> Callable[..., Path]:
    """``make(num_images=120, image_size=64, seed=0) -> root``; each distinct argument
    triple is generated once per session."""
    made: dict[tuple[int, int, int], Path] = {}

    def make(num_images: int = 120, image_size: int = 64, seed: int = 0) -> Path:
        key = (num_images, image_size, seed)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"synthetic_{num_images}_{image_size}_{seed}")
            # The earlier 15% val split: the learnability thresholds of the tests were set on
            # it, and the small sets keep more images for training.
            made[key] = generate_synthetic_dataset(
                folder,
                num_images,
                image_size,
                seed,
                progress=False,
                val_fraction=EARLIER_VAL_FRACTION,
            )
        return made[key]

    return make


@pytest.fixture(scope="session")
def synthetic_root(synthetic_root_factory) -> Path:
    """120 synthetic images at 64 px, seed 0 (about 36 test, 13 val, 71 train images)."""
    return synthetic_root_factory(120, 64, 0)
