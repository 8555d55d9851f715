"""``SaveOnTrialStart``: Tune saves a launch's state the moment it starts a trial.

Tune saves its state (trials, searcher) every ``TUNE_GLOBAL_CHECKPOINT_S`` (1 s, set in
``trainables.study``). A trial in a worker reused from an earlier trial opens its MLflow run
a fraction of a second after Tune starts it, so a driver killed in between left a run and an
Optuna trial that ``--resume`` did not know: the resumed launch started that grid point again
under a new trial id, and the first run stayed behind, KILLED. Saving before the trial runs
closes that window; each save costs milliseconds.

Its own module because it subclasses Ray Tune's ``Callback`` at import time.
"""

from __future__ import annotations

import inspect
from typing import Any

from ray.tune import Callback
from ray.tune.execution.tune_controller import TuneController


class SaveOnTrialStart(Callback):
    """Forces Tune's state save when a trial starts, before its training function runs."""

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        controller = calling_controller()
        if controller is not None:
            controller.checkpoint(force=True)


def calling_controller() -> TuneController | None:
    """The Tune controller whose method is calling this one, found on the stack: Tune (2.x)
    hands callbacks no handle on it. It calls ``on_trial_start`` from ``_actor_started``,
    before it schedules the trial's training call."""
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, TuneController):
            return candidate
        frame = frame.f_back
    return None
