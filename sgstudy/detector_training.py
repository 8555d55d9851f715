"""Training the object detector on a dataset's boxes (``sgstudy train-detector``).

Every training image with boxes is used, relations or not. The schedule is fixed per preset
(SGD with momentum, linear warm-up, ×0.1 for the last quarter of the epochs, gradient norm
clipped); the result is ``out_dir/detector.pt`` and the box mAP@0.5 on the validation split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from tqdm import tqdm

from sgstudy.config import DataConfig
from sgstudy.data.dataset import SceneGraphDataset, collate_scene_graphs
from sgstudy.data.referring import ReferringImages
from sgstudy.data.referring_format import is_referring_dataset
from sgstudy.engine import resolve_device, seed_everything
from sgstudy.errors import UserError
from sgstudy.evaluation.box_ap import box_map_at_50
from sgstudy.models.detector import build_detector, save_detector
from sgstudy.structures import SceneGraphTarget

DETECTOR_FILE = "detector.pt"


@dataclass(frozen=True)
class DetectorSchedule:
    batch_size: int
    lr: float
    warmup_iters: int = 100
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_grad_norm: float = 10.0


SCHEDULES = {
    "tiny": DetectorSchedule(batch_size=8, lr=0.02),
    "paper": DetectorSchedule(batch_size=8, lr=0.01, warmup_iters=500),
}


def train_detector(
    data: DataConfig,
    preset: str,
    out_dir: Path,
    epochs: int,
    seed: int,
    weights: str | None,
    device: str,
    progress: bool = True,
) -> dict[str, float]:
    """Trains a detector of ``preset`` on ``data``'s training boxes, saves it to
    ``out_dir/detector.pt`` and returns ``{"box_mAP_50", "train_loss", "epochs", "seconds"}``
    with the box mAP@0.5 on the validation split."""
    if preset not in SCHEDULES:
        raise UserError(f"unknown detector preset {preset!r}; choose one of tiny, paper")
    if epochs < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    started = time.perf_counter()
    seed_everything(seed)
    target_device = resolve_device(device)
    train_set, val_set = (_load_split(data, split, seed) for split in ("train", "val"))
    classes = list(train_set.object_classes)
    model = build_detector(preset, len(classes), weights).to(target_device)
    schedule = SCHEDULES[preset]
    loader = _loader(train_set, data, schedule.batch_size, shuffle=True, seed=seed)
    optimizer, scheduler = _optimizer(model, schedule, epochs * len(loader))
    loss = math.nan
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        loss = train_detector_epoch(
            model, loader, optimizer, scheduler, target_device, schedule, progress
        )
        print(
            f"detector epoch {epoch}/{epochs}: loss {loss:.4f} ({time.perf_counter() - epoch_started:.1f}s)",
            flush=True,
        )
    out_dir = Path(out_dir)
    save_detector(model, out_dir / DETECTOR_FILE, preset, len(classes), classes)
    val_loader = _loader(val_set, data, schedule.batch_size, shuffle=False, seed=seed)
    box_map = evaluate_detector(model, val_loader, len(classes), target_device, progress)
    print(f"detector saved to {out_dir / DETECTOR_FILE}; val box mAP@0.5 {box_map:.4f}", flush=True)
    return {
        "box_mAP_50": box_map,
        "train_loss": loss,
        "epochs": float(epochs),
        "seconds": time.perf_counter() - started,
    }


def train_detector_epoch(
    model: FasterRCNN,
    loader: Iterable[tuple[list[torch.Tensor], list[SceneGraphTarget]]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    schedule: DetectorSchedule,
    progress: bool = False,
) -> float:
    """One pass; returns the mean of torchvision's summed detection losses."""
    model.train()
    total, steps = 0.0, 0
    for images, targets in tqdm(loader, desc="detector", leave=False, disable=not progress):
        images = [image.to(device) for image in images]
        boxes = [{"boxes": t.boxes.to(device), "labels": t.labels.to(device)} for t in targets]
        loss = sum(model(images, boxes).values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"detector loss became {loss.item()} at step {steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, schedule.max_grad_norm)
        optimizer.step()
        scheduler.step()
        total, steps = total + loss.item(), steps + 1
    if steps == 0:
        raise UserError("the training split has no image with boxes to train the detector on")
    return total / steps


@torch.no_grad()
def evaluate_detector(
    model: FasterRCNN,
    loader: Iterable[tuple[list[torch.Tensor], list[SceneGraphTarget]]],
    num_classes: int,
    device: torch.device,
    progress: bool = False,
) -> float:
    """Box mAP@0.5 of ``model`` over ``loader`` (boxes in the images' own pixels)."""
    model.eval()
    predictions, targets = [], []
    for images, batch_targets in tqdm(
        loader, desc="detector val", leave=False, disable=not progress
    ):
        outputs = model([image.to(device) for image in images])
        predictions += [{k: v.cpu() for k, v in output.items()} for output in outputs]
        targets += batch_targets
    return box_map_at_50(predictions, targets, num_classes)


def _load_split(data: DataConfig, split: str, seed: int) -> SceneGraphDataset | ReferringImages:
    if is_referring_dataset(data.root):
        # A referring-relationship dataset: its annotated entities, one item per image.
        return ReferringImages(data.root, split, image_dir=data.image_dir)
    return SceneGraphDataset(
        data.root,
        split,
        image_dir=data.image_dir,
        num_val_images=data.num_val_images,
        filter_empty_relations=False,
        seed=seed,
    )


def _loader(
    dataset: SceneGraphDataset, data: DataConfig, batch_size: int, shuffle: bool, seed: int
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=data.num_workers,
        collate_fn=collate_scene_graphs,
    )


def _optimizer(
    model: FasterRCNN, schedule: DetectorSchedule, total_iters: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD; linear warm-up from lr/3, then ×0.1 for the last quarter of the iterations."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    warmup = min(schedule.warmup_iters, max(total_iters // 4, 1))
    decay_at = int(total_iters * 0.75)

    def factor(iteration: int) -> float:
        ramp = 1 / 3 + (2 / 3) * min(iteration / warmup, 1.0)
        return ramp * (0.1 if iteration >= decay_at else 1.0)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
