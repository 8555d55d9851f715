"""DSG learns: trained on one referring-relationship query on each of four images, it
overfits them to an iou_test near 1, far above the random-box baseline. Slow (about 75 s on
an idle 2-core CPU); the README's learnability commands cover the same ground on a real
split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgstudy.config import ModelConfig, OptimConfig
from sgstudy.data.referring import ReferringDataset, compute_referring_statistics
from sgstudy.data.referring_synth import derive_referring_dataset
from sgstudy.engine import build_optimizer, weighted_total
from sgstudy.evaluation.referring_eval import ReferringEvaluator
from sgstudy.models import build_model
from sgstudy.models.referring_baselines import RandomBoxBaseline

STEPS = 300
NUM_IMAGES = 4


def mean_iou(model, images, targets, num_predicates: int) -> float:
    model.eval()
    evaluator = ReferringEvaluator(num_predicates)
    with torch.no_grad():
        evaluator.process(targets, model(images, targets))
    return evaluator.evaluate().metrics["mean_iou"]


@pytest.mark.slow
def test_dsg_overfits_a_handful_of_queries(synthetic_root, tmp_path):
    derive_referring_dataset(synthetic_root, tmp_path / "rr")
    train = ReferringDataset(tmp_path / "rr", "train")
    statistics = compute_referring_statistics(train)
    _, first_query_of_image = np.unique(train.queries.image, return_index=True)
    items = [train[int(i)] for i in np.sort(first_query_of_image)[:NUM_IMAGES]]
    images, targets = [image for image, _ in items], [target for _, target in items]
    num_predicates = len(statistics.predicate_classes) - 1
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="dsg"), statistics)
    optimizer = build_optimizer(model, OptimConfig(optimizer="adamw", lr=1e-3))
    # At a constant lr the IoU on the four queries keeps swinging between 0.7 and 0.95; a
    # tenfold drop for the last 40% of the steps lets it settle.
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(0.6 * STEPS)], 0.1)
    for _ in range(STEPS):
        model.train()
        total = weighted_total(model(images, targets), model.loss_weights)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
    learned = mean_iou(model, images, targets, num_predicates)
    random = mean_iou(RandomBoxBaseline(seed=0), images, targets, num_predicates)
    # Measured on a 2-core CPU: 0.87 (subject 0.89, object 0.86) against the random boxes' 0.04.
    assert learned >= 0.8, f"DSG reached mean IoU {learned:.2f} on the queries it trained on"
    assert learned >= random + 0.5, f"DSG {learned:.2f} vs random boxes {random:.2f}"
