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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sgstudy.errors import UserError
from sgstudy.metric_names import display_name
from sgstudy.tasks import REFERRING, SCENE_GRAPH, TASKS
from sgstudy.tracking_layout import COMPLEXITY_ARTIFACT, TRIAL_ID_TAG
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
    trial_id: str = ""


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
    interrupted: bool = False  # stopped before every trial ended: --resume continues it
    failed_runs: tuple[str, ...] = ()  # "<run name> (run <id>): <reason>" of each failed trial
    driver_error: str = ""  # why the driver itself stopped (a Ray failure), with the hint


# `sgstudy run` exit statuses besides 0 (every trial finished) and 2 (bad input).
EXIT_DRIVER_FAILED = 1
EXIT_TRIALS_FAILED = 3
EXIT_INTERRUPTED = 130


def exit_status(outcome: StudyOutcome) -> int:
    """0 when every trial finished; 1 when Ray failed the driver; 3 when trials failed;
    130 after an interrupt."""
    if outcome.complete:
        return 0
    if outcome.driver_error:
        return EXIT_DRIVER_FAILED
    return EXIT_INTERRUPTED if outcome.interrupted else EXIT_TRIALS_FAILED


def failure_summary(outcome: StudyOutcome) -> str:
    """The one line that names the failed runs, e.g. ``2 of 4 trials failed: ...``."""
    failed = "; ".join(outcome.failed_runs)
    return f"{len(outcome.failed_runs)} of {len(outcome.rows)} trials failed: {failed}"


def run_study(options: StudyOptions) -> StudyOutcome:
    """Runs (or, with ``options.resume``, finishes) one launch of a study; prints the table."""
    plan = plan_study(options)
    if options.resume:
        finished = check_resume(plan)
        if finished is not None:
            return finished
    from sgstudy import tracking

    # Ray's start is mostly waiting for its processes; meanwhile a thread opens the MLflow
    # store (a new SQLite store runs its schema migrations, seconds of work).
    with ThreadPoolExecutor(max_workers=1) as pool:
        store = pool.submit(tracking.make_client, plan.tracking_uri)
        started_ray = connect_ray(options.address)
    try:
        store.result()
        return run_planned(plan)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


# What a --resume must share with the launch it finishes (params of the parent run).
RESUME_SETTINGS = (
    "seeds", "variants", "num_trials", "preset", "epochs", "data_root", "scheduler",
    "gpus_per_trial", "cpus_per_trial", "workers_per_trial", "storage_path", "optuna_storage",
    "detector_checkpoint", "lr_steps", "lr", "batch_size", "reuse_actors",
)  # fmt: skip


def check_resume(plan: StudyPlan) -> StudyOutcome | None:
    """Before anything runs: refuses a --resume whose settings differ from the launch's
    recorded ones; for a launch that already finished, prints its table and returns it."""
    from sgstudy import tracking

    parent = tracking.recorded_launch(plan.tracking_uri, plan.spec.name, plan.launch)
    if parent is None:
        return None
    recorded = parent.data.params
    wanted = launch_params(plan)
    differ = [
        f"{key} {recorded[key]} (now {wanted[key]})"
        for key in RESUME_SETTINGS
        if key in recorded and recorded[key] != str(wanted[key])[: tracking.MAX_PARAM_LENGTH]
    ]
    if differ:
        raise UserError(
            f"--resume of {plan.launch!r} differs from its launch in {', '.join(differ)}; "
            "resume with the launch's settings, or start another with --name"
        )
    if parent.info.status != tracking.FINISHED:
        return None
    return finished_outcome(plan, parent)


def finished_outcome(plan: StudyPlan, parent: Any) -> StudyOutcome:
    """The table of a launch that finished, read from MLflow; nothing is written."""
    from sgstudy import tracking

    client = tracking.make_client(plan.tracking_uri)
    study_run = tracking.StudyRun(
        plan.tracking_uri, parent.info.experiment_id, parent.info.run_id, plan.spec.name
    )
    rows = []
    for run in tracking.trial_runs(client, study_run):
        variant = run.data.tags.get(tracking.VARIANT_TAG, "?")
        metrics = run.data.metrics
        rows.append(
            TrialRow(
                method=plan.spec.label(variant),
                variant=variant,
                seed=int(run.data.params.get("seed", -1)),
                epochs_done=int(metrics.get(EPOCH_KEY, 0)),
                failed=run.info.status == tracking.FAILED,
                metrics={k: float(metrics[k]) for k in table_metrics(plan) if k in metrics},
                trial_id=run.data.tags.get(TRIAL_ID_TAG, ""),
            )
        )
    rows = sort_rows(plan, rows)
    table = format_table(plan.spec.name, rows, plan.epochs, table_metrics(plan))
    print(table)
    print(f"launch {plan.launch!r} had already finished: nothing to resume, nothing changed")
    return launch_outcome(plan, study_run, rows, table, complete=True)


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
    except Exception as exc:  # Ray raises a bare Exception when its node times out starting
        raise UserError(
            f"cannot start or join the Ray cluster at {address}: {str(exc).splitlines()[0]}"
        ) from exc
    return True


def run_planned(plan: StudyPlan) -> StudyOutcome:
    import ray

    from sgstudy import tracking
    from trainables.launch_state import SaveOnTrialStart
    from trainables.run_states import RunStateCallback

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
    callbacks = [RunStateCallback(study_run), SaveOnTrialStart()]
    tuner = build_tuner(plan, settings, max_concurrent, callbacks)
    print(
        f"study {plan.spec.name}: {plan.num_samples} trials, up to {max_concurrent} at once; "
        f"MLflow {plan.tracking_uri} (experiment {experiment_id}, parent run {parent_run_id})",
        flush=True,
    )
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        stop_launch(study_run, tracking.KILLED, "interrupted")
        print(resume_hint(plan), flush=True)
        raise
    except Exception as exc:  # Ray itself failed (e.g. its memory monitor killed a worker
        # in a way Tune does not handle): the trials' state is in checkpoints, --resume goes on.
        reason = f"{type(exc).__name__}: {tracking.one_line(str(exc))}"
        stop_launch(study_run, tracking.FAILED, f"the driver stopped: {reason}")
        return launch_outcome(
            plan, study_run, (), "", complete=False, interrupted=True,
            driver_error=f"{reason}; {resume_hint(plan).split(': ', 1)[1]}",
        )  # fmt: skip
    return finish_launch(plan, study_run, results)


def stop_launch(study_run: Any, status: str, outcome: str) -> None:
    """A launch that ends without Tune's results: nothing more will end the trials' runs,
    so they end KILLED (--resume continues them) and the parent says why."""
    from sgstudy import tracking
    from trainables.run_states import settle_runs

    settle_runs(study_run, {})
    client = tracking.make_client(study_run.tracking_uri)
    client.set_tag(study_run.parent_run_id, tracking.OUTCOME_TAG, outcome)
    tracking.end_run(client, study_run.parent_run_id, status)


def finish_launch(plan: StudyPlan, study_run: Any, results: Any) -> StudyOutcome:
    """Ends the runs the launch left open, records its outcome on the parent, prints the table."""
    from sgstudy import tracking
    from trainables.run_states import reconcile_optuna, settle_runs

    rows = result_rows(plan, results)
    reconcile_optuna(plan.optuna_url, plan.launch, results, TASKS[plan.spec.task].primary_metric)
    errored = {
        str(result.metrics.get("trial_id") or ""): error_of(result)
        for result in results
        if result.error is not None
    }
    completed = frozenset(
        str(result.metrics.get("trial_id") or "")
        for result in results
        if result.error is None and int((result.metrics or {}).get(EPOCH_KEY, 0)) >= plan.epochs
    )
    settle_runs(study_run, errored, completed)
    client = tracking.make_client(study_run.tracking_uri)
    failed_runs = describe_failed(client, study_run, errored)
    complete = results.num_terminated == plan.num_samples and results.num_errors == 0
    interrupted = results.num_terminated + results.num_errors < plan.num_samples
    if interrupted:
        status, outcome = tracking.KILLED, f"interrupted: {results.num_terminated} of "
        outcome += f"{plan.num_samples} trials finished"
    elif complete:
        status, outcome = tracking.FINISHED, f"{plan.num_samples} of {plan.num_samples} "
        outcome += "trials finished"
    else:
        status = tracking.FAILED
        outcome = f"{len(errored)} of {plan.num_samples} trials failed"
    client.set_tag(study_run.parent_run_id, tracking.OUTCOME_TAG, outcome)
    tracking.end_run(client, study_run.parent_run_id, status)
    table = format_table(plan.spec.name, rows, plan.epochs, table_metrics(plan))
    print(table)
    if interrupted:
        print(resume_hint(plan))
    return launch_outcome(
        plan, study_run, rows, table, complete=complete, interrupted=interrupted,
        failed_runs=failed_runs,
    )  # fmt: skip


def launch_outcome(
    plan: StudyPlan, study_run: Any, rows: Any, table: str, **state: Any
) -> StudyOutcome:
    """The outcome of ``plan``'s launch tracked under ``study_run``; ``state``: the
    ``complete`` / ``interrupted`` / ``failed_runs`` / ``driver_error`` fields."""
    return StudyOutcome(
        study=plan.spec.name,
        launch=plan.launch,
        experiment_path=plan.experiment_path,
        tracking_uri=plan.tracking_uri,
        experiment_id=study_run.experiment_id,
        parent_run_id=study_run.parent_run_id,
        rows=tuple(rows),
        table=table,
        **state,
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


def resume_hint(plan: StudyPlan) -> str:
    return f"interrupted: finish this launch with the same command and --resume ({plan.launch})"


def error_of(result: Any) -> tuple[str, str]:
    """``(one-line reason, traceback)`` of a Tune result that ended in an error."""
    from pathlib import Path

    from sgstudy import tracking

    cause = getattr(result.error, "cause", None) or result.error
    error_file = Path(result.path) / "error.txt" if result.path else None
    text = error_file.read_text(errors="replace") if error_file and error_file.is_file() else ""
    return f"{type(cause).__name__}: {tracking.one_line(str(cause))}", text or repr(cause)


def describe_failed(
    client: Any, study_run: Any, errored: dict[str, tuple[str, str]]
) -> tuple[str, ...]:
    """``<run name> (run <id>): <reason>`` of each failed trial, as MLflow names its run."""
    from sgstudy import tracking

    runs = {run.data.tags.get(TRIAL_ID_TAG): run for run in tracking.trial_runs(client, study_run)}
    described = []
    for trial_id, (reason, _) in sorted(errored.items()):
        run = runs.get(trial_id)
        name = f"{run.info.run_name} (run {run.info.run_id})" if run else f"trial {trial_id}"
        described.append(f"{name}: {reason}")
    return tuple(described)


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
        # Tune restores a launch's trial configs and its reuse setting: on --resume, a flag
        # that differs from these would be ignored, so it is refused instead.
        "lr_steps": plan.param_space.get("lr_steps"),
        "lr": plan.param_space.get("lr"),
        "batch_size": plan.param_space.get("batch_size"),
        "reuse_actors": options.reuse_actors,
        "gpus_per_trial": options.gpus_per_trial,
        "cpus_per_trial": options.cpus_per_trial,
        "workers_per_trial": options.workers_per_trial,
        "scheduler": options.scheduler or "none",
        "storage_path": plan.experiment_path,
        "optuna_storage": plan.optuna_url,
    }


def build_tuner(
    plan: StudyPlan, settings: TrialSettings, max_concurrent: int, callbacks: list[Any]
) -> Any:
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
        # The launch's RunConfig, callbacks included, is restored with the Tuner.
        return tune.Tuner.restore(plan.experiment_path, trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(plan),
            scheduler=build_scheduler(plan),
            num_samples=plan.num_samples,
            max_concurrent_trials=max_concurrent,
            # A finished trial's worker process runs the next one: no process start, no
            # imports, no CUDA context per trial (what each trial must not inherit is reset
            # in trainables.trial).
            reuse_actors=plan.options.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=plan.launch,
            storage_path=plan.experiment_path.rsplit("/", 1)[0],
            failure_config=tune.FailureConfig(max_failures=plan.options.max_failures),
            # Keeping one checkpoint makes Tune save the study's state after every trial
            # checkpoint, so a killed driver loses no finished epoch.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[*callbacks, progress_callback(plan)],
            verbose=plan.options.verbose,
        ),
    )


def progress_callback(plan: StudyPlan) -> Any:
    """One line per finished trial (``trainables.progress``)."""
    from trainables.progress import TrialProgress

    return TrialProgress(plan.num_samples, plan.spec.task)


def open_optuna_storage(url: str) -> Any:
    """Optuna's RDB storage; a SQLite one is created under a file lock, like MLflow's store,
    so launches starting together do not build one schema twice at once."""
    import optuna

    from sgstudy.paths import file_lock
    from sgstudy.tracking import sqlite_path

    if not url.startswith("sqlite:///"):
        return optuna.storages.RDBStorage(url)
    path = sqlite_path(url)
    with file_lock(path.with_name(path.name + ".lock")):
        return optuna.storages.RDBStorage(url)


def build_searcher(plan: StudyPlan) -> Any:
    from trainables.searcher import ResumableOptunaSearch

    return ResumableOptunaSearch(
        plan.spec.space_fn(plan.seeds),
        metric=TASKS[plan.spec.task].primary_metric,
        mode="max",
        sampler=plan.spec.sampler(plan.seeds),
        # One Optuna study per launch: a grid sampler would skip points an older launch ran.
        study_name=f"{plan.launch}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage=open_optuna_storage(plan.optuna_url),
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
                trial_id=str(metrics.get("trial_id") or ""),
            )
        )
    return sort_rows(plan, rows)


def sort_rows(plan: StudyPlan, rows: list[TrialRow]) -> list[TrialRow]:
    """Grid order (the study's variants as declared), then seed."""
    rank = {variant: i for i, variant in enumerate(plan.spec.grid or ())}
    return sorted(rows, key=lambda r: (rank.get(r.variant, len(rank)), r.variant, r.seed))


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
