"""Training throughput of the relation models, with and without relation alignment.

For each model and protocol (Motifs in each protocol, SGTR in SGDet), times ``--steps`` optimiser steps of the engine's training loop
on the synthetic dataset and prints images/s; the alignment's cost is the ratio of
its step time to the plain model's, measured in the same run. On CUDA it also
prints the peak GPU memory.

    python benchmarks/bench_train.py --data data/synthetic --preset tiny --steps 20
    python benchmarks/bench_train.py --models sgtr --steps 10   # SGTR and Align-SGTR only
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sgstudy.config import RunConfig
from sgstudy.engine import build_optimizer, build_scheduler, resolve_device, train_one_epoch
from sgstudy.training import TrainingSession

# "cpu" counts this process's CPU time only: on a shared machine, wall-clock step times swing
# with whatever else runs, CPU time much less.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def detector_for(data: str, preset: str, workdir: Path, device: str) -> str:
    """An (untrained) detector checkpoint of the preset: SGDet's speed does not depend on its skill."""
    from sgstudy.data.dataset import SceneGraphDataset
    from sgstudy.models.detector import build_detector, save_detector

    num_classes = len(SceneGraphDataset(data, "train").object_classes)
    path = workdir / f"detector_{preset}.pt"
    save_detector(build_detector(preset, num_classes), path, preset, num_classes)
    return str(path)


def detr_for(data: str, preset: str, workdir: Path) -> str:
    """An (untrained) DETR checkpoint of the preset, SGTR's entity detector."""
    from sgstudy.data.dataset import SceneGraphDataset
    from sgstudy.models.detr import build_detr, save_detr

    classes = SceneGraphDataset(data, "train").object_classes
    path = workdir / f"detr_{preset}.pt"
    save_detr(build_detr(preset, len(classes) - 1), path, preset, classes)
    return str(path)


def add_timing_flags(parser: argparse.ArgumentParser) -> None:
    """The device, thread and clock flags every step-time benchmark takes."""
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--clock", default="wall", choices=tuple(CLOCKS),
        help="wall time, or this process's CPU time (a shared CPU does not inflate it)",
    )  # fmt: skip


def timing_device(args: argparse.Namespace) -> torch.device:
    """Applies ``--threads``, resolves ``--device`` and prints the timing set-up."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(
        f"device: {device}, torch threads: {torch.get_num_threads()}, preset: {args.preset}, "
        f"clock: {args.clock}"
    )
    return device


def time_steps(
    config: RunConfig, steps: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """Seconds per step (after ``warmup`` steps) and peak CUDA memory in GiB. ``clock``:
    wall time by default; ``time.process_time`` counts this process's CPU seconds only, which
    other jobs on a shared CPU do not inflate."""
    session = TrainingSession.start(config)
    batches = list(itertools.islice(iter(session.train_loader), warmup + steps))
    optimizer = build_optimizer(session.model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, len(batches))
    device = session.device

    def run(chunk: list) -> None:
        train_one_epoch(
            session.model, chunk, optimizer, scheduler, device,
            config.optim.max_grad_norm, session.scaler,
        )  # fmt: skip

    run(batches[:warmup])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = clock()
    run(batches[warmup:])
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = (clock() - started) / max(1, len(batches) - warmup)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    parser.add_argument("--models", default="motifs,sgtr")
    parser.add_argument("--protocols", default="predcls,sgcls,sgdet", help="Motifs' protocols")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    add_timing_flags(parser)
    args = parser.parse_args()
    device = timing_device(args)
    rows = []
    runs = [("motifs", p) for p in args.protocols.split(",") if "motifs" in args.models]
    runs += [("sgtr", "sgdet")] if "sgtr" in args.models else []
    with tempfile.TemporaryDirectory() as tmp:
        for model, protocol in runs:
            detector = None
            if model == "sgtr":
                detector = detr_for(args.data, args.preset, Path(tmp))
            elif protocol == "sgdet":
                detector = detector_for(args.data, args.preset, Path(tmp), args.device)
            times = {}
            name = f"{model} {protocol}"
            for align in (False, True):
                config = RunConfig.from_flat(
                    {
                        "model": model, "protocol": protocol, "preset": args.preset, "align": align,
                        "data_root": args.data, "batch_size": args.batch_size,
                        "detector_checkpoint": detector, "device": str(device),
                        "warmup_iters": 0,
                    }
                )  # fmt: skip
                seconds, peak = time_steps(config, args.steps, args.warmup, CLOCKS[args.clock])
                times[align] = seconds
                rows.append((name, align, args.batch_size / seconds, seconds, peak))
            rows.append((name, "ratio", None, times[True] / times[False], None))
    print(f"\n{'model':14s} {'align':6s} {'images/s':>9s} {'s/step':>8s} {'peak GiB':>9s}")
    for name, align, ips, seconds, peak in rows:
        if align == "ratio":
            print(f"{name:14s} {'':6s} {'':9s} align/plain step-time ratio: {seconds:.2f}x")
            continue
        peak_text = "-" if peak != peak else f"{peak:.2f}"
        print(f"{name:14s} {str(align):6s} {ips:9.1f} {seconds:8.3f} {peak_text:>9s}")


if __name__ == "__main__":
    main()
