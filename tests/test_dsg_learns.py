"""DSG learns: training on two referring-relationship queries of one image lifts its iou_test
on them clearly above the random-box baseline. Slow (about 10 minutes on a 2-core CPU); the
README's learnability commands cover the same ground on a real split."""

from __future__ import annotations

import pytest
import torch

from sgstudy.config import ModelConfig, OptimConfig
from sgstudy.data.referring import ReferringDataset, compute_referring_statistics
from sgstudy.data.referring_synth import derive_referring_dataset
from sgstudy.engine import build_optimizer, weighted_total
from sgstudy.evaluation.referring_eval import ReferringEvaluator
from sgstudy.models import build_model
from sgstudy.models.referring_baselines import RandomBoxBaseline

STEPS = 80
FIRST_QUERY, NUM_QUERIES = 2, 2  # two queries on one image of the synthetic fixture


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
    items = [train[i] for i in range(FIRST_QUERY, FIRST_QUERY + NUM_QUERIES)]
    images, targets = [image for image, _ in items], [target for _, target in items]
    num_predicates = len(statistics.predicate_classes) - 1
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="dsg"), statistics)
    optimizer = build_optimizer(model, OptimConfig(optimizer="adamw", lr=1e-3))
    for _ in range(STEPS):
        model.train()
        total = weighted_total(model(images, targets), model.loss_weights)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
    learned = mean_iou(model, images, targets, num_predicates)
    random = mean_iou(RandomBoxBaseline(seed=0), images, targets, num_predicates)
    # Measured on a loaded 2-core CPU: 0.41 after 80 steps against the random boxes' 0.09. Not the
    # near-1 of a converged overfit: at 80 steps the proposals still miss some boxes (IoU 0.4-0.8)
    # and the classifier has only begun to tell the two queries apart.
    assert learned >= random + 0.2, f"DSG {learned:.2f} vs random boxes {random:.2f}"
