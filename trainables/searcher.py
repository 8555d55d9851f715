"""The study's Tune searcher: Ray's ``OptunaSearch``, safe to resume after a killed driver.

Its own module because it imports Ray Tune at the top (a pickled searcher must find its
class by name when ``--resume`` restores it), which ``trainables.study`` does not.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# User attributes of an Optuna trial: the Tune trial it stands for, and for the COMPLETE
# record of a trial that failed in an earlier driver and finished on --resume, the number of
# the FAIL record it completes (Optuna never changes a finished trial's state).
TUNE_TRIAL_ATTR = "tune_trial_id"
RETRY_OF_ATTR = "completes_failed_trial"


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that ignores results of trials Optuna has already finished.

    The Optuna study lives in an RDB storage, updated as each trial completes, while Tune
    restores trials from its last saved experiment state. A driver killed between a trial's
    completion and that save resumes the trial, which hands Tune its last result again;
    Optuna refuses to update a finished trial, and ``OptunaSearch`` would let that error end
    the whole resumed launch.

    Each Optuna trial records the Tune trial it stands for (``TUNE_TRIAL_ATTR``), which is
    how ``trainables.run_states.reconcile_optuna`` finds a trial that failed in one driver
    and finished on ``--resume`` (Tune's concurrency limiter no longer passes that result on).
    """

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._finished_in_optuna(trial_id) is not None:
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if self._finished_in_optuna(trial_id) is None:
            super().on_trial_complete(trial_id, result, error)
            return
        self._completed_trials.add(trial_id)  # what the parent does after telling Optuna

    def _finished_in_optuna(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        """Optuna's record of the Tune trial if Optuna holds it as finished, else ``None``."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or self._ot_study is None:
            return None
        finished = self._ot_study.get_trials(deepcopy=False, states=FINISHED_STATES)
        return next((trial for trial in finished if trial.number == ot_trial.number), None)
