"""The per-image sums every recall metric is made of, stacked over the evaluated images.

Both evaluation paths produce them: the per-image path (``sgg_eval``) one image at a time,
the batched path (``batched``) a chunk of images at once; ``concatenate_pools`` joins the
pieces and ``SceneGraphEvaluator.evaluate`` turns the result into metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PooledImages:
    """Per-image values stacked over I evaluated images (nK cut-offs, C predicates)."""

    image_recall: np.ndarray  # (nK, I) recalled GT triplets / GT triplets
    ng_image_recall: np.ndarray  # (nK, I) the same without graph constraint
    unseen_recall: np.ndarray  # (nK, I_unseen), images with an unseen triplet only
    ng_unseen_recall: np.ndarray  # (nK, I_unseen)
    class_sum: np.ndarray  # (nK, C) sum over images of per-image class recall
    ng_class_sum: np.ndarray  # (nK, C)
    class_images: np.ndarray  # (C,) images containing each predicate
    eval_counts: np.ndarray  # (C,) GT triplets per predicate


def concatenate_pools(pools: list[PooledImages]) -> PooledImages:
    """One pool over the images of all ``pools`` (at least one)."""

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(pool, name) for pool in pools], axis=1)

    def summed(name: str) -> np.ndarray:
        return sum(getattr(pool, name) for pool in pools[1:]) + getattr(pools[0], name)

    return PooledImages(
        image_recall=joined("image_recall"),
        ng_image_recall=joined("ng_image_recall"),
        unseen_recall=joined("unseen_recall"),
        ng_unseen_recall=joined("ng_unseen_recall"),
        class_sum=summed("class_sum"),
        ng_class_sum=summed("ng_class_sum"),
        class_images=summed("class_images"),
        eval_counts=summed("eval_counts"),
    )
