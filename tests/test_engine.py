"""The engine really trains: checkpoints resume exactly, a tiny model overfits a few images."""

import dataclasses

import pytest
import torch

from sgstudy.config import RunConfig
from sgstudy.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch
from sgstudy.training import TrainingSession, make_evaluator, make_loader


def tiny_config(root, **flat) -> RunConfig:
    base = {
        "data_root": str(root),
        "preset": "tiny",
        "batch_size": 8,
        "epochs": 2,
        "lr": 0.05,
        "warmup_iters": 2,
        "device": "cpu",
    }
    return RunConfig.from_flat({**base, **flat})


def test_warmup_then_step_decay():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.3)
    optim = dataclasses.replace(RunConfig().optim, lr=0.3, warmup_iters=3, lr_steps=(1,))
    scheduler = build_scheduler(optimizer, optim, iters_per_epoch=5)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3, 0.3, 0.03, 0.03])


@pytest.mark.parametrize("align", [False, True])
def test_checkpoint_resume_gives_the_same_next_epoch(synthetic_root, tmp_path, align):
    torch.set_num_threads(1)
    config = tiny_config(synthetic_root, align=align, epochs=2)
    straight = TrainingSession.start(config)
    straight.run_epoch()
    expected = straight.run_epoch()

    first = TrainingSession.start(config)
    first.run_epoch()
    first.save(tmp_path / "checkpoint.pt")
    resumed = TrainingSession.start(config, tmp_path / "checkpoint.pt")
    assert resumed.epoch == 1 and not resumed.done
    second = resumed.run_epoch()
    assert second.losses == expected.losses
    assert second.metrics == expected.metrics
    assert resumed.done


def test_tiny_model_overfits_a_few_images(synthetic_root):
    """A handful of training images, enough steps: PredCls R@50 on them approaches 1."""
    torch.set_num_threads(1)
    config = tiny_config(synthetic_root, epochs=1, lr=0.05, batch_size=4, seed=1)
    session = TrainingSession.start(config)
    few = torch.utils.data.Subset(session.train_loader.dataset, range(4))
    loader = make_loader(few, config)
    optimizer = build_optimizer(session.model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, len(loader))
    for _ in range(60):
        losses = train_one_epoch(session.model, loader, optimizer, scheduler, session.device, 5.0)
    result = evaluate(
        session.model, loader, make_evaluator(config, session.statistics), session.device
    )
    assert losses["loss_rel"] < 0.2
    assert result.metrics["R_50"] > 0.95


class ScaledSquare(torch.nn.Module):
    """A one-parameter model following the train-mode contract: loss_a = (w x)^2 per batch,
    where the batch's "image" tensor holds x."""

    loss_weights = {"loss_a": 2.0}

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss_a": ((self.weight * images[0]) ** 2).sum()}


def run_square(values):
    model = ScaledSquare()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # losses stay those of the data
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    batches = [([torch.tensor([value])], []) for value in values]
    return train_one_epoch(model, batches, optimizer, scheduler, torch.device("cpu"), 5.0)


def test_epoch_means_come_from_device_sums():
    losses = run_square([1.0, 2.0, 3.0])
    assert losses["loss_a"] == pytest.approx((1 + 4 + 9) / 3, abs=1e-12)
    assert losses["loss"] == pytest.approx(2 * (1 + 4 + 9) / 3, abs=1e-12)


def test_a_non_finite_loss_names_the_steps_it_happened_in():
    from sgstudy.engine import FINITE_CHECK_STEPS

    values = [1.0] * (FINITE_CHECK_STEPS + 7)
    values[FINITE_CHECK_STEPS + 3] = float("inf")  # in the second window of checks
    with pytest.raises(
        FloatingPointError, match=rf"steps {FINITE_CHECK_STEPS}\.\.{len(values) - 1}"
    ):
        run_square(values)
    values[2] = float("nan")  # in the first window
    with pytest.raises(FloatingPointError, match=rf"steps 0\.\.{FINITE_CHECK_STEPS - 1}"):
        run_square(values)


def test_mixed_precision_is_bf16_or_fp16_on_cuda_only():
    from sgstudy.engine import autocast_dtype

    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cuda"), amp=False) is None
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert autocast_dtype(torch.device("cuda")) == expected
