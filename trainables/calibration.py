"""A calibration run: a few real training steps and val batches of one trial, timed on the
cluster's own hardware, so that a launch's plan states measured times, never guesses.

``calibrate`` runs ``measure_trial`` as a Ray task holding one trial worker's resources (its
CPUs and GPUs), so it lands on the kind of node the trials will use. The task builds the trial's
training session exactly as a trial does (data, model, optimizer on the trial's device), then
times ``warmup + steps`` optimizer steps and up to ``eval_batches`` val batches one at a time;
the warm-up steps (allocator, cuDNN autotuning, first data reads) are not counted. Each timed
val batch also summarises its metrics, which a real epoch does once, so val times err high.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any

WARMUP_STEPS = 2
DEFAULT_STEPS = 8
EVAL_BATCHES = 4


@dataclass(frozen=True)
class Calibration:
    """Times of one trial on one worker, in seconds.

    setup_s:       building the session (dataset, statistics, model) once
    step_s:        the timed training steps, one entry per step (warm-up excluded)
    eval_batch_s:  the timed val batches, one entry per batch
    steps_per_epoch, eval_batches_per_epoch: of the trial's full epoch on this dataset
    device:        where it trained (``cpu``, ``cuda:0``)
    variant:       which trial of the study was timed
    """

    setup_s: float
    step_s: tuple[float, ...]
    eval_batch_s: tuple[float, ...]
    steps_per_epoch: int
    eval_batches_per_epoch: int
    device: str
    node: str
    variant: str

    def epoch_estimate(self, workers: int = 1) -> tuple[float, float]:
        """``(mean, half-width)`` of one epoch's time: the 95% interval of the mean step and
        batch times, scaled to a full epoch (a data-parallel trial splits the steps)."""
        steps = math.ceil(self.steps_per_epoch / workers)
        train, train_se = scaled_mean(self.step_s, steps)
        val, val_se = scaled_mean(self.eval_batch_s, self.eval_batches_per_epoch)
        return train + val, 1.96 * math.hypot(train_se, val_se)


def scaled_mean(samples: tuple[float, ...], count: int) -> tuple[float, float]:
    """``count`` times the sample mean, and ``count`` times its standard error."""
    if not samples:
        return 0.0, 0.0
    mean = statistics.fmean(samples)
    se = statistics.stdev(samples) / math.sqrt(len(samples)) if len(samples) > 1 else mean
    return count * mean, count * se


def measure_trial(
    flat_config: dict[str, Any],
    variant: str,
    steps: int,
    eval_batches: int,
    device: Any = None,
    node: str = "this machine",
) -> Calibration:
    """Builds the trial's session (on ``device``, default the config's) and times its steps."""
    from sgstudy.config import RunConfig
    from sgstudy.engine import evaluate, train_one_epoch
    from sgstudy.training import TrainingSession, make_evaluator

    started = time.perf_counter()
    config = RunConfig.from_flat(flat_config)
    session = TrainingSession.start(config, device=device)
    setup_s = time.perf_counter() - started
    batches = iter(session.train_loader)
    step_times = []
    for step in range(WARMUP_STEPS + steps):
        tick = time.perf_counter()  # loading the batch is part of a step
        batch = next(batches, None)
        if batch is None:  # a dataset smaller than the calibration: start another pass
            batches = iter(session.train_loader)
            batch = next(batches)
        train_one_epoch(
            session.model, [batch], session.optimizer, session.scheduler, session.device,
            config.optim.max_grad_norm, session.scaler,
        )  # fmt: skip
        if step >= WARMUP_STEPS:
            step_times.append(time.perf_counter() - tick)
    eval_times = []
    evaluator = make_evaluator(config, session.statistics)
    for batch in islice(session.val_loader, eval_batches):
        tick = time.perf_counter()
        evaluate(session.model, [batch], evaluator, session.device)
        eval_times.append(time.perf_counter() - tick)
    return Calibration(
        setup_s=setup_s,
        step_s=tuple(step_times),
        eval_batch_s=tuple(eval_times),
        steps_per_epoch=len(session.train_loader),
        eval_batches_per_epoch=len(session.val_loader),
        device=str(session.device),
        node=node,
        variant=variant,
    )


def measure_on_worker(
    flat_config: dict[str, Any], variant: str, steps: int, eval_batches: int
) -> Calibration:
    """``measure_trial`` inside a Ray task, on the GPU Ray gave the task, if any."""
    import ray

    device = None
    if ray.get_gpu_ids():
        import torch

        device = torch.device("cuda", 0)  # Ray shows the task only its own GPU
    node = ray.util.get_node_ip_address()
    return measure_trial(flat_config, variant, steps, eval_batches, device, node)


def calibrate(
    flat_config: dict[str, Any],
    variant: str,
    cpus: float,
    gpus: float,
    steps: int = DEFAULT_STEPS,
    eval_batches: int = EVAL_BATCHES,
) -> Calibration:
    """Runs ``measure_trial`` as a Ray task with one trial worker's resources; Ray must be up."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(measure_on_worker)
    return ray.get(task.remote(flat_config, variant, steps, eval_batches))
