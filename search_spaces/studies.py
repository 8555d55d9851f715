"""The studies of the Align paper's supplement as Optuna define-by-run search spaces.

A grid study (Tables 1-2 of the supplement) is a categorical ``variant`` crossed with a
categorical ``seed``, sampled by ``optuna.samplers.GridSampler`` so that every (variant, seed)
runs exactly once; the space function returns the variant's flat run-config keys (``align``,
``mask_ratio``, ``align_weight``, ``model``, ``protocol``) as Optuna's define-by-run constants.
A search study (``align-motifs-tpe``) lets TPE choose p and λ.

The keys returned are those of ``sgstudy.config.RunConfig.from_flat``, so a trial's config
becomes a run config without translation. This module knows Optuna and nothing of torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from sgstudy.errors import ConfigError
from sgstudy.tasks import REFERRING, SCENE_GRAPH, dsg_label

# A define-by-run space: takes an Optuna trial, suggests, returns the constant keys.
SpaceFn = Callable[[optuna.trial.Trial], dict[str, Any]]

BASELINE = "baseline"
PAPER_P_VALUES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.6)
PAPER_LAMBDA_VALUES: tuple[float, ...] = (0.1, 1.0, 10.0, 50.0, 100.0)
# The paper's defaults, held fixed while the other one is swept (supplement §1.1, §1.2).
DEFAULT_P = 0.1
DEFAULT_LAMBDA = 10.0
# TPE bounds: p up to the largest ratio the paper tried, λ over the paper's range on a log scale.
TPE_P_RANGE = (0.0, 0.6)
TPE_LAMBDA_RANGE = (0.1, 100.0)
TPE_TRIALS_PER_SEED = 12

MODEL_KEYS = {"model": "motifs", "protocol": "predcls"}
SGTR_KEYS = {"model": "sgtr", "protocol": "sgdet"}
FAMILY_LABELS = {"motifs": "Motifs", "sgtr": "SGTR"}


@dataclass(frozen=True)
class StudySpec:
    """One study: what it sweeps and how its trials are sampled.

    name:        the study's name (also the MLflow experiment)
    description: one line for ``sgstudy studies``
    grid:        variant name -> the flat config keys it fixes (``None`` for a search study)
    swept:       the flat key the grid varies (``mask_ratio`` or ``align_weight``), if any
    trials_per_seed: for a search study, how many trials each seed gets
    task:        the ``sgstudy.tasks`` task: which metric the study optimises and reports
    model_keys:  the flat keys every trial shares (model family, protocol)
    labels:      variant -> how it reads in a results table; ``None`` for the Align labels
    """

    name: str
    description: str
    grid: Mapping[str, Mapping[str, Any]] | None
    swept: str | None = None
    trials_per_seed: int = 0
    task: str = SCENE_GRAPH
    model_keys: Mapping[str, Any] = field(default_factory=lambda: dict(MODEL_KEYS))
    labels: Mapping[str, str] | None = None

    @property
    def needs_detector(self) -> bool:
        """SGDet trials detect their own boxes: the launch must name a trained detector."""
        return self.model_keys.get("protocol") == "sgdet"

    @property
    def is_grid(self) -> bool:
        return self.grid is not None

    @property
    def early_stopping_allowed(self) -> bool:
        # Stopping grid trials early would leave holes in the paper's table.
        return not self.is_grid

    def with_values(self, values: Sequence[float] | None) -> StudySpec:
        """The same study with the swept hyperparameter taking ``values`` instead of the paper's."""
        if values is None:
            return self
        if self.swept is None:
            raise ConfigError(f"study {self.name!r} sweeps no grid; --values does not apply to it")
        values = tuple(float(v) for v in values)
        if not values:
            raise ConfigError(f"--values for {self.name!r} is empty")
        if len(set(values)) != len(values):
            raise ConfigError(f"--values for {self.name!r} repeats a value: {values}")
        fixed = DEFAULT_LAMBDA if self.swept == "mask_ratio" else DEFAULT_P
        return _grid_spec(self.name, self.description, self.swept, values, fixed)

    def space_fn(self, seeds: Sequence[int]) -> SpaceFn:
        seeds = check_seeds(seeds)
        if self.grid is not None:
            return GridSpace(dict(self.grid), seeds, dict(self.model_keys))
        return TpeSpace(seeds)

    def sampler(self, seeds: Sequence[int], seed: int = 0) -> optuna.samplers.BaseSampler:
        """A fresh sampler. ``seed`` only orders the grid (every point runs once either way)."""
        seeds = check_seeds(seeds)
        if self.grid is not None:
            return optuna.samplers.GridSampler(grid_search_space(self.grid, seeds), seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, self.trials_per_seed))

    def num_samples(self, seeds: Sequence[int]) -> int:
        seeds = check_seeds(seeds)
        if self.grid is not None:
            return len(self.grid) * len(seeds)
        return self.trials_per_seed * len(seeds)

    def label(self, variant: str) -> str:
        """How a variant reads in a results table: ``Align-Motifs (p=0.05)``."""
        if self.labels is not None:
            return self.labels.get(variant, variant)
        family = FAMILY_LABELS.get(self.model_keys["model"], self.model_keys["model"])
        return family if variant == BASELINE else f"Align-{family} ({variant})"


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if not seeds:
        raise ConfigError("seeds must name at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seeds must be integers >= 0, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds repeat a value: {seeds}")
    return seeds


def check_mask_ratio(p: float) -> float:
    if not (isinstance(p, int | float) and 0.0 <= p < 1.0):
        raise ConfigError(f"mask_ratio (p) grid value {p!r} is outside [0, 1)")
    return float(p)


def check_align_weight(weight: float) -> float:
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0.0):
        raise ConfigError(f"align_weight (λ) grid value {weight!r} must be a finite number >= 0")
    return float(weight)


def variant_name(swept: str, value: float) -> str:
    """``variant_name("mask_ratio", 0.05) == "p=0.05"``; λ values print without a trailing .0."""
    symbol = "p" if swept == "mask_ratio" else "λ"
    return f"{symbol}={value:g}"


def grid_search_space(
    grid: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]
) -> dict[str, list[Any]]:
    """The ``GridSampler`` search space: every variant crossed with every seed."""
    return {"variant": list(grid), "seed": list(seeds)}


def _grid_spec(
    name: str, description: str, swept: str, values: Sequence[float], fixed: float
) -> StudySpec:
    check = check_mask_ratio if swept == "mask_ratio" else check_align_weight
    grid: dict[str, dict[str, Any]] = {
        BASELINE: {"align": False, "mask_ratio": DEFAULT_P, "align_weight": DEFAULT_LAMBDA}
    }
    for value in values:
        value = check(value)
        p, weight = (value, fixed) if swept == "mask_ratio" else (fixed, value)
        grid[variant_name(swept, value)] = {"align": True, "mask_ratio": p, "align_weight": weight}
    return StudySpec(name, description, grid, swept=swept)


@dataclass(frozen=True)
class GridSpace:
    """Define-by-run space of a grid study: picks (variant, seed), returns the variant's keys.

    A class rather than a closure: Tune saves the searcher, space included, with pickle.
    """

    grid: Mapping[str, Mapping[str, Any]]
    seeds: tuple[int, ...]
    model_keys: Mapping[str, Any] = field(default_factory=lambda: dict(MODEL_KEYS))

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        variant = trial.suggest_categorical("variant", list(self.grid))
        trial.suggest_categorical("seed", list(self.seeds))
        return {**self.grid[variant], **self.model_keys}


@dataclass(frozen=True)
class TpeSpace:
    """Define-by-run space of the TPE study: p and log-λ searched, seeds taking turns."""

    seeds: tuple[int, ...]

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        p = trial.suggest_float("mask_ratio", *TPE_P_RANGE)
        weight = trial.suggest_float("align_weight", *TPE_LAMBDA_RANGE, log=True)
        # Seeds take turns instead of being a searched parameter: TPE must not model seed luck.
        seed = self.seeds[trial.number % len(self.seeds)]
        variant = f"p={p:.3g}, λ={weight:.3g}"
        return {"align": True, "seed": seed, "variant": variant, **MODEL_KEYS}


# DSG (Raboh et al., WACV 2020) for referring relationships: the full model, its two ablations
# (supplement §2) and the GPI aggregation variants of the DSG generator.
DSG_MODEL_KEYS = {"model": "dsg"}
DSG_GRID: dict[str, dict[str, Any]] = {
    "dsg": {"dsg_variant": "dsg", "gpi_aggregation": "feature-attention"},
    "gpi=scalar-attention": {"dsg_variant": "dsg", "gpi_aggregation": "scalar-attention"},
    "gpi=sum": {"dsg_variant": "dsg", "gpi_aggregation": "sum"},
    "no-dsg": {"dsg_variant": "no-dsg", "gpi_aggregation": "feature-attention"},
    "two-step": {"dsg_variant": "two-step", "gpi_aggregation": "feature-attention"},
}
DSG_LABELS = {
    variant: dsg_label(keys["dsg_variant"], keys["gpi_aggregation"])
    for variant, keys in DSG_GRID.items()
}

STUDIES: dict[str, StudySpec] = {
    "align-motifs-p": _grid_spec(
        "align-motifs-p",
        "Motifs vs Align-Motifs over the masking ratio p (λ = 10), PredCls (supplement Table 1)",
        "mask_ratio",
        PAPER_P_VALUES,
        DEFAULT_LAMBDA,
    ),
    "align-motifs-lambda": _grid_spec(
        "align-motifs-lambda",
        "Motifs vs Align-Motifs over the loss weight λ (p = 0.1), PredCls (supplement Table 2)",
        "align_weight",
        PAPER_LAMBDA_VALUES,
        DEFAULT_P,
    ),
    "align-motifs-tpe": StudySpec(
        "align-motifs-tpe",
        f"TPE search of Align-Motifs over p in {list(TPE_P_RANGE)} and log-λ in "
        f"{list(TPE_LAMBDA_RANGE)}, PredCls; ASHA early stopping allowed",
        grid=None,
        trials_per_seed=TPE_TRIALS_PER_SEED,
    ),
    "align-sgtr": StudySpec(
        "align-sgtr",
        f"SGTR vs Align-SGTR (p = {DEFAULT_P:g}, λ = {DEFAULT_LAMBDA:g}), SGDet on a frozen DETR "
        "(--detector); the supplement's Figure 2",
        grid={
            BASELINE: {"align": False, "mask_ratio": DEFAULT_P, "align_weight": DEFAULT_LAMBDA},
            variant_name("mask_ratio", DEFAULT_P)
            + ", "
            + variant_name("align_weight", DEFAULT_LAMBDA): {
                "align": True,
                "mask_ratio": DEFAULT_P,
                "align_weight": DEFAULT_LAMBDA,
            },
        },  # fmt: skip
        model_keys=SGTR_KEYS,
    ),
    "dsg-ablation": StudySpec(
        "dsg-ablation",
        "DSG vs no-DSG and Two-step, and the GPI aggregations (feature attention, scalar "
        "attention, sum), referring relationships (DSG supplement §1-2)",
        DSG_GRID,
        task=REFERRING,
        model_keys=DSG_MODEL_KEYS,
        labels=DSG_LABELS,
    ),
}


def get_study(name: str) -> StudySpec:
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    return STUDIES[name]


def describe_studies() -> str:
    """The table ``sgstudy studies`` prints: name, trials per seed, what the study sweeps."""
    lines = []
    for spec in STUDIES.values():
        per_seed = spec.num_samples((0,))
        kind = "grid" if spec.is_grid else "search"
        lines.append(f"{spec.name:22s} {kind:6s} {per_seed:3d} trials/seed  {spec.description}")
        if spec.grid is not None:
            lines.append(f"{'':22s} variants: {', '.join(spec.grid)}")
    return "\n".join(lines)
