"""One training run, epoch by epoch: what the CLI and the Ray trainables both drive.

``TrainingSession.start`` builds data, statistics, model, optimiser and evaluator
from a ``RunConfig`` (and resumes from a checkpoint); ``run_epoch`` trains one
epoch and evaluates on val; ``save`` writes a checkpoint from which ``start``
continues with the same next step. Under ``torch.distributed`` (Ray Train sets it
up for multi-GPU trials) the model is wrapped in DDP, the training data sharded,
and evaluation runs on rank 0.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from sgstudy.config import RunConfig
from sgstudy.data.dataset import SceneGraphDataset, collate_scene_graphs, loader_workers
from sgstudy.data.image_cache import default_cache_root
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
from sgstudy.evaluation.sgg_eval import (
    EvaluationResult,
    SceneGraphEvaluator,
    per_predicate_artifact,
)
from sgstudy.models import build_model

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.json"
MODEL_NAME = "model.json"


@dataclass
class EpochResult:
    epoch: int  # 1-based epoch just finished
    losses: dict[str, float]  # mean of each loss term over the epoch, plus the weighted "loss"
    metrics: dict[str, float]  # validation metrics (sgstudy.metric_names keys); empty on rank > 0
    per_predicate: dict[str, Any]  # per_predicate_recall.json payload; empty on rank > 0
    seconds: float


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def load_split(config: RunConfig, split: str) -> SceneGraphDataset:
    d = config.data
    return SceneGraphDataset(
        d.root,
        split,
        image_dir=d.image_dir,
        num_val_images=d.num_val_images,
        filter_non_overlap=d.filter_non_overlap and split == "train",
        seed=config.seed,
        image_cache_dir=(d.image_cache_dir or default_cache_root()) if d.image_cache else None,
    )


def make_loader(
    dataset: SceneGraphDataset, config: RunConfig, sampler: DistributedSampler | None = None
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


def make_evaluator(config: RunConfig, statistics: DatasetStatistics) -> SceneGraphEvaluator:
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


class TrainingSession:
    """The state of one run between epochs. Build it with ``TrainingSession.start``."""

    def __init__(
        self,
        config: RunConfig,
        statistics: DatasetStatistics,
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
        statistics = compute_statistics(train_set)
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
            metrics, per_predicate = result.metrics, artifact_of(result, self.statistics)
        return EpochResult(
            self.epoch, losses, metrics, per_predicate, time.perf_counter() - started
        )

    def evaluate(self, loader: DataLoader, name: str) -> EvaluationResult:
        evaluator = make_evaluator(self.config, self.statistics)
        model = self.model.module if dist.is_initialized() else self.model
        return evaluate(model, loader, evaluator, self.device, self.progress, description=name)

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
