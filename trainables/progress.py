"""One line per finished trial while a study runs: what it was, how it scored, how long it took,
and when the whole launch should end.

``TrialProgress`` is a Ray Tune callback living in the driver. The launch's ETA comes from the
trials finished so far in this session: remaining trials / (trials finished / time since the
session started), so it already includes how many run at once and any queueing. Ray's own status
table is off by default (``sgstudy run --ray-table`` brings it back).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ray.tune import Callback

from sgstudy.metric_names import MEAN_IOU, OBJECT_IOU, SUBJECT_IOU, display_name
from sgstudy.tasks import REFERRING, SCENE_GRAPH
from sgstudy.tracking_ui import trial_run_name
from trainables.launch_estimate import format_duration

# What a line shows, per task: the study's selection metric first.
LINE_METRICS = {
    SCENE_GRAPH: ("mR_50", "mR_100"),
    REFERRING: (MEAN_IOU, SUBJECT_IOU, OBJECT_IOU),
}
DONE_STATES = ("TERMINATED", "ERROR")


def progress_line(
    done: int, total: int, name: str, metrics: dict[str, float], seconds: float | None,
    eta_s: float | None, now: datetime, failed: bool = False, task: str = SCENE_GRAPH,
) -> str:  # fmt: skip
    """``trial 3/12 p=0.1 seed 0: mR@50 31.3, mR@100 31.4 in 2.1 min; launch ETA 5.2 min (21:45 UTC)``."""
    scores = ", ".join(
        f"{display_name(key)} {100 * metrics[key]:.1f}"
        for key in LINE_METRICS[task]
        if key in metrics
    )
    outcome = "FAILED" if failed else (scores or "no metrics")
    took = f" in {format_duration(seconds, 0)}" if seconds is not None else ""
    if done >= total:
        eta = "launch done"
    elif eta_s is None:
        eta = "launch ETA unknown"
    else:
        end = (now + timedelta(seconds=eta_s)).strftime("%H:%M %Z").strip()
        eta = f"launch ETA {format_duration(eta_s, 0)} ({end})"
    return f"trial {done}/{total} {name}: {outcome}{took}; {eta}"


class TrialProgress(Callback):
    """Prints ``progress_line`` for every trial that completes or fails for good."""

    def __init__(self, total: int, task: str = SCENE_GRAPH) -> None:
        self.total = total
        self.task = task
        self.started = time.monotonic()
        self.finished_here = 0

    def setup(self, **info: Any) -> None:
        # Also on --resume: the rate counts only the trials this session finished.
        self.started = time.monotonic()
        self.finished_here = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.report(trials, trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.report(trials, trial, failed=True)

    def report(self, trials: list, trial: Any, failed: bool) -> None:
        self.finished_here += 1
        # The others that are done, and this one (whose status may not say so yet).
        others = sum(t.status in DONE_STATES for t in trials if t is not trial)
        done = min(self.total, others + 1)
        elapsed = time.monotonic() - self.started
        rate = self.finished_here / elapsed if elapsed > 0 else math.inf
        eta_s = (self.total - done) / rate if rate > 0 else None
        config, result = trial.config or {}, trial.last_result or {}
        name = trial_run_name(str(config.get("variant", "?")), config.get("seed", "?"))
        line = progress_line(
            done, self.total, name, result, result.get("time_total_s"), eta_s,
            datetime.now(UTC), failed, self.task,
        )  # fmt: skip
        print(line, flush=True)
