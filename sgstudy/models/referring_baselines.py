"""Two baselines for referring relationships, scored by the same evaluator as DSG.

- ``ClassOnlyBaseline`` (the heuristic of the learnability table): a trained Faster R-CNN
  (``sgstudy train-detector``) detects the image; every detection of the query's subject
  class is a subject and every detection of its object class an object; the predicate is
  ignored. Detections keep the detector's score order, so when no detection has the
  subject's class, the box the metric always includes (highest P(subject), a tie at 0) is
  the most confident detection. A detection whose class is both the subject's and the
  object's class answers both roles (two rows, one per role).
- ``RandomBoxBaseline``: ``num_boxes`` boxes with uniformly random corners and role
  probabilities drawn from a flat Dirichlet, seeded by (seed, image id, query), so that a
  run is reproducible and independent of batch order. It sees nothing but the image size.

Both are eval-only modules with the model contract's eval-mode output: one
``ReferringPrediction`` per query.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from sgstudy.errors import ConfigError
from sgstudy.evaluation.referring_eval import OBJECT, ROLES, SUBJECT
from sgstudy.structures import ReferringPrediction, ReferringTarget

OTHER = ROLES.index("other")
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_RANDOM_BOXES = 8


class ClassOnlyBaseline(nn.Module):
    """detector: a trained ``FasterRCNN`` whose classes are the dataset's entity classes;
    score_threshold: detections below it are dropped."""

    loss_weights: dict[str, float] = {}

    def __init__(self, detector: FasterRCNN, score_threshold: float = DEFAULT_SCORE_THRESHOLD):
        super().__init__()
        if not 0.0 <= score_threshold < 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1), got {score_threshold}")
        self.detector = detector.eval()
        self.detector.roi_heads.score_thresh = score_threshold
        self.score_threshold = score_threshold

    def describe(self) -> dict[str, str]:
        return {"baseline": "class-only", "score_threshold": str(self.score_threshold)}

    @torch.no_grad()
    def forward(
        self, images: list[Tensor], targets: list[ReferringTarget]
    ) -> list[ReferringPrediction]:
        detections = self.detector.eval()(list(images))  # boxes in the given images' pixels
        return [
            answer_by_class(d["boxes"], d["labels"], t.query) for d, t in zip(detections, targets)
        ]


def answer_by_class(boxes: Tensor, labels: Tensor, query: Tensor) -> ReferringPrediction:
    """boxes (N, 4), labels (N,) of detections in score order; query (3,) 1-based classes.

    Returns one row per (detection, role): subject for the subject class, object for the
    object class, "other" for any other class.
    """
    is_subject = labels == query[0]
    is_object = labels == query[2]
    roles = torch.stack([is_subject, is_object, ~(is_subject | is_object)], dim=1)  # (N, 3)
    detection, column = roles.nonzero(as_tuple=True)  # detection order, then role
    role = torch.tensor([SUBJECT, OBJECT, OTHER], device=labels.device)[column]
    return ReferringPrediction(boxes[detection], F.one_hot(role, len(ROLES)).float())


class RandomBoxBaseline(nn.Module):
    """num_boxes random boxes per query with random role probabilities (module docstring)."""

    loss_weights: dict[str, float] = {}

    def __init__(self, num_boxes: int = DEFAULT_RANDOM_BOXES, seed: int = 0) -> None:
        super().__init__()
        if num_boxes < 1:
            raise ConfigError(f"num_boxes must be >= 1, got {num_boxes}")
        self.num_boxes = num_boxes
        self.seed = seed

    def describe(self) -> dict[str, str]:
        return {"baseline": "random-box", "num_boxes": str(self.num_boxes), "seed": str(self.seed)}

    def forward(
        self, images: list[Tensor], targets: list[ReferringTarget]
    ) -> list[ReferringPrediction]:
        return [self.guess(target) for target in targets]

    def guess(self, target: ReferringTarget) -> ReferringPrediction:
        query = [int(v) for v in target.query.tolist()]
        rng = np.random.default_rng([self.seed, int(target.image_id), *query])
        height, width = target.image_size
        corners = rng.uniform(size=(self.num_boxes, 2, 2)) * [width, height]  # (n, 2 points, xy)
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        role_scores = rng.dirichlet(np.ones(len(ROLES)), size=self.num_boxes)
        return ReferringPrediction(
            torch.from_numpy(boxes).float(), torch.from_numpy(role_scores).float()
        )
