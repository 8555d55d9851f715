"""What a launch will take, before it runs: ``sgstudy plan`` and the plan ``sgstudy run`` prints.

``plan_launch`` sizes a validated ``StudyPlan`` on the cluster Ray is connected to (trials,
resources, how many run at once), times one trial with a calibration run on that cluster
(``trainables.calibration``) and turns the measurement into the trial time, the wall time and
the GPU-hours of the whole launch, each with a 95% interval from the spread of the timed steps.

The arithmetic, stated once: a trial takes set-up + epochs × (steps per epoch × mean step time
+ val batches × mean val-batch time); trials run in waves of ``concurrent``, so the wall time is
waves × trial time (an upper bound with ASHA, which stops some trials early). Not included: Ray's
start-up, checkpoint and MLflow writes, and slow-down when concurrent trials share a node's CPUs,
memory bandwidth or a GPU (the calibration runs one trial alone).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from search_spaces.studies import BASELINE, DEFAULT_LAMBDA, DEFAULT_P
from trainables.calibration import DEFAULT_STEPS, WARMUP_STEPS, Calibration
from trainables.plan import StudyPlan, resolve_max_concurrent
from trainables.trial import TRIAL_KEYS


@dataclass(frozen=True)
class LaunchEstimate:
    """A launch sized on a cluster. Times in seconds; ``*_pm`` are 95% half-widths."""

    plan: StudyPlan
    cluster: dict[str, float]
    concurrent: int
    calibration: Calibration | None
    trial_s: float = math.nan
    trial_pm: float = math.nan
    price_per_gpu_hour: float | None = None
    calibration_error: str | None = None  # why there are no times, when the run failed

    @property
    def waves(self) -> int:
        return math.ceil(self.plan.num_samples / self.concurrent)

    @property
    def wall_s(self) -> tuple[float, float]:
        return self.waves * self.trial_s, self.waves * self.trial_pm

    def device_hours(self, per_worker: float) -> tuple[float, float]:
        """Hours of a resource (GPUs or CPUs per worker) that the whole launch holds."""
        held = self.plan.num_samples * per_worker * self.plan.options.workers_per_trial / 3600
        return held * self.trial_s, held * self.trial_pm


def calibration_trial(plan: StudyPlan) -> tuple[str, dict[str, Any]]:
    """The trial the calibration times and its flat run config: an aligned one (the alignment
    branch adds work), the first seed; a search study's trial at the paper's p and λ.

    The study's own search space gives the keys every trial shares (model family, protocol),
    asked once on a throwaway in-memory Optuna study, as ``trainables.plan.check_trial_configs`` does.
    """
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
    try:
        study = optuna.create_study(sampler=plan.spec.sampler(plan.seeds))
    finally:
        optuna.logging.set_verbosity(verbosity)
    constants = plan.spec.space_fn(plan.seeds)(study.ask())
    if plan.spec.grid:
        aligned = [v for v in plan.spec.grid if v != BASELINE]
        variant = aligned[0] if aligned else next(iter(plan.spec.grid))
        keys = dict(plan.spec.grid[variant])
    else:
        variant = f"p={DEFAULT_P:g}, λ={DEFAULT_LAMBDA:g}"
        keys = {"align": True, "mask_ratio": DEFAULT_P, "align_weight": DEFAULT_LAMBDA}
    flat = {**constants, **keys, **plan.param_space, "seed": plan.seeds[0]}
    return variant, {k: v for k, v in flat.items() if k not in TRIAL_KEYS}


def plan_launch(
    plan: StudyPlan,
    calibration_steps: int | None = DEFAULT_STEPS,
    price_per_gpu_hour: float | None = None,
) -> LaunchEstimate:
    """Sizes ``plan`` on the connected Ray cluster; ``calibration_steps=None`` measures nothing."""
    import ray

    from trainables.calibration import calibrate

    options = plan.options
    cluster = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    # Sized first: a trial that fits nowhere is refused before anything is timed.
    concurrent = min(resolve_max_concurrent(options, cluster), plan.num_samples)
    measured = None
    if calibration_steps is not None:
        variant, flat = calibration_trial(plan)
        cpus, gpus = options.cpus_per_trial, options.gpus_per_trial
        try:
            measured = calibrate(flat, variant, cpus, gpus, calibration_steps)
        except ray.exceptions.RayError as exc:  # e.g. the node ran out of memory
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            failed = f"{type(exc).__name__}: {first}"
            estimate = estimate_launch(plan, cluster, concurrent, None, price_per_gpu_hour)
            return dataclasses.replace(estimate, calibration_error=failed)
    return estimate_launch(plan, cluster, concurrent, measured, price_per_gpu_hour)


def estimate_launch(
    plan: StudyPlan,
    cluster: dict[str, float],
    concurrent: int,
    measured: Calibration | None,
    price_per_gpu_hour: float | None = None,
) -> LaunchEstimate:
    """The launch on ``cluster``, ``concurrent`` trials at once; times given a calibration."""
    if measured is None:
        return LaunchEstimate(
            plan, cluster, concurrent, None, price_per_gpu_hour=price_per_gpu_hour
        )
    epoch, epoch_pm = measured.epoch_estimate(plan.options.workers_per_trial)
    return LaunchEstimate(
        plan, cluster, concurrent, measured,
        trial_s=measured.setup_s + plan.epochs * epoch,
        trial_pm=plan.epochs * epoch_pm,
        price_per_gpu_hour=price_per_gpu_hour,
    )  # fmt: skip


def format_duration(seconds: float, decimals: int = 1) -> str:
    """Seconds below 2 min, minutes below 2 h, else hours; ``decimals`` for seconds, one more
    for hours (the progress lines use 0, the plan 1)."""
    if seconds < 120:
        return f"{seconds:.{decimals}f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.{decimals + 1}f} h"


def format_plan(estimate: LaunchEstimate) -> str:
    """The plan as ``sgstudy plan`` prints it, one fact per line."""
    plan, options = estimate.plan, estimate.plan.options
    grid = len(plan.spec.grid) if plan.spec.grid else plan.spec.trials_per_seed
    kind = "variants" if plan.spec.grid else "search trials"
    where = options.address or "a local Ray on this machine"
    rows = [
        ("trials", f"{plan.num_samples} = {grid} {kind} × {len(plan.seeds)} seeds"),
        ("per trial", f"{options.workers_per_trial} worker(s) × ({options.cpus_per_trial:g} CPU, "
                      f"{options.gpus_per_trial:g} GPU), {plan.epochs} epochs"),
        ("cluster", f"{estimate.cluster.get('CPU', 0):g} CPU, {estimate.cluster.get('GPU', 0):g} "
                    f"GPU ({where}): {estimate.concurrent} trials at once, {estimate.waves} waves"),
    ]  # fmt: skip
    rows += timing_rows(estimate)
    title = f"plan: study {plan.spec.name}, launch {plan.launch}, preset {options.preset}"
    return "\n".join([title] + [f"  {name:12s} {text}" for name, text in rows])


def timing_rows(estimate: LaunchEstimate) -> list[tuple[str, str]]:
    measured = estimate.calibration
    if measured is None:
        why = estimate.calibration_error
        return [("times", f"not measured: the calibration run failed ({why})" if why else
                          "not measured (no calibration run)")]  # fmt: skip
    options = estimate.plan.options
    steps = len(measured.step_s)
    step_mean = sum(measured.step_s) / steps
    val_mean = sum(measured.eval_batch_s) / max(1, len(measured.eval_batch_s))
    wall, wall_pm = estimate.wall_s
    gpu_h, gpu_pm = estimate.device_hours(options.gpus_per_trial)
    cpu_h, cpu_pm = estimate.device_hours(options.cpus_per_trial)
    rows = [
        ("calibration", f"trial '{measured.variant}' on {measured.device} of node {measured.node}: "
                        f"{WARMUP_STEPS} warm-up + {steps} timed steps, {step_mean:.3f} s/step "
                        f"(range {min(measured.step_s):.3f}-{max(measured.step_s):.3f}); "
                        f"{len(measured.eval_batch_s)} val batches, {val_mean:.3f} s/batch; "
                        f"set-up {measured.setup_s:.1f} s"),
        ("one trial", f"{format_duration(estimate.trial_s)} ± {format_duration(estimate.trial_pm)}"
                      f" ({measured.steps_per_epoch} steps + {measured.eval_batches_per_epoch} val "
                      f"batches per epoch)"),
        ("wall time", f"{format_duration(wall)} ± {format_duration(wall_pm)} "
                      f"({estimate.waves} waves; ± is the 95% interval of the mean step time)"),
        ("GPU-hours", f"{gpu_h:.3f} ± {gpu_pm:.3f}" + ("" if options.gpus_per_trial
                      else " (trials use no GPU)") + f"; CPU-hours {cpu_h:.3f} ± {cpu_pm:.3f}"),
    ]  # fmt: skip
    if estimate.price_per_gpu_hour is not None:
        price = estimate.price_per_gpu_hour
        rows.append(
            ("cost", f"${gpu_h * price:.2f} ± ${gpu_pm * price:.2f} at ${price:g} per GPU-hour")
        )
    return rows
