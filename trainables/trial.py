"""One trial of a study: the Ray Tune function trainable ``train_scene_graph``.

The trial turns Tune's flat config into a ``RunConfig`` (its first act, so a bad key fails
the trial with a ``ConfigError`` naming it), resumes from Tune's checkpoint, and then,
epoch by epoch, trains through ``sgstudy.training.TrainingSession``, reports the stored
metric names, the loss terms and the epoch to Tune with a checkpoint, and logs the same to
its own MLflow child run. It knows no model: every family in ``sgstudy.models.MODEL_BUILDERS``
runs through the same session.

With ``workers_per_trial > 1`` the trial launches a ``ray.train.torch.TorchTrainer`` whose
workers run the same epoch loop under DDP (NCCL on GPUs, gloo on CPUs); rank 0 reports and
logs. The Train run is named after the trial, so a retried trial resumes its Train run.

A trial's checkpoint holds the session checkpoint and ``trial.json``: the MLflow run id and
the per-epoch results so far, with which a restarted trial continues its own MLflow run and
fills in any epoch that reached Tune but not MLflow.

Tune reuses a finished trial's worker process for the next trial (``reuse_actors`` in
``trainables.study``); what a trial must not inherit from the worker's previous one is reset
as ``trainables.worker`` describes. Each child run records its fixed cost, measured here
(``TRIAL_SETUP_S``, ``TRIAL_TEARDOWN_S``), and the worker process and how many trials it had
started before (``WORKER_PID_TAG``, ``WORKER_TRIAL_TAG``).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgstudy import __version__
from sgstudy.config import RunConfig
from sgstudy.metric_names import TOTAL_LOSS, TRIAL_SETUP_S, TRIAL_TEARDOWN_S
from sgstudy.tasks import task_of
from sgstudy.tracking_layout import (
    DATASET_FINGERPRINT_PARAM,
    GIT_COMMIT_PARAM,
    PER_PREDICATE_ARTIFACT,
    RESOLVED_CONFIG_ARTIFACT,
    STUDY_PARAM,
    VERSION_PARAM,
)
from trainables.worker import TrialEntry, prepare_worker, release_memory, start_state

# Tune config keys that belong to the trial, not to the run config.
VARIANT_KEY = "variant"
# Fault injection for testing retries: the trial raises right after reporting this epoch's
# checkpoint, unless it was itself restored from a checkpoint, so it fails exactly once.
FAIL_ONCE_KEY = "fail_once_at_epoch"
# Diagnostics: the trial tags its run with digests of the state its first step starts from
# (``trainables.worker.START_STATE_TAGS``), to compare a trial in a reused worker with one in
# a fresh process.
START_STATE_KEY = "log_start_state"
TRIAL_KEYS = (VARIANT_KEY, FAIL_ONCE_KEY, START_STATE_KEY)

SESSION_FILE = "checkpoint.pt"
STATE_FILE = "trial.json"
RUN_ID_KEY = "mlflow_run_id"
EPOCH_KEY = "epoch"


class InjectedFailure(RuntimeError):
    """Raised by the ``fail_once_at_epoch`` knob."""


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a launch shares, handed over with ``tune.with_parameters``.

    study_run:         where the trial logs (``sgstudy.tracking.StudyRun``)
    git_commit:        the driver's checkout, logged as a param
    workers_per_trial: > 1 trains data-parallel through a TorchTrainer
    cpus_per_worker, gpus_per_worker: resources of one data-parallel worker
    train_storage:     where data-parallel Train runs keep their checkpoints
    log_checkpoint:    also log the final session checkpoint as an MLflow artifact
    """

    study_run: Any
    git_commit: str
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    train_storage: str = ""
    log_checkpoint: bool = False


@dataclass
class TrialState:
    """What a trial carries from one attempt to the next, besides the session checkpoint."""

    mlflow_run_id: str | None = None
    history: list[dict[str, float]] | None = None

    @staticmethod
    def load(directory: Path | None) -> TrialState:
        path = directory / STATE_FILE if directory else None
        if path is None or not path.is_file():
            return TrialState(history=[])
        payload = json.loads(path.read_text())
        return TrialState(payload.get(RUN_ID_KEY), payload.get("history", []))

    def save(self, directory: Path) -> None:
        payload = {RUN_ID_KEY: self.mlflow_run_id, "history": self.history}
        (directory / STATE_FILE).write_text(json.dumps(payload, indent=1))


def split_config(config: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """``(run config, trial keys)`` from a Tune config; unknown keys raise ``ConfigError``."""
    flat = {key: value for key, value in config.items() if key not in TRIAL_KEYS}
    knobs = {key: config[key] for key in TRIAL_KEYS if key in config}
    return RunConfig.from_flat(flat), knobs


def variant_of(config: RunConfig, knobs: dict[str, Any]) -> str:
    return str(knobs.get(VARIANT_KEY) or ("align" if config.model.align.enabled else "baseline"))


def run_name(config: RunConfig, knobs: dict[str, Any]) -> str:
    """``<variant> seed <s>``, as the MLflow UI lists the trial."""
    from sgstudy.tracking_ui import trial_run_name

    return trial_run_name(variant_of(config, knobs), config.seed)


def train_scene_graph(config: dict[str, Any], settings: TrialSettings) -> None:
    """Ray Tune function trainable: one (variant, seed) of a study, epoch by epoch."""
    entry = TrialEntry.now()
    run_config, knobs = split_config(config)
    from ray import tune

    prepare_worker()
    trial_id = tune.get_context().get_trial_id()
    if settings.workers_per_trial > 1:
        run_data_parallel(config, settings, trial_id)
        return

    def report(values: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(values, checkpoint=checkpoint)

    args = (run_config, knobs, settings, trial_id)
    restored = tune.get_checkpoint()
    if restored is None:
        run_epochs(*args, None, report, lead=True, entry=entry)
        return
    with restored.as_directory() as directory:
        run_epochs(*args, Path(directory), report, lead=True, entry=entry)


def run_epochs(
    run_config: RunConfig,
    knobs: dict[str, Any],
    settings: TrialSettings,
    trial_id: str,
    restored: Path | None,
    report: Callable[[dict[str, Any], Path | None], None],
    lead: bool,
    device: Any = None,
    entry: TrialEntry | None = None,
) -> None:
    """The epoch loop shared by plain and data-parallel trials.

    ``restored`` is the checkpoint directory the attempt starts from (``None``: fresh).
    ``report(values, checkpoint_dir)`` hands an epoch to Ray; every rank calls it, but only
    the ``lead`` (rank 0) writes checkpoints and logs to MLflow. ``device`` overrides the
    run config's choice (a data-parallel worker's own GPU). ``entry``: when the trial began
    (default: now), from which its setup time is measured.
    """
    from sgstudy.training import TrainingSession

    entry = entry or TrialEntry.now()
    state = TrialState.load(restored)
    session_file = restored / SESSION_FILE if restored else None
    session = TrainingSession.start(
        run_config,
        session_file if session_file and session_file.is_file() else None,
        device=device,
    )
    start_tags = start_state(session) if knobs.get(START_STATE_KEY) else {}
    tracker = open_tracker(settings, trial_id, run_config, knobs, state, session) if lead else None
    session_device = session.device
    try:
        if tracker is not None:
            tracker.log_start(entry, start_tags)
        if session.done and state.history:
            # Finished before the driver recorded it: hand Tune the last result, train nothing.
            report(state.history[-1], None)
        stopped: SystemExit | None = None
        while not session.done:
            result = session.run_epoch()
            values = {**result.metrics, **result.losses, EPOCH_KEY: result.epoch}
            with tempfile.TemporaryDirectory(prefix="sgstudy-ckpt-") as out:
                if lead:
                    state.history.append(values)
                    session.save(Path(out) / SESSION_FILE)
                    state.save(Path(out))
                try:
                    report(values, Path(out) if lead else None)
                except SystemExit as exc:
                    # Tune stopped the trial on this result (its scheduler's decision, e.g.
                    # ASHA at max_t): Tune holds the epoch, so MLflow gets it too, and a trial
                    # that trained every epoch ends FINISHED rather than KILLED. The thread
                    # still ends by this exit: returning would make Tune's wrapper report
                    # once more and wait for a step that never comes.
                    if tracker is not None:
                        tracker.log_epoch(values, result.per_predicate)
                    if not session.done:
                        raise
                    stopped = exc
                    break
            if tracker is not None:
                tracker.log_epoch(values, result.per_predicate)
            if knobs.get(FAIL_ONCE_KEY) == result.epoch and restored is None:
                raise InjectedFailure(f"{FAIL_ONCE_KEY}={result.epoch}: failing once, as asked")
        trained = time.perf_counter()
        if tracker is not None and settings.log_checkpoint:
            tracker.log_checkpoint(session)
    except BaseException as exc:
        if tracker is not None:
            tracker.stop(exc)
        raise
    finally:
        del session  # the model, optimiser and data go with it (the loaders' workers too)
        release_memory(session_device, first_trial=entry.index == 0)
    if tracker is not None:
        tracker.finish(time.perf_counter() - trained)
    if stopped is not None:
        raise stopped


class TrialTracker:
    """The trial's MLflow child run, seen from inside the trial (rank 0).

    ``artifact`` is the file name of the task's per-epoch artifact (``sgstudy.tasks``).
    """

    def __init__(
        self, client: Any, run_id: str, settings: TrialSettings,
        artifact: str = PER_PREDICATE_ARTIFACT,
    ) -> None:  # fmt: skip
        from sgstudy import tracking

        self.client = client
        self.run_id = run_id
        self.settings = settings
        self.artifact = artifact
        # The epochs the run holds already: each is logged once, whatever is trained again.
        self.logged = tracking.logged_steps(client, run_id, TOTAL_LOSS)

    def log_epoch(self, values: dict[str, float], per_predicate: dict[str, Any]) -> None:
        from sgstudy import tracking

        epoch = int(values[EPOCH_KEY])
        tracking.log_epoch(self.client, self.run_id, epoch, values, self.logged)
        if per_predicate:
            tracking.log_json(self.client, self.run_id, self.artifact, per_predicate)

    def backfill(self, history: list[dict[str, float]]) -> None:
        """Logs the epochs that reached the checkpoint but not MLflow (a crash in between)."""
        from sgstudy import tracking

        for values in history:
            epoch = int(values[EPOCH_KEY])
            tracking.log_epoch(self.client, self.run_id, epoch, values, self.logged)

    def log_start(self, entry: TrialEntry, start_tags: dict[str, str]) -> None:
        """The worker process, the trial's entry time and its setup time (entry to now, just
        before the first epoch), with the ``START_STATE_TAGS`` when asked for. A retried
        trial's attempts each add theirs (the tags and the metric's latest value: the last)."""
        from mlflow.entities import RunTag

        tags = [RunTag(key, value) for key, value in {**entry.tags(), **start_tags}.items()]
        self.log_cost(TRIAL_SETUP_S, time.perf_counter() - entry.clock, tags)

    def log_cost(self, key: str, seconds: float, tags: list[Any] | None = None) -> None:
        from mlflow.entities import Metric

        metric = Metric(key, seconds, int(time.time() * 1000), 0)
        self.client.log_batch(self.run_id, metrics=[metric], tags=tags or [])

    def log_checkpoint(self, session: Any) -> None:
        from sgstudy import tracking

        with tempfile.TemporaryDirectory() as out:
            session.save(Path(out) / SESSION_FILE)
            tracking.log_file(self.client, self.run_id, Path(out) / SESSION_FILE)

    def finish(self, teardown_s: float) -> None:
        """Records the teardown (last epoch's end to here) and ends the run FINISHED."""
        from sgstudy import tracking

        self.log_cost(TRIAL_TEARDOWN_S, teardown_s)
        tracking.end_run(self.client, self.run_id, tracking.FINISHED)

    def stop(self, exc: BaseException) -> None:
        """Ends the run KILLED (an interrupt) or FAILED, with the reason and the traceback."""
        import traceback

        from sgstudy import tracking

        try:
            if tracking.status_for(exc) == tracking.FAILED:
                reason = f"{type(exc).__name__}: {exc}"
                text = "".join(traceback.format_exception(exc))
                tracking.record_failure(self.client, self.run_id, reason, text)
            else:
                tracking.end_run(self.client, self.run_id, tracking.status_for(exc))
        except Exception:  # never hide the trial's own error behind a logging one
            pass


def open_tracker(
    settings: TrialSettings,
    trial_id: str,
    run_config: RunConfig,
    knobs: dict[str, Any],
    state: TrialState,
    session: Any,
) -> TrialTracker:
    """Starts or resumes the trial's child run and logs what it does not hold yet."""
    import ray
    import torch.distributed as dist

    from sgstudy import tracking, tracking_ui
    from sgstudy.engine import unwrap

    study_run = settings.study_run
    client = tracking.make_client(study_run.tracking_uri)
    tags = tracking.node_tags(ray.get_runtime_context().get_node_id(), ray.get_gpu_ids())
    # The process group DDP really trains in, not the requested worker count.
    tags[tracking.WORLD_SIZE_TAG] = str(dist.get_world_size() if dist.is_initialized() else 1)
    if knobs.get(VARIANT_KEY):
        tags[tracking.VARIANT_TAG] = str(knobs[VARIANT_KEY])
    if state.history:
        tags[tracking.RESUMED_FROM_TAG] = str(session.epoch)
    variant = variant_of(run_config, knobs)
    tags[tracking_ui.NOTE_TAG] = tracking_ui.trial_description(
        run_config.to_params(), variant, study_run.study
    )
    run_id, _ = tracking.start_trial_run(
        client, study_run, trial_id, run_name(run_config, knobs), state.mlflow_run_id, tags
    )
    state.mlflow_run_id = run_id
    params = {
        **run_config.to_params(),
        GIT_COMMIT_PARAM: settings.git_commit,
        DATASET_FINGERPRINT_PARAM: session.statistics.fingerprint,
        VERSION_PARAM: __version__,
        STUDY_PARAM: study_run.study,
        # The variant and seed as params too, so MLflow's group-by and charts can use them.
        tracking_ui.VARIANT_PARAM: variant,
        # What the model is made of and what its alignment branch masks and aligns.
        **unwrap(session.model).describe(),
    }
    tracking.log_params(client, run_id, params)
    tracker = TrialTracker(client, run_id, settings, task_of(run_config.model.name).artifact)
    if not state.history:
        tracking.log_json(client, run_id, RESOLVED_CONFIG_ARTIFACT, {**params, **knobs})
    tracker.backfill(state.history)
    return tracker


# ---------------------------------------------------------------- data parallel
def run_data_parallel(config: dict[str, Any], settings: TrialSettings, trial_id: str) -> None:
    """Trains the trial on ``workers_per_trial`` workers of a TorchTrainer; blocks until done."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = settings.gpus_per_worker > 0
    resources = {"CPU": settings.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        data_parallel_worker,
        train_loop_config={"config": config, "settings": settings, "trial_id": trial_id},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=settings.workers_per_trial,
            use_gpu=use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            # Named after the trial: a retried trial finds this run and resumes it.
            name=f"trial-{trial_id}",
            storage_path=settings.train_storage,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def data_parallel_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the epoch loop under DDP, rank 0 reporting and logging."""
    import ray.train
    import ray.train.torch

    run_config, knobs = split_config(loop_config["config"])
    lead = ray.train.get_context().get_world_rank() == 0

    def report(values: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # Every rank reports (Train waits for all of them); Tune sees rank 0's values.
        ray.train.report(values if lead else {}, checkpoint=checkpoint)

    # Ray Train pins each worker to its own GPU; "auto" would pick cuda:0 on every worker.
    entry = TrialEntry.now()
    prepare_worker()
    device = ray.train.torch.get_device() if loop_config["settings"].gpus_per_worker else None
    restored = ray.train.get_checkpoint()
    args = (run_config, knobs, loop_config["settings"], loop_config["trial_id"])
    if restored is None:
        run_epochs(*args, None, report, lead=lead, device=device, entry=entry)
        return
    with restored.as_directory() as directory:
        run_epochs(*args, Path(directory), report, lead=lead, device=device, entry=entry)
