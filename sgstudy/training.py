"""One training run, epoch by epoch: what the CLI and the Ray trainables both drive.

``TrainingSession.start`` builds data, statistics, model, optimiser and evaluator
from a ``RunConfig`` (and resumes from a checkpoint); ``run_epoch`` trains one
epoch and evaluates on val; ``save`` writes a checkpoint from which ``start``
continues with the same next step. The data, statistics, evaluator and per-epoch
artifact are those of the model's task (``sgstudy.tasks``; ``PIPELINES`` below):
scene graphs for Motifs and SGTR, referring relationships for DSG.

Under ``torch.distributed`` (Ray Train sets it up for multi-GPU trials) the model
is wrapped in DDP, the training data sharded, and evaluation runs on rank 0.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sgstudy import tasks
from sgstudy.config import RunConfig
from sgstudy.data.dataset import SceneGraphDataset, collate_scene_graphs, loader_workers
from sgstudy.data.image_cache import default_cache_root
from sgstudy.data.referring import (
    ReferringDataset,
    ReferringStatistics,
    compute_referring_statistics,
)
from sgstudy.data.referring_format import is_referring_dataset
from sgstudy.data.statistics import DatasetStatistics, compute_statistics
from sgstudy.engine import (
    autocast_dtype,
    build_optimizer,
    build_scheduler,
    evaluate,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    train_one_epoch,
)
from sgstudy.errors import ConfigError, DatasetError
from sgstudy.evaluation.referring_eval import ReferringEvaluator, per_predicate_iou_artifact
from sgstudy.evaluation.sgg_eval import (
    EvaluationResult,
    SceneGraphEvaluator,
    per_predicate_artifact,
)
from sgstudy.loaded_data import LOADED
from sgstudy.metric_names import PAIR_RANK
from sgstudy.models import build_model
from sgstudy.models.diagnostics import RepresentationProbe

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.json"
MODEL_NAME = "model.json"


@dataclass
class EpochResult:
    epoch: int  # 1-based epoch just finished
    losses: dict[str, float]  # mean of each loss term over the epoch, plus the weighted "loss"
    metrics: dict[str, float]  # validation metrics (sgstudy.metric_names keys); empty on rank > 0
    # The task's per-epoch artifact (per_predicate_recall.json, per_predicate_iou.json); empty
    # on rank > 0.
    per_predicate: dict[str, Any]
    seconds: float


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def load_split(config: RunConfig, split: str) -> Dataset:
    """The split of ``config``'s dataset in the layout its model's task reads; parsed once
    per process and dataset state (``sgstudy.loaded_data``)."""
    return LOADED.get(
        config.data.root,
        ("split", split, *data_key(config)),
        lambda: pipeline_of(config).load_split(config, split),
    )


def load_statistics(config: RunConfig, train_set: Dataset) -> Any:
    """The training statistics of ``config``'s dataset (``train_set`` is its train split);
    counted once per process and dataset state."""
    return LOADED.get(
        config.data.root,
        ("statistics", *data_key(config)),
        lambda: pipeline_of(config).compute_statistics(train_set),
    )


def data_key(config: RunConfig) -> tuple[Any, ...]:
    """What a split is built from: the task's layout, the data config (the loader's worker
    count aside), the seed, and the image cache's folder when the config leaves it open."""
    data = dataclasses.replace(config.data, num_workers=None)
    cache = str(default_cache_root()) if data.image_cache and not data.image_cache_dir else None
    return tasks.task_of(config.model.name).name, data, config.seed, cache


def load_scene_graph_split(config: RunConfig, split: str) -> SceneGraphDataset:
    d = config.data
    if is_referring_dataset(d.root):
        raise DatasetError(
            f"{d.root} is a referring-relationship dataset; model {config.model.name} trains on "
            "scene graphs in the VG150 layout"
        )
    return SceneGraphDataset(
        d.root,
        split,
        image_dir=d.image_dir,
        num_val_images=d.num_val_images,
        filter_non_overlap=d.filter_non_overlap and split == "train",
        seed=config.seed,
        image_cache_dir=(d.image_cache_dir or default_cache_root()) if d.image_cache else None,
    )


def load_referring_split(config: RunConfig, split: str) -> ReferringDataset:
    d = config.data
    if not is_referring_dataset(d.root):
        raise DatasetError(
            f"model {config.model.name} trains on a referring-relationship dataset, and "
            f"{d.root} has no annotations_train.json (derive one from a VG150-format dataset "
            "with sgstudy data synth-rr)"
        )
    if d.num_val_images is not None:
        raise ConfigError(
            "num_val_images does not apply to a referring-relationship dataset: its val split "
            "is the last 10% of the sorted train images"
        )
    return ReferringDataset(d.root, split, image_dir=d.image_dir)


def make_loader(
    dataset: Dataset, config: RunConfig, sampler: DistributedSampler | None = None
) -> DataLoader:
    """Workers: ``config.data.num_workers``, else the trial's CPUs minus one; on CUDA the
    batches come in pinned memory, so the engine's non-blocking copies overlap compute.

    The loader draws its workers' seeds from its own generator, never from the global RNG
    the model samples from, so the number of workers (and whether they persist across
    epochs) cannot change a run's random stream; the dataset itself seeds by index.
    """
    workers = loader_workers(config.data.num_workers)
    return DataLoader(
        dataset,
        generator=torch.Generator().manual_seed(config.seed),
        batch_size=config.optim.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_scene_graphs,
        persistent_workers=workers > 0,
        pin_memory=resolve_device(config.device).type == "cuda",
    )


def make_evaluator(config: RunConfig, statistics: Any) -> Any:
    """The evaluator of ``config``'s task (reset / process / evaluate)."""
    return pipeline_of(config).make_evaluator(config, statistics)


def make_scene_graph_evaluator(
    config: RunConfig, statistics: DatasetStatistics
) -> SceneGraphEvaluator:
    return SceneGraphEvaluator(
        config.model.protocol,
        num_predicates=len(statistics.predicate_classes) - 1,
        train_triplets=statistics.train_triplets,
        predicate_groups=statistics.predicate_groups,
    )


def artifact_of(result: EvaluationResult, statistics: DatasetStatistics) -> dict[str, Any]:
    return per_predicate_artifact(
        result,
        statistics.predicate_classes,
        statistics.predicate_counts,
        statistics.predicate_groups,
    )


def make_referring_evaluator(
    config: RunConfig, statistics: ReferringStatistics
) -> ReferringEvaluator:
    return ReferringEvaluator(num_predicates=len(statistics.predicate_classes) - 1)


def referring_artifact(result: Any, statistics: ReferringStatistics) -> dict[str, Any]:
    return per_predicate_iou_artifact(result, statistics.predicate_classes, statistics.query_counts)


@dataclass(frozen=True)
class TaskPipeline:
    """The torch side of a task (``sgstudy.tasks.Task``): how its splits load, what its
    training statistics are, which evaluator scores it, and its per-epoch artifact."""

    load_split: Callable[[RunConfig, str], Dataset]
    compute_statistics: Callable[[Dataset], Any]
    make_evaluator: Callable[[RunConfig, Any], Any]
    artifact_of: Callable[[Any, Any], dict[str, Any]]


PIPELINES: dict[str, TaskPipeline] = {
    tasks.SCENE_GRAPH: TaskPipeline(
        load_scene_graph_split, compute_statistics, make_scene_graph_evaluator, artifact_of
    ),
    tasks.REFERRING: TaskPipeline(
        load_referring_split,
        compute_referring_statistics,
        make_referring_evaluator,
        referring_artifact,
    ),
}


def pipeline_of(config: RunConfig) -> TaskPipeline:
    return PIPELINES[tasks.task_of(config.model.name).name]


class TrainingSession:
    """The state of one run between epochs. Build it with ``TrainingSession.start``."""

    def __init__(
        self,
        config: RunConfig,
        statistics: DatasetStatistics | ReferringStatistics,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        train_sampler: DistributedSampler,
        train_loader: DataLoader,
        val_loader: DataLoader,
        device: torch.device,
        progress: bool,
    ) -> None:
        self.config = config
        self.statistics = statistics
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.train_sampler = train_sampler
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.device = device
        self.progress = progress
        self.task = tasks.task_of(config.model.name)
        self.pipeline = pipeline_of(config)
        self.epoch = 0  # epochs completed

    @staticmethod
    def start(
        config: RunConfig,
        checkpoint_file: Path | None = None,
        progress: bool = False,
        device: torch.device | None = None,
    ) -> TrainingSession:
        seed_everything(config.seed)
        device = device or resolve_device(config.device)
        train_set = load_split(config, "train")
        statistics = load_statistics(config, train_set)
        model = build_model(config.model, statistics).to(device)
        distributed = dist.is_initialized()
        # The shuffling order depends on (seed, epoch) only, so a resumed run sees the same batches.
        sampler = DistributedSampler(
            train_set,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=True,
            seed=config.seed,
        )
        train_loader = make_loader(train_set, config, sampler)
        val_loader = make_loader(load_split(config, "val"), config)
        optimizer = build_optimizer(model, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, len(train_loader))
        # bf16 autocast needs no loss scaling; only fp16 (GPUs without bf16) does.
        scaler = torch.amp.GradScaler(
            "cuda", enabled=autocast_dtype(device, config.amp) == torch.float16
        )
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                # PredCls never runs the object decoder, so some parameters get no gradient.
                find_unused_parameters=True,
            )
        session = TrainingSession(
            config, statistics, model, optimizer, scheduler, scaler,
            sampler, train_loader, val_loader, device, progress,
        )  # fmt: skip
        if checkpoint_file is not None:
            session.restore(checkpoint_file)
        return session

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.optim.epochs

    def run_epoch(self) -> EpochResult:
        started = time.perf_counter()
        next_epoch = self.epoch + 1
        self.train_sampler.set_epoch(next_epoch)
        losses = train_one_epoch(
            self.model,
            self.train_loader,
            self.optimizer,
            self.scheduler,
            self.device,
            self.config.optim.max_grad_norm,
            self.scaler,
            progress=self.progress,
            description=f"epoch {next_epoch}/{self.config.optim.epochs}",
            amp=self.config.amp,
        )
        self.epoch = next_epoch
        metrics: dict[str, float] = {}
        per_predicate: dict[str, Any] = {}
        if is_main_process():
            result = self.evaluate(self.val_loader, "val")
            metrics, per_predicate = (
                result.metrics,
                self.pipeline.artifact_of(result, self.statistics),
            )
        return EpochResult(
            self.epoch, losses, metrics, per_predicate, time.perf_counter() - started
        )

    def evaluate(self, loader: DataLoader, name: str) -> Any:
        """The task's evaluation result on ``loader``, plus ``PAIR_RANK`` for models that expose
        their pair representation (``pair_representation_layer``)."""
        evaluator = self.pipeline.make_evaluator(self.config, self.statistics)
        model = self.model.module if dist.is_initialized() else self.model
        layer = getattr(model, "pair_representation_layer", None)
        if layer is None:
            return evaluate(model, loader, evaluator, self.device, self.progress, description=name)
        with RepresentationProbe(layer()) as probe:
            result = evaluate(model, loader, evaluator, self.device, self.progress, name)
        result.metrics[PAIR_RANK] = probe.effective_rank()
        return result

    def save(self, checkpoint_file: Path, extra: dict[str, Any] | None = None) -> None:
        save_checkpoint(
            checkpoint_file,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.epoch,
            {"config": self.config.to_params(), **(extra or {})},
        )

    def restore(self, checkpoint_file: Path) -> None:
        state = load_checkpoint(checkpoint_file, map_location=self.device)
        target = self.model.module if dist.is_initialized() else self.model
        target.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        set_rng_state(state["rng"])


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_run_config(run_dir: Path) -> RunConfig:
    from sgstudy.errors import UserError

    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory: {CONFIG_NAME} is missing")
    return RunConfig.from_flat(json.loads(path.read_text()))
