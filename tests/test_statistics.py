"""Statistics in the tables: Welch's interval and test against scipy, the overlap bold rule,
the significance mark and the n = 1 legend. Pure pandas frames, no MLflow."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reports import tables
from reports.statistics import mean_interval, welch_difference

BASELINE = [0.220, 0.231, 0.214, 0.226]
BETTER = [0.251, 0.262, 0.247, 0.258]  # clearly above the baseline
CLOSE = [0.224, 0.236, 0.219, 0.231]  # inside the noise
UNEQUAL = [0.18, 0.30, 0.21, 0.27, 0.24]  # other n, other variance: Welch differs from Student


@pytest.mark.parametrize("a", [BETTER, CLOSE, UNEQUAL])
def test_welch_difference_matches_scipy(a):
    diff = welch_difference(a, BASELINE)
    test = stats.ttest_ind(a, BASELINE, equal_var=False)
    low, high = test.confidence_interval(0.95)
    assert diff.estimate == pytest.approx(np.mean(a) - np.mean(BASELINE))
    assert diff.p_value == pytest.approx(test.pvalue, rel=1e-9)
    assert diff.dof == pytest.approx(test.df, rel=1e-9)
    assert (diff.low, diff.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert diff.excludes_zero() == (test.pvalue < 0.05)


def test_mean_interval_matches_scipy_t_interval():
    interval = mean_interval(BASELINE)
    low, high = stats.t.interval(
        0.95, len(BASELINE) - 1, loc=np.mean(BASELINE), scale=stats.sem(BASELINE)
    )
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))


def test_fewer_than_two_runs_give_no_interval():
    assert mean_interval([0.2]) is None
    assert welch_difference([0.2], BASELINE) is None
    assert welch_difference(BETTER, [0.2, math.nan]) is None


def runs_frame(methods: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for method, values in methods.items():
        align = method != "Motifs"
        for seed, value in enumerate(values):
            rows.append(
                {
                    "method": method, "method_tex": method, "family": "Motifs",
                    "protocol": "predcls", "align": align, "p": 0.1 if align else math.nan,
                    "lambda": 10.0 if align else math.nan, "seed": seed, "mR_50": value,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_table_marks_significant_differences_and_bolds_overlapping_intervals():
    methods = {
        "Motifs": BASELINE,
        "Align-Motifs (p = 0.1)": BETTER,
        "Align-Motifs (p = 0.2)": CLOSE,
    }
    summary = tables.summarize(runs_frame(methods), list(methods), ["mR_50"])
    lines = tables.markdown_table(summary, ["mR_50"]).splitlines()
    assert lines[0] == "| Method | mR@50 | Δ mR@50 [95%] | n |"
    better = welch_difference(BETTER, BASELINE)
    close = welch_difference(CLOSE, BASELINE)
    assert better.excludes_zero() and not close.excludes_zero()

    def cell(d):
        return f"{100 * d.estimate:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]".replace(
            "-", "−"
        )

    assert lines[2] == "| Motifs | 22.3 ± 0.7 | – | 4 |"
    assert lines[3] == f"| Align-Motifs (p = 0.1) | **25.4** ± 0.7 | {cell(better)}* | 4 |"
    # CLOSE's interval does not reach BETTER's: not bold, and its difference is not marked.
    assert lines[4] == f"| Align-Motifs (p = 0.2) | 22.7 ± 0.8 | {cell(close)} | 4 |"
    assert "overlaps the best's" in lines[-1]
    assert summary.loc[1, "mR_50_p"] == pytest.approx(
        stats.ttest_ind(BETTER, BASELINE, equal_var=False).pvalue
    )


def test_every_method_whose_interval_overlaps_the_best_is_bold():
    methods = {"Motifs": BASELINE, "Align-Motifs (p = 0.2)": CLOSE}
    summary = tables.summarize(runs_frame(methods), list(methods), ["mR_50"])
    lines = tables.markdown_table(summary, ["mR_50"]).splitlines()
    assert lines[2].startswith("| Motifs | **22.3**") and lines[3].count("**") == 2


def test_single_runs_say_no_significance_can_be_given():
    methods = {"Motifs": [0.22], "Align-Motifs (p = 0.1)": [0.24]}
    summary = tables.summarize(runs_frame(methods), list(methods), ["mR_50"])
    text = tables.markdown_table(summary, ["mR_50"])
    assert "Δ" not in text and "no significance can be given" in text
    assert "| Align-Motifs (p = 0.1) | **24.0** |" in text
