"""The line a running study prints per finished trial (``trainables.progress``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import SimpleNamespace

from trainables.progress import TrialProgress, progress_line

NOW = datetime(2026, 1, 1, 21, 40, tzinfo=UTC)


def test_line_names_the_trial_its_recalls_its_time_and_the_launch_eta():
    metrics = {"mR_50": 0.313, "mR_100": 0.314, "R_50": 0.5}
    line = progress_line(3, 12, "p=0.1 seed 0", metrics, 126.0, 312.0, NOW)
    assert line == (
        "trial 3/12 p=0.1 seed 0: mR@50 31.3, mR@100 31.4 in 2.1 min; "
        "launch ETA 5.2 min (21:45 UTC)"
    )
    assert progress_line(12, 12, "baseline seed 1", metrics, 40.0, 0.0, NOW).endswith(
        "in 40 s; launch done"
    )
    failed = progress_line(4, 12, "p=0.2 seed 0", {}, None, None, NOW, failed=True)
    assert failed == "trial 4/12 p=0.2 seed 0: FAILED; launch ETA unknown"
    referring = {"mean_iou": 0.235, "subject_iou": 0.215, "object_iou": 0.256}
    line = progress_line(2, 10, "no-dsg seed 1", referring, 9.0, 60.0, NOW, task="referring")
    assert line.startswith(
        "trial 2/10 no-dsg seed 1: mean IoU 23.5, subject IoU 21.5, object IoU 25.6 in 9 s"
    )


def test_callback_counts_finished_trials_and_extrapolates_the_rest(capsys):
    """Two of four trials done (one finishing now): the ETA covers the two left at the rate of
    the trials this session finished."""
    progress = TrialProgress(total=4)
    progress.setup()
    finishing = SimpleNamespace(
        status="RUNNING", config={"variant": "p=0.05", "seed": 1},
        last_result={"mR_50": 0.2, "mR_100": 0.25, "time_total_s": 30.0},
    )  # fmt: skip
    others = [SimpleNamespace(status=s, config={}, last_result={}) for s in
              ("TERMINATED", "RUNNING", "PENDING")]  # fmt: skip
    progress.finished_here = 1  # one trial of this session finished before
    progress.on_trial_complete(0, [*others, finishing], finishing)
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(
        r"trial 2/4 p=0\.05 seed 1: mR@50 20\.0, mR@100 25\.0 in 30 s; "
        r"launch ETA [0-9.]+ (s|min|h) \(\d\d:\d\d UTC\)",
        line,
    ), line
