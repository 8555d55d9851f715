"""The studies' search spaces: every grid point once per seed, constants that are run configs."""

import subprocess
import sys

import optuna
import pytest

from search_spaces import STUDIES, describe_studies, get_study
from search_spaces.studies import BASELINE, PAPER_LAMBDA_VALUES, PAPER_P_VALUES
from sgstudy.config import RunConfig
from sgstudy.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample_all(spec, seeds, count=None):
    """Asks a real in-memory Optuna study for ``count`` trials (default: the study's size)."""
    study = optuna.create_study(sampler=spec.sampler(seeds), direction="maximize")
    space = spec.space_fn(seeds)
    configs = []
    for _ in range(count or spec.num_samples(seeds)):
        trial = study.ask()
        constants = space(trial)
        configs.append({**trial.params, **constants})
        try:
            study.tell(trial, 0.0)
        except RuntimeError:
            pass  # GridSampler calls study.stop() after the last point, meant for optimize()
    return configs


@pytest.mark.parametrize("name", ["align-motifs-p", "align-motifs-lambda"])
def test_four_seeds_cover_the_grid_exactly_once(name):
    spec = get_study(name)
    seeds = (0, 1, 2, 3)
    assert spec.num_samples(seeds) == 24
    configs = sample_all(spec, seeds)
    points = [(c["variant"], c["seed"]) for c in configs]
    assert len(points) == 24 and len(set(points)) == 24
    assert {v for v, _ in points} == set(spec.grid) and {s for _, s in points} == set(seeds)


def test_p_grid_constants_are_the_papers_settings():
    configs = {c["variant"]: c for c in sample_all(get_study("align-motifs-p"), (0,))}
    assert set(configs) == {BASELINE} | {f"p={p:g}" for p in PAPER_P_VALUES}
    assert configs[BASELINE]["align"] is False
    for p in PAPER_P_VALUES:
        config = configs[f"p={p:g}"]
        assert config["align"] is True
        assert config["mask_ratio"] == p and config["align_weight"] == 10.0
        assert config["model"] == "motifs" and config["protocol"] == "predcls"


def test_lambda_grid_holds_p_at_its_default():
    configs = {c["variant"]: c for c in sample_all(get_study("align-motifs-lambda"), (5,))}
    assert {c["seed"] for c in configs.values()} == {5}
    for weight in PAPER_LAMBDA_VALUES:
        config = configs[f"λ={weight:g}"]
        assert config["align_weight"] == weight and config["mask_ratio"] == 0.1


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_sampled_config_is_a_valid_run_config(name):
    for config in sample_all(STUDIES[name], (0, 1), count=6):
        flat = {k: v for k, v in config.items() if k != "variant"}
        run = RunConfig.from_flat(flat)
        assert run.model.name == STUDIES[name].model_keys["model"] and run.seed in (0, 1)


def test_tpe_stays_in_its_bounds_and_takes_seeds_in_turn():
    spec = get_study("align-motifs-tpe")
    configs = sample_all(spec, (0, 1), count=8)
    assert [c["seed"] for c in configs] == [0, 1] * 4
    for config in configs:
        assert 0.0 <= config["mask_ratio"] <= 0.6
        assert 0.1 <= config["align_weight"] <= 100.0
    assert spec.num_samples((0, 1)) == 2 * spec.trials_per_seed
    assert spec.early_stopping_allowed and not get_study("align-motifs-p").early_stopping_allowed


def test_values_replace_the_swept_grid():
    spec = get_study("align-motifs-lambda").with_values([1, 20])
    assert list(spec.grid) == [BASELINE, "λ=1", "λ=20"]
    assert spec.grid["λ=20"] == {"align": True, "mask_ratio": 0.1, "align_weight": 20.0}
    assert spec.num_samples((0, 1)) == 6


@pytest.mark.parametrize(
    ("name", "values", "needle"),
    [
        ("align-motifs-p", [0.1, 1.0], "mask_ratio (p) grid value 1.0 is outside [0, 1)"),
        ("align-motifs-p", [-0.2], "mask_ratio (p) grid value -0.2"),
        ("align-motifs-lambda", [-1], "align_weight (λ) grid value -1.0"),
        ("align-motifs-lambda", [float("inf")], "align_weight (λ) grid value inf"),
        ("align-motifs-lambda", [1, 1], "repeats a value"),
        ("align-motifs-tpe", [0.1], "sweeps no grid"),
    ],
)
def test_bad_grid_values_are_config_errors(name, values, needle):
    with pytest.raises(ConfigError) as info:
        get_study(name).with_values(values)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("seeds", "needle"),
    [((), "at least one"), ((1, 1), "repeat"), ((-1,), ">= 0"), (("a",), ">= 0")],
)
def test_bad_seeds_are_config_errors(seeds, needle):
    with pytest.raises(ConfigError, match=needle):
        get_study("align-motifs-p").num_samples(seeds)


def test_unknown_study_names_the_choices():
    with pytest.raises(ConfigError, match="unknown study 'align-dsg'.*align-motifs-p"):
        get_study("align-dsg")


def test_align_sgtr_grid_is_sgtr_against_align_sgtr_in_sgdet():
    spec = get_study("align-sgtr")
    configs = {c["variant"]: c for c in sample_all(spec, (0, 1))}
    assert len(configs) == 2 and spec.num_samples((0, 1, 2, 3)) == 8
    assert configs[BASELINE]["align"] is False
    aligned = configs["p=0.1, λ=10"]
    assert aligned["align"] is True and aligned["mask_ratio"] == 0.1
    assert aligned["align_weight"] == 10.0
    assert {c["model"] for c in configs.values()} == {"sgtr"}
    assert {c["protocol"] for c in configs.values()} == {"sgdet"}
    assert spec.needs_detector and not get_study("align-motifs-p").needs_detector
    assert [spec.label(v) for v in spec.grid] == ["SGTR", "Align-SGTR (p=0.1, λ=10)"]


def test_describe_lists_every_study_and_its_variants():
    text = describe_studies()
    for name in STUDIES:
        assert name in text
    assert "p=0.05" in text and "λ=100" in text


def test_search_spaces_never_import_torch():
    code = (
        "import sys, search_spaces; search_spaces.describe_studies(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", list(STUDIES))
def test_space_and_sampler_survive_pickle(name):
    """Tune saves the searcher (space and sampler included) with the standard pickle."""
    import pickle

    spec = STUDIES[name]
    space = pickle.loads(pickle.dumps(spec.space_fn((0, 1))))
    sampler = pickle.loads(pickle.dumps(spec.sampler((0, 1))))
    study = optuna.create_study(sampler=sampler, direction="maximize")
    trial = study.ask()
    assert space(trial)["model"] == spec.model_keys["model"]
