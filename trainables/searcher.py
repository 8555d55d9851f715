"""The study's Tune searcher: Ray's ``OptunaSearch``, safe to resume after a killed driver.

Its own module because it imports Ray Tune at the top (a pickled searcher must find its
class by name when ``--resume`` restores it), which ``trainables.study`` does not.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that ignores results of trials Optuna has already finished.

    The Optuna study lives in an RDB storage, updated as each trial completes, while Tune
    restores trials from its last saved experiment state. A driver killed between a trial's
    completion and that save resumes the trial, which hands Tune its last result again;
    Optuna refuses to update a finished trial, and ``OptunaSearch`` would let that error end
    the whole resumed launch.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._finished_in_optuna(trial_id):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if self._finished_in_optuna(trial_id):
            self._completed_trials.add(trial_id)  # what the parent does after telling Optuna
            return
        super().on_trial_complete(trial_id, result, error)

    def _finished_in_optuna(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or self._ot_study is None:
            return False
        finished = self._ot_study.get_trials(deepcopy=False, states=FINISHED_STATES)
        return any(trial.number == ot_trial.number for trial in finished)
