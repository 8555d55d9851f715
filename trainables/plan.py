"""A launch of a study, checked before anything runs: ``StudyOptions`` -> ``StudyPlan``.

``plan_study`` validates everything a user can get wrong (study name, grid values, seeds,
resources, the dataset, the tracking server, what a resume needs) before Ray starts and
before MLflow is touched, so a mistake costs one error line and leaves no half-written run.
The resource helpers size a launch to the cluster once Ray is up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from search_spaces.studies import StudySpec, check_seeds, get_study
from sgstudy.config import PRESETS, RunConfig
from sgstudy.errors import ConfigError, UserError
from sgstudy.paths import check_plain_name, check_writable_folder
from sgstudy.tasks import REFERRING_FORMAT, SCENE_GRAPH, TASKS, VG150_FORMAT
from trainables.trial import FAIL_ONCE_KEY, START_STATE_KEY, TRIAL_KEYS

SCHEDULERS = ("asha",)
OPTUNA_DB = "optuna.db"
# What the driver of a data-parallel trial reserves (bytes of Ray's logical memory).
DRIVER_MEMORY_BYTES = 1 << 20


@dataclass(frozen=True)
class StudyOptions:
    """One launch of a study, as the ``sgstudy run`` flags give it.

    address: ``None`` starts a local Ray; ``"auto"`` or ``HOST:PORT`` joins a cluster
    name:    the launch (Tune experiment) name, default the study's; ``resume`` finishes it
    values:  replace the paper's values of the swept hyperparameter (p or λ)
    fail_once_at_epoch: fault injection for testing retries: every trial raises once after
             reporting this epoch and is retried from its checkpoint
    detector: a trained detector checkpoint every trial uses (needed by SGDet studies)
    reuse_actors: a finished trial's worker process runs the next trial (Tune's actor reuse)
    log_start_state: every trial tags its run with digests of its starting state (diagnostics)
    """

    study: str
    data_root: str
    preset: str = "tiny"
    seeds: tuple[int, ...] = (0,)
    tracking_uri: str | None = None
    address: str | None = None
    resume: bool = False
    max_concurrent: int | None = None
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    workers_per_trial: int = 1
    scheduler: str | None = None
    optuna_storage: str | None = None
    storage_path: str = "ray_results"
    epochs: int | None = None
    lr_steps: tuple[int, ...] | None = None
    lr: float | None = None
    batch_size: int | None = None
    name: str | None = None
    values: tuple[float, ...] | None = None
    max_failures: int = 2
    fail_once_at_epoch: int | None = None
    log_checkpoints: bool = False
    verbose: int = 1
    detector: str | None = None
    reuse_actors: bool = True
    log_start_state: bool = False


@dataclass(frozen=True)
class StudyPlan:
    """A validated launch: everything ``run_study`` needs, nothing touched yet."""

    options: StudyOptions
    spec: StudySpec
    seeds: tuple[int, ...]
    launch: str
    experiment_path: str
    param_space: dict[str, Any]
    num_samples: int
    epochs: int
    tracking_uri: str
    optuna_url: str


# ---------------------------------------------------------------- validation
def plan_study(options: StudyOptions) -> StudyPlan:
    """Checks a launch without side effects; raises ``UserError`` naming what is wrong."""
    from sgstudy.tracking import resolve_tracking_uri

    spec = get_study(options.study).with_values(options.values)
    seeds = check_seeds(options.seeds)
    check_resources(options)
    check_fits_local_machine(options)
    if options.scheduler is not None:
        if options.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {options.scheduler!r}; choose asha or none")
        if not spec.early_stopping_allowed:
            raise ConfigError(
                f"--scheduler {options.scheduler} stops trials early, which leaves holes in the "
                f"grid of {spec.name}; use it with a search study (align-motifs-tpe)"
            )
    if options.preset not in PRESETS:
        raise ConfigError(f"unknown preset {options.preset!r}; choose one of {', '.join(PRESETS)}")
    data_root = check_data(options.data_root, spec.task)
    param_space: dict[str, Any] = {"data_root": data_root, "preset": options.preset}
    detector = check_detector(spec, options.detector)
    if detector is not None:
        param_space["detector_checkpoint"] = detector
    if options.epochs is not None:
        param_space["epochs"] = options.epochs
    if options.lr_steps is not None:
        param_space["lr_steps"] = ",".join(str(step) for step in options.lr_steps)
    if options.lr is not None:
        param_space["lr"] = options.lr
    if options.batch_size is not None:
        param_space["batch_size"] = options.batch_size
    # Validates the override; the study's model family may have its own default epochs.
    epochs = RunConfig.from_flat({**param_space, **spec.model_keys}).optim.epochs
    if options.fail_once_at_epoch is not None:
        if not 1 <= options.fail_once_at_epoch <= epochs:
            raise ConfigError(f"fail_once_at_epoch must be in [1, {epochs}]")
        param_space[FAIL_ONCE_KEY] = options.fail_once_at_epoch
    if options.log_start_state:
        param_space[START_STATE_KEY] = True
    check_trial_configs(spec, seeds, param_space)
    launch = check_plain_name(options.name or spec.name, "launch name")
    storage = storage_location(options.storage_path)
    experiment_path = f"{storage.rstrip('/')}/{launch}"
    check_launch_state(experiment_path, options.resume, launch)
    tracking_uri = resolve_tracking_uri(options.tracking_uri)
    return StudyPlan(
        options=options,
        spec=spec,
        seeds=seeds,
        launch=launch,
        experiment_path=experiment_path,
        param_space=param_space,
        num_samples=spec.num_samples(seeds),
        epochs=epochs,
        tracking_uri=tracking_uri,
        optuna_url=optuna_url(options.optuna_storage, tracking_uri),
    )


def check_resources(options: StudyOptions) -> None:
    # Written so that NaN fails too; infinity is refused before int() would raise on it.
    if not (options.cpus_per_trial > 0 and math.isfinite(options.cpus_per_trial)):
        raise ConfigError(f"cpus_per_trial must be a number > 0, got {options.cpus_per_trial}")
    if not (options.gpus_per_trial >= 0 and math.isfinite(options.gpus_per_trial)):
        raise ConfigError(f"gpus_per_trial must be a number >= 0, got {options.gpus_per_trial}")
    if options.gpus_per_trial > 1 and options.gpus_per_trial != int(options.gpus_per_trial):
        raise ConfigError(
            f"gpus_per_trial {options.gpus_per_trial}: more than one GPU must be a whole number"
        )
    if options.workers_per_trial < 1:
        raise ConfigError(f"workers_per_trial must be >= 1, got {options.workers_per_trial}")
    if options.workers_per_trial > 1 and 0 < options.gpus_per_trial < 1:
        # Two ranks of one trial could land on the same GPU, which NCCL refuses.
        raise ConfigError(
            f"gpus_per_trial {options.gpus_per_trial} with workers_per_trial "
            f"{options.workers_per_trial}: data-parallel workers need a whole GPU each"
        )
    if options.max_concurrent is not None and options.max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be >= 1, got {options.max_concurrent}")
    if options.max_failures < 0:
        raise ConfigError(f"max_failures must be >= 0, got {options.max_failures}")


def check_fits_local_machine(options: StudyOptions) -> None:
    """A launch that starts its own Ray gets this machine: refuse a trial it cannot hold
    before Ray starts (joined clusters are checked once connected, see ``check_fits``)."""
    import ray

    if options.address is not None or ray.is_initialized():
        return
    check_fits(options, local_resources(), options.address)


def local_resources() -> dict[str, float]:
    """The CPUs and GPUs a local Ray would find on this machine."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"CPU": float(cpus or 1), "GPU": float(torch.cuda.device_count())}


def check_data(data_root: str, task: str = SCENE_GRAPH) -> str:
    """The dataset's absolute path (trials run in other directories), after ``data check``;
    its layout must be the one the study's ``task`` reads."""
    from sgstudy.data.check import check_dataset
    from sgstudy.data.referring_format import is_referring_dataset

    root = Path(data_root).expanduser().absolute()
    if root.is_file():
        raise UserError(f"--data {root} is a file; give the dataset's folder")
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    expected = TASKS[task].data_format
    found = REFERRING_FORMAT if is_referring_dataset(root) else VG150_FORMAT
    if found != expected:
        hint = " (derive one with sgstudy data synth-rr)" if expected == REFERRING_FORMAT else ""
        raise UserError(
            f"this study needs a {expected} dataset{hint}; {root} holds the {found} layout"
        )
    check_dataset(root)
    return str(root)


def check_detector(spec: StudySpec, detector: str | None) -> str | None:
    """The detector checkpoint's absolute path; an SGDet study without one is an error."""
    if detector is None:
        if spec.needs_detector:
            raise ConfigError(
                f"study {spec.name} runs SGDet: pass --detector FILE, a detector checkpoint "
                "(sgstudy train-detector)"
            )
        return None
    path = Path(detector).expanduser().absolute()
    if not path.is_file():
        raise UserError(f"detector checkpoint {path} does not exist")
    return str(path)


def check_trial_configs(spec: StudySpec, seeds: tuple[int, ...], space: dict[str, Any]) -> None:
    """Every grid point, merged with the launch's keys, must be a valid run config."""
    import optuna

    # A throwaway in-memory study: Optuna would log its creation on stderr, where a launch
    # refused by a later check must leave exactly one error line.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=spec.sampler(seeds))
    finally:
        optuna.logging.set_verbosity(verbosity)
    trial = study.ask()
    points = [dict(values) for values in spec.grid.values()] if spec.grid else [{}]
    constants = spec.space_fn(seeds)(trial)
    for point in points:
        flat = {**constants, **point, **space, "seed": seeds[0]}
        # The trial's own keys (variant, fault injection) are not run-config keys.
        RunConfig.from_flat({k: v for k, v in flat.items() if k not in TRIAL_KEYS})


def storage_location(storage_path: str) -> str:
    """Absolute local path, or a URI (``s3://...``) as given."""
    if urlparse(storage_path).scheme and "://" in storage_path:
        return storage_path
    return str(check_writable_folder(Path(storage_path), "--storage-path"))


def check_launch_state(experiment_path: str, resume: bool, launch: str) -> None:
    from ray.tune import Tuner

    exists = Tuner.can_restore(experiment_path)
    if resume and not exists:
        raise UserError(f"nothing to resume: no study state at {experiment_path}")
    if not resume and exists:
        raise UserError(
            f"{experiment_path} already holds a launch named {launch!r}; "
            "pass --resume to finish it or --name to start another"
        )


def optuna_url(given: str | None, tracking_uri: str) -> str:
    """The Optuna RDB storage: given, else a SQLite file next to the MLflow database."""
    from sgstudy.tracking import sqlite_path

    if given is not None:
        scheme = urlparse(given).scheme.split("+")[0]
        if scheme not in ("sqlite", "postgresql", "mysql"):
            raise ConfigError(
                f"optuna storage {given!r} is not a database URL (sqlite:///, postgresql://)"
            )
        if scheme == "sqlite":
            path = sqlite_path(given)
            check_writable_folder(path.parent, "optuna storage folder")
            return f"sqlite:///{path}"
        return given
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{sqlite_path(tracking_uri).parent / OPTUNA_DB}"
    check_writable_folder(Path.cwd(), "working folder (for optuna.db)")
    return f"sqlite:///{Path.cwd() / OPTUNA_DB}"


# ---------------------------------------------------------------- resources
def trial_resources(options: StudyOptions) -> dict[str, float]:
    """What Tune reserves for one trial's own process."""
    if options.workers_per_trial > 1:
        # The trial only waits on its TorchTrainer, whose workers hold the real resources, so it
        # takes no CPU (a share of one would leave N workers of N CPUs unable to start). Tune
        # refuses an empty request, hence a token amount of memory, which every node has.
        return {"CPU": 0.0, "memory": DRIVER_MEMORY_BYTES}
    return {"CPU": options.cpus_per_trial, "GPU": options.gpus_per_trial}


def default_max_concurrent(options: StudyOptions, cluster: dict[str, float]) -> int:
    """How many trials the cluster holds at once: by GPUs when trials use them, else by CPUs.

    Returns 0 when not even one trial fits (an autoscaling cluster may still grow).
    """
    workers = options.workers_per_trial
    by_cpu = math.floor(cluster.get("CPU", 0.0) / (options.cpus_per_trial * workers) + 1e-9)
    if options.gpus_per_trial <= 0:
        return by_cpu
    by_gpu = math.floor(cluster.get("GPU", 0.0) / (options.gpus_per_trial * workers) + 1e-9)
    return min(by_gpu, by_cpu)


def resolve_max_concurrent(options: StudyOptions, cluster: dict[str, float]) -> int:
    """``--max-concurrent``, else as many trials as the cluster holds; refuses a trial that a
    fixed-size (local) Ray can never hold, whatever ``--max-concurrent`` says."""
    fits = check_fits(options, cluster, options.address)
    if options.max_concurrent is not None:
        return options.max_concurrent
    return max(fits, 1)


def check_fits(options: StudyOptions, cluster: dict[str, float], address: str | None) -> int:
    """How many trials ``cluster`` holds at once; ``UserError`` if none fits a local Ray."""
    fits = default_max_concurrent(options, cluster)
    if fits >= 1:
        return fits
    needs = (
        f"{options.workers_per_trial * options.cpus_per_trial:g} CPUs and "
        f"{options.workers_per_trial * options.gpus_per_trial:g} GPUs"
    )
    has = f"{cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs"
    if address is None:
        raise UserError(f"a trial needs {needs}, but this machine's Ray has {has}")
    print(f"a trial needs {needs}; the cluster has {has} now: running one at a time until it grows")
    return 0
