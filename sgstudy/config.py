"""Typed, frozen run configuration, translated once at the edge (CLI or Tune).

``RunConfig.from_flat`` turns a flat dict (a Tune ``config``, CLI flags) into
validated dataclasses; ``RunConfig.to_params`` gives the flat form that MLflow
stores as params and the reports read back. Models and the engine receive the
dataclasses, never the dict.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from sgstudy.errors import ConfigError

MODELS = ("motifs", "sgtr", "dsg")
PROTOCOLS = ("predcls", "sgcls", "sgdet")
PRESETS = ("tiny", "paper")
# Which relational features the auxiliary branch masks, in which unit, and what it aligns.
MASKED_INPUTS = ("pair_context", "edge_input", "edge_context")
# Features a whole relation can be masked in: one row per relation (object-level ones are not).
RELATION_MASKABLE = ("pair_context",)
MASK_UNITS = ("relation", "element")
ALIGN_TARGETS = ("distribution", "representation", "both")
# DSG ablations (DSG supplement §2): the full model, the referring-relationship classifier on raw
# detector features, and "scene graph first, then answer the query from it".
DSG_VARIANTS = ("dsg", "no-dsg", "two-step")
# How the GPI step aggregates neighbours: feature-wise attention (DSG), one scalar attention
# weight per neighbour, or a plain sum (GPI as in Herzig et al.).
GPI_AGGREGATIONS = ("feature-attention", "scalar-attention", "sum")
OPTIMIZERS = ("sgd", "adamw")
# Families that only run one protocol: SGTR detects its own entities (SPEC §5).
FAMILY_PROTOCOLS = {"sgtr": ("sgdet",)}
# A family's training defaults where its paper differs from ``OptimConfig``'s (Motifs' SGD,
# SPEC §3); keys a run config names itself win.
FAMILY_OPTIM_DEFAULTS: dict[str, dict[str, Any]] = {
    # SGTR: the authors' AdamW schedule (SPEC §5).
    "sgtr": {
        "optimizer": "adamw", "lr": 8e-5, "weight_decay": 1e-4, "max_grad_norm": 0.1,
        "warmup_iters": 100,
    },
    # DSG (SPEC §6): SGD with momentum 0.9, lr 1e-3, one image per batch, 20 epochs (VG, CLEVR).
    "dsg": {"lr": 1e-3, "batch_size": 1, "epochs": 20},
}  # fmt: skip
# The tiny preset trains on a CPU. Where a family's paper schedule is far beyond that, tiny has
# its own: for DSG the budget of the README's learnability runs ("Does DSG learn?"), 2 epochs
# of 4 queries per step at lr 0.02 (about 25 min for the three variants on 2 cores).
TINY_OPTIM_DEFAULTS: dict[str, dict[str, Any]] = {
    "dsg": {"lr": 0.02, "batch_size": 4, "epochs": 2},
}


# Above this λ the weighted loss is no longer finite-and-meaningful in float32: L_sgg (about 1)
# falls below the rounding step of λ·L_align (float32 keeps 24 bits), and near 1e38 the sum
# overflows to inf, failing every step.
MAX_ALIGN_WEIGHT = 1e6


@dataclass(frozen=True)
class AlignConfig:
    """Self-supervised relation alignment (SPEC §4). ``enabled=False`` is the plain model.

    mask_ratio:   p, the share of relations (``mask_unit="relation"``) or the Bernoulli
                  probability of each feature element (``"element"``) that is zeroed
    weight:       λ in L = L_sgg + λ · L_align
    masked_input: the tensor masked: "pair_context" a relation's own input to the predicate
                  predictor (its subject and object edge contexts); "edge_input" the input of
                  the edge-context encoder (per object, before message passing); "edge_context"
                  its output (per object)
    mask_unit:    "relation" zeroes the whole ``masked_input`` row of a share p of the
                  relations and aligns those relations only; "element" zeroes single elements
                  with probability p and aligns every relation (the first implementation)
    target:       "distribution" aligns the predicate distributions (KL(teacher ‖ student));
                  "representation" aligns the pair representations (2 - 2 cos of unit
                  vectors), "both" sums the two
    projection_head: representation alignment reads the student's representation through
                  a projection head that the supervised branch never reads; False aligns the
                  shared classifier input itself (the first implementation, which collapsed it)
    """

    enabled: bool = False
    mask_ratio: float = 0.1
    weight: float = 10.0
    masked_input: str = "pair_context"
    target: str = "distribution"
    mask_unit: str = "relation"
    projection_head: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio (p) must be in [0, 1), got {self.mask_ratio}")
        if not 0.0 <= self.weight <= MAX_ALIGN_WEIGHT:
            raise ConfigError(
                f"align_weight (λ) must be in [0, {MAX_ALIGN_WEIGHT:g}], got {self.weight}"
            )
        _check_choice("masked_input", self.masked_input, MASKED_INPUTS)
        _check_choice("align_target", self.target, ALIGN_TARGETS)
        _check_choice("align_mask_unit", self.mask_unit, MASK_UNITS)
        if self.mask_unit == "relation" and self.masked_input not in RELATION_MASKABLE:
            raise ConfigError(
                f"align_mask_unit relation masks whole relations; masked_input "
                f"{self.masked_input!r} holds objects, not relations: use "
                f"{', '.join(RELATION_MASKABLE)} or align_mask_unit element"
            )


@dataclass(frozen=True)
class DsgConfig:
    """DSG's ablations as config of the one model family (read by ``sgstudy.models.dsg``)."""

    variant: str = "dsg"
    gpi_aggregation: str = "feature-attention"

    def __post_init__(self) -> None:
        _check_choice("dsg_variant", self.variant, DSG_VARIANTS)
        _check_choice("gpi_aggregation", self.gpi_aggregation, GPI_AGGREGATIONS)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "motifs"
    protocol: str = "predcls"
    preset: str = "tiny"
    align: AlignConfig = field(default_factory=AlignConfig)
    dsg: DsgConfig = field(default_factory=DsgConfig)
    # Trained detector checkpoint (``sgstudy train-detector``); required for sgdet.
    detector_checkpoint: str | None = None
    # Backbone weights from a local file (ImageNet or a detector's); nothing downloads.
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        _check_choice("model", self.name, MODELS)
        _check_choice("protocol", self.protocol, PROTOCOLS)
        _check_choice("preset", self.preset, PRESETS)
        only = FAMILY_PROTOCOLS.get(self.name)
        if only is not None and self.protocol not in only:
            raise ConfigError(
                f"model {self.name} runs the {', '.join(only)} protocol only, not {self.protocol}"
            )


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum (or AdamW), linear warm-up, step decay and grad-norm clipping (SPEC §3)."""

    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    max_grad_norm: float = 5.0
    batch_size: int = 8
    epochs: int = 4
    # Epochs (1-based) after which the learning rate is multiplied by 0.1.
    lr_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("lr", "max_grad_norm"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_iters < 0 or self.weight_decay < 0:
            raise ConfigError("warmup_iters and weight_decay must be >= 0")
        if any(not 1 <= step < self.epochs for step in self.lr_steps):
            raise ConfigError(
                f"lr_steps must be epochs in [1, {self.epochs - 1}] (a drop after the last "
                f"epoch never acts), got {','.join(map(str, self.lr_steps))}"
            )
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/synthetic"
    # VG150 keeps images under <root>/VG_100K; another folder can be named.
    image_dir: str | None = None
    # None: the dataset's own choice (its sgstudy meta file), else 5,000 as in VG150.
    num_val_images: int | None = None
    filter_non_overlap: bool = False
    # DataLoader worker processes; None: the trial's CPUs minus one, resolved by the caller
    # (``sgstudy.data.dataset.loader_workers``).
    num_workers: int | None = None
    # Read decoded images from the node-local cache (``sgstudy.data.image_cache``), built on
    # first use in ``image_cache_dir`` (None: $SGSTUDY_IMAGE_CACHE, else the temp folder).
    image_cache: bool = False
    image_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.num_val_images is not None and self.num_val_images < 0:
            raise ConfigError(f"num_val_images must be >= 0, got {self.num_val_images}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    # "auto" picks CUDA when available.
    device: str = "auto"
    # Mixed precision; only takes effect on CUDA.
    amp: bool = True

    @staticmethod
    def from_flat(values: dict[str, Any]) -> RunConfig:
        """Build from flat keys (the names of ``to_params``). Unknown keys are an error."""
        values = dict(values)
        unknown = set(values) - set(_FLAT_KEYS)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        try:
            align = AlignConfig(
                enabled=_as_bool("align", values.pop("align", False)),
                mask_ratio=float(values.pop("mask_ratio", AlignConfig.mask_ratio)),
                weight=float(values.pop("align_weight", AlignConfig.weight)),
                masked_input=values.pop("masked_input", AlignConfig.masked_input),
                target=values.pop("align_target", AlignConfig.target),
                mask_unit=values.pop("align_mask_unit", AlignConfig.mask_unit),
                projection_head=_as_bool(
                    "align_projection_head",
                    values.pop("align_projection_head", AlignConfig.projection_head),
                ),
            )
            model = ModelConfig(
                name=values.pop("model", ModelConfig.name),
                protocol=values.pop("protocol", ModelConfig.protocol),
                preset=values.pop("preset", ModelConfig.preset),
                align=align,
                dsg=DsgConfig(
                    variant=values.pop("dsg_variant", DsgConfig.variant),
                    gpi_aggregation=values.pop("gpi_aggregation", DsgConfig.gpi_aggregation),
                ),
                detector_checkpoint=values.pop("detector_checkpoint", None),
                backbone_weights=values.pop("backbone_weights", None),
            )
            optim_defaults = OptimConfig()
            family = FAMILY_OPTIM_DEFAULTS.get(model.name, {})
            if model.preset == "tiny":
                family = {**family, **TINY_OPTIM_DEFAULTS.get(model.name, {})}
            values = {**family, **values}
            optim = OptimConfig(
                **{
                    f.name: _coerce(f.name, values.pop(f.name), getattr(optim_defaults, f.name))
                    for f in dataclasses.fields(OptimConfig)
                    if f.name in values
                }
            )
            data = DataConfig(
                root=str(values.pop("data_root", DataConfig.root)),
                image_dir=values.pop("image_dir", None),
                num_val_images=_opt_int(values.pop("num_val_images", None)),
                filter_non_overlap=_as_bool(
                    "filter_non_overlap", values.pop("filter_non_overlap", False)
                ),
                num_workers=_opt_int(values.pop("num_workers", None)),
                image_cache=_as_bool("image_cache", values.pop("image_cache", False)),
                image_cache_dir=values.pop("image_cache_dir", None),
            )
            return RunConfig(
                model=model,
                optim=optim,
                data=data,
                seed=int(values.pop("seed", 0)),
                device=str(values.pop("device", "auto")),
                amp=_as_bool("amp", values.pop("amp", True)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad config value: {exc}") from exc

    def to_params(self) -> dict[str, Any]:
        """Flat view with stable keys (MLflow params; ``from_flat`` reads it back)."""
        m, a, o, d = self.model, self.model.align, self.optim, self.data
        return {
            "model": m.name,
            "protocol": m.protocol,
            "preset": m.preset,
            "align": a.enabled,
            "mask_ratio": a.mask_ratio,
            "align_weight": a.weight,
            "masked_input": a.masked_input,
            "align_target": a.target,
            "align_mask_unit": a.mask_unit,
            "align_projection_head": a.projection_head,
            "dsg_variant": m.dsg.variant,
            "gpi_aggregation": m.dsg.gpi_aggregation,
            "detector_checkpoint": m.detector_checkpoint,
            "backbone_weights": m.backbone_weights,
            **{f.name: getattr(o, f.name) for f in dataclasses.fields(OptimConfig)},
            "data_root": d.root,
            "image_dir": d.image_dir,
            "num_val_images": d.num_val_images,
            "filter_non_overlap": d.filter_non_overlap,
            "num_workers": d.num_workers,
            "image_cache": d.image_cache,
            "image_cache_dir": d.image_cache_dir,
            "seed": self.seed,
            "device": self.device,
            "amp": self.amp,
        }

    def replace(self, **flat: Any) -> RunConfig:
        """A copy with some flat keys changed, validated like ``from_flat``."""
        return RunConfig.from_flat({**self.to_params(), **flat})


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}; choose one of {', '.join(choices)}")


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{key} must be a boolean, got {value!r}")


def _opt_int(value: Any) -> int | None:
    return None if value in (None, "None", "") else int(value)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        return tuple(int(v) for v in value)
    return type(default)(value)


# Every key ``from_flat`` accepts (after the helpers above: building the default validates it).
_FLAT_KEYS = tuple(RunConfig().to_params())
