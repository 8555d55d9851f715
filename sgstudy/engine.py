"""The training and evaluation loop, as plain functions.

``train_one_epoch`` and ``evaluate`` know nothing of Ray, MLflow or the CLI; the
single-run CLI and the Ray trainables both call them through
``sgstudy.training.TrainingSession``. Models follow one contract
(``sgstudy.models``): in train mode ``model(images, targets)`` returns a dict of
unweighted loss terms and ``model.loss_weights`` says how they sum; in eval mode it
returns one ``SceneGraphPrediction`` per image.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sgstudy.config import OptimConfig
from sgstudy.errors import UserError
from sgstudy.metric_names import ALIGN_GRAD_RATIO, TOTAL_LOSS
from sgstudy.models.diagnostics import gradient_norm_ratio
from sgstudy.structures import SceneGraphTarget

Batch = tuple[list[torch.Tensor], list[SceneGraphTarget]]
# train_one_epoch waits for the device to check the loss once every so many steps.
FINITE_CHECK_STEPS = 50

# Training steps per epoch on which the alignment/supervised gradient balance is measured: two
# extra backward passes each, so a few keep the cost near zero.
GRADIENT_PROBES_PER_EPOCH = 3


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was requested but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    # The frozen detector has requires_grad=False; only the relation head is optimised.
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(
        params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/3 over ``warmup_iters`` steps, then ×0.1 after each of ``lr_steps``.

    Stepped once per iteration, so the decay points are converted from epochs to iterations.
    """
    decay_iters = [epoch * iters_per_epoch for epoch in optim.lr_steps]

    def factor(iteration: int) -> float:
        warmup = 1.0
        if iteration < optim.warmup_iters:
            warmup = 1 / 3 + (2 / 3) * iteration / optim.warmup_iters
        return warmup * 0.1 ** sum(iteration >= d for d in decay_iters)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return sum(weights.get(name, 1.0) * value for name, value in losses.items())


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """Mixed precision on CUDA: bf16 where the GPU has it (no loss scaling needed), else fp16
    (with a GradScaler); None (full precision) on other devices or with ``amp`` off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    max_grad_norm: float,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = False,
    description: str = "train",
    amp: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every loss term and of the weighted total,
    and, for a model with ``shared_encoder_parameters`` and a ``loss_align`` term, the mean
    ``ALIGN_GRAD_RATIO`` over ``GRADIENT_PROBES_PER_EPOCH`` evenly spaced steps.

    Loss sums stay on the device, so a step never waits for the GPU: finiteness is checked
    every FINITE_CHECK_STEPS steps and at the end, and a FloatingPointError names the range
    of steps in which the loss stopped being finite. ``amp``: autocast (``autocast_dtype``);
    fp16 also scales the loss when ``scaler`` is enabled.
    """
    model.train()
    weights = unwrap(model).loss_weights
    encoder = getattr(unwrap(model), "shared_encoder_parameters", None)
    probe_every = max(1, len(loader) // GRADIENT_PROBES_PER_EPOCH) if encoder else 0
    ratios: list[float] = []
    dtype = autocast_dtype(device, amp)
    scale = scaler is not None and scaler.is_enabled()
    sums: dict[str, torch.Tensor] = {}
    steps = checked = 0
    bar = tqdm(loader, desc=description, leave=False, disable=not progress, dynamic_ncols=True)
    for images, targets in bar:
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [target.to(device) for target in targets]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model(images, targets)
            total = weighted_total(losses, weights)
        if probe_every and steps % probe_every == 0 and len(ratios) < GRADIENT_PROBES_PER_EPOCH:
            ratio = gradient_norm_ratio(losses, weights, "loss_align", encoder())
            if ratio is not None:
                ratios.append(ratio)
        optimizer.zero_grad(set_to_none=True)
        if scale:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if scale:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        for name, value in {**losses, TOTAL_LOSS: total}.items():
            sums[name] = sums.get(name, 0.0) + value.detach().double()
        steps += 1
        if steps - checked >= FINITE_CHECK_STEPS:
            _check_finite(sums, checked, steps)
            checked = steps
            bar.set_postfix(loss=f"{sums[TOTAL_LOSS].item() / steps:.3f}")
    if steps == 0:
        raise UserError("the training split is empty: no image with relations to train on")
    _check_finite(sums, checked, steps)
    means = {name: value.item() / steps for name, value in sums.items()}
    if ratios:
        means[ALIGN_GRAD_RATIO] = sum(ratios) / len(ratios)
    return means


def _check_finite(sums: dict[str, torch.Tensor], first: int, end: int) -> None:
    """One host sync: the running sums stay finite exactly while every step's losses do."""
    total = sums[TOTAL_LOSS]
    if not bool(torch.isfinite(total)):
        terms = {name: value.item() for name, value in sums.items()}
        raise FloatingPointError(
            f"loss became {total.item()} in steps {first}..{end - 1} of the epoch "
            f"(sums so far: {terms})"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    evaluator: Any,
    device: torch.device,
    progress: bool = False,
    description: str = "eval",
) -> Any:
    """Runs ``model`` over ``loader`` and feeds the evaluator; returns ``evaluator.evaluate()``.

    ``evaluator`` follows the reset / process / evaluate interface of
    ``sgstudy.evaluation.sgg_eval.SceneGraphEvaluator``.
    """
    model.eval()
    evaluator.reset()
    for images, targets in tqdm(loader, desc=description, leave=False, disable=not progress):
        images = [image.to(device, non_blocking=True) for image in images]
        predictions = model(images, [target.to(device) for target in targets])
        evaluator.process(targets, [prediction.to("cpu") for prediction in predictions])
    return evaluator.evaluate()


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain numbers, loadable with ``weights_only=True``."""
    version, python_keys, gauss = random.getstate()
    kind, numpy_keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "keys": torch.tensor(python_keys), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["keys"].tolist()), python["gauss"]))
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Everything needed to continue exactly where training stopped. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "rng": rng_state(),
        "extra": extra or {},
    }
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by ``save_checkpoint``; a missing or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        # Tensors and plain containers only: a checkpoint from shared storage cannot run code.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"checkpoint {path} holds objects other than tensors and plain values; "
            "refusing to load it (it could run code)"
        ) from exc
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise UserError(f"checkpoint {path} could not be read: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's messages run to paragraphs)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
