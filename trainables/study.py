"""The study driver: ``run_study`` runs every trial of a study on Ray Tune, tracked in MLflow.

After ``plan_study`` has validated the launch, Ray is joined (or started), the study's
experiment and parent run are opened (a resume finds its parent run again by the launch
tag), and a ``Tuner`` with an ``OptunaSearch`` (its study persisted in an Optuna RDB
storage) runs the trials. ``resume`` restores the ``Tuner`` from its experiment directory:
finished trials stay finished, the others continue from their checkpoints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from sgstudy.errors import UserError
from sgstudy.metric_names import display_name
from sgstudy.tasks import REFERRING, SCENE_GRAPH, TASKS
from sgstudy.tracking_layout import COMPLEXITY_ARTIFACT
from trainables.plan import (
    StudyOptions,
    StudyPlan,
    plan_study,
    resolve_max_concurrent,
    trial_resources,
)
from trainables.trial import EPOCH_KEY, VARIANT_KEY, TrialSettings, train_scene_graph

# The scene-graph studies' columns; a study of another task shows that task's table metrics.
TABLE_METRICS = TASKS[SCENE_GRAPH].table_metrics


@dataclass(frozen=True)
class TrialRow:
    """One trial's line of the result table; ``metrics`` are fractions, keyed by stored names."""

    method: str
    variant: str
    seed: int
    epochs_done: int
    failed: bool
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyOutcome:
    study: str
    launch: str
    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    rows: tuple[TrialRow, ...]
    table: str
    complete: bool  # every trial finished: none failed, none left over by an interrupt


def run_study(options: StudyOptions) -> StudyOutcome:
    """Runs (or, with ``options.resume``, finishes) one launch of a study; prints the table."""
    plan = plan_study(options)
    started_ray = connect_ray(options.address)
    try:
        return run_planned(plan)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def connect_ray(address: str | None) -> bool:
    """Joins the cluster at ``address`` (``None``: a local Ray); True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # Without an address, ray.init would join a cluster that `ray start` left running on this
    # machine; "local" always starts the study's own.
    address = address or "local"
    try:
        ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot start or join the Ray cluster at {address}: {exc}") from exc
    return True


def run_planned(plan: StudyPlan) -> StudyOutcome:
    import ray

    from sgstudy import tracking

    options = plan.options
    max_concurrent = resolve_max_concurrent(options, ray.cluster_resources())
    client = tracking.make_client(plan.tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, plan.spec.name, plan.tracking_uri)
    parent_run_id = None
    if options.resume:
        parent_run_id = tracking.find_study_run(client, experiment_id, plan.launch)
    if parent_run_id is None:
        parent_run_id = tracking.start_study_run(
            client, experiment_id, plan.spec.name, plan.launch, launch_params(plan)
        )
        if plan.spec.task == REFERRING:
            log_complexity(client, parent_run_id, options.preset)
    else:
        client.update_run(parent_run_id, status=tracking.RUNNING)
    study_run = tracking.StudyRun(plan.tracking_uri, experiment_id, parent_run_id, plan.spec.name)
    settings = TrialSettings(
        study_run=study_run,
        git_commit=tracking.git_commit(),
        workers_per_trial=options.workers_per_trial,
        cpus_per_worker=options.cpus_per_trial,
        gpus_per_worker=options.gpus_per_trial,
        train_storage=f"{plan.experiment_path}-data-parallel",
        log_checkpoint=options.log_checkpoints,
    )
    tuner = build_tuner(plan, settings, max_concurrent)
    print(
        f"study {plan.spec.name}: {plan.num_samples} trials, up to {max_concurrent} at once; "
        f"MLflow {plan.tracking_uri} (experiment {experiment_id}, parent run {parent_run_id})",
        flush=True,
    )
    try:
        results = tuner.fit()
    except BaseException as exc:
        tracking.end_run(client, parent_run_id, tracking.status_for(exc))
        raise
    rows = result_rows(plan, results)
    complete = results.num_terminated == plan.num_samples and results.num_errors == 0
    interrupted = results.num_terminated + results.num_errors < plan.num_samples
    status = (
        tracking.KILLED if interrupted else (tracking.FINISHED if complete else tracking.FAILED)
    )
    tracking.end_run(client, parent_run_id, status)
    table = format_table(plan.spec.name, rows, plan.epochs, table_metrics(plan))
    print(table)
    if interrupted:
        print(f"interrupted: finish this launch with the same command and --resume ({plan.launch})")
    return StudyOutcome(
        study=plan.spec.name,
        launch=plan.launch,
        experiment_path=plan.experiment_path,
        tracking_uri=plan.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        rows=tuple(rows),
        table=table,
        complete=complete,
    )


def log_complexity(client: Any, run_id: str, preset: str) -> None:
    """The DSG supplement's Table 1 as measured (``sgstudy complexity``) for the paper preset and
    the launch's, as the parent run's ``COMPLEXITY_ARTIFACT`` (the report renders it)."""
    from sgstudy.models.dsg.complexity import complexity_table, format_complexity_table

    text = "\n\n".join(
        f"`{name}` preset:\n\n{format_complexity_table(complexity_table(name))}"
        for name in dict.fromkeys(("paper", preset))
    )
    client.log_text(run_id, text + "\n", COMPLEXITY_ARTIFACT)


def launch_params(plan: StudyPlan) -> dict[str, Any]:
    options = plan.options
    return {
        "study": plan.spec.name,
        "launch": plan.launch,
        "seeds": ",".join(str(s) for s in plan.seeds),
        "variants": ",".join(plan.spec.grid) if plan.spec.grid else "search",
        "num_trials": plan.num_samples,
        "preset": options.preset,
        "epochs": plan.epochs,
        "data_root": plan.param_space["data_root"],
        "detector_checkpoint": plan.param_space.get("detector_checkpoint"),
        "gpus_per_trial": options.gpus_per_trial,
        "cpus_per_trial": options.cpus_per_trial,
        "workers_per_trial": options.workers_per_trial,
        "scheduler": options.scheduler or "none",
        "storage_path": plan.experiment_path,
        "optuna_storage": plan.optuna_url,
    }


def build_tuner(plan: StudyPlan, settings: TrialSettings, max_concurrent: int) -> Any:
    from ray import tune

    # Tune saves the launch's state (its trials, the searcher) every 10 s or more by default.
    # A driver killed in between loses the trials it created since, although Optuna has handed
    # out their grid points and they may have opened MLflow runs: --resume would run those
    # points again under new trial ids. Saving every second narrows that window to a second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # That frequent saving is deliberate; Tune would warn about it after every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(
        tune.with_parameters(train_scene_graph, settings=settings), trial_resources(plan.options)
    )
    if plan.options.resume:
        return tune.Tuner.restore(plan.experiment_path, trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(plan),
            scheduler=build_scheduler(plan),
            num_samples=plan.num_samples,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=plan.launch,
            storage_path=plan.experiment_path.rsplit("/", 1)[0],
            failure_config=tune.FailureConfig(max_failures=plan.options.max_failures),
            # Keeping one checkpoint makes Tune save the study's state after every trial
            # checkpoint, so a killed driver loses no finished epoch.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=plan.options.verbose,
        ),
    )


def build_searcher(plan: StudyPlan) -> Any:
    import optuna

    from trainables.searcher import ResumableOptunaSearch

    return ResumableOptunaSearch(
        plan.spec.space_fn(plan.seeds),
        metric=TASKS[plan.spec.task].primary_metric,
        mode="max",
        sampler=plan.spec.sampler(plan.seeds),
        # One Optuna study per launch: a grid sampler would skip points an older launch ran.
        study_name=f"{plan.launch}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage=optuna.storages.RDBStorage(plan.optuna_url),
    )


def build_scheduler(plan: StudyPlan) -> Any:
    if plan.options.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",  # one report per epoch
        metric=TASKS[plan.spec.task].primary_metric,
        mode="max",
        max_t=plan.epochs,
        grace_period=1,
    )


# ---------------------------------------------------------------- results
def table_metrics(plan: StudyPlan) -> tuple[str, ...]:
    return TASKS[plan.spec.task].table_metrics


def result_rows(plan: StudyPlan, results: Any) -> list[TrialRow]:
    order = list(plan.spec.grid) if plan.spec.grid else []
    keys = table_metrics(plan)
    rows = []
    for result in results:
        config, metrics = result.config or {}, result.metrics or {}
        variant = str(config.get(VARIANT_KEY, "?"))
        rows.append(
            TrialRow(
                method=plan.spec.label(variant),
                variant=variant,
                seed=int(config.get("seed", -1)),
                epochs_done=int(metrics.get(EPOCH_KEY, 0)),
                failed=result.error is not None,
                metrics={k: float(metrics[k]) for k in keys if k in metrics},
            )
        )
    rank = {variant: i for i, variant in enumerate(order)}
    rows.sort(key=lambda r: (rank.get(r.variant, len(rank)), r.variant, r.seed))
    return rows


def format_table(
    study: str, rows: list[TrialRow], epochs: int, metrics: tuple[str, ...] = TABLE_METRICS
) -> str:
    """Method, seed and the val ``metrics`` in percent; trials that did not finish say why."""
    width = max([8, *(len(display_name(k)) + 1 for k in metrics)])
    header = f"{'method':30s} {'seed':>4s}" + "".join(
        f"{display_name(k):>{width}s}" for k in metrics
    )
    lines = [f"\n{study}: validation results", header, "-" * len(header)]
    for row in rows:
        cells = "".join(
            f"{100 * row.metrics[k]:{width}.1f}" if k in row.metrics else f"{'-':>{width}s}"
            for k in metrics
        )
        note = ""
        if row.failed:
            note = "  failed"
        elif row.epochs_done < epochs:
            note = f"  stopped at epoch {row.epochs_done}/{epochs}"
        lines.append(f"{row.method:30s} {row.seed:4d}{cells}{note}")
    return "\n".join(lines)
